"""`rmt extend`: a new run from a trained checkpoint, to reach longer inputs.

The checkpoint fixes the architecture, the tokenizer and the memory settings; the recipe brings the task,
optimizer and the curriculum (absolute segment counts). A recipe value that contradicts the checkpoint is an
error naming the field, never silently replaced.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ..storage.checkpoint import read_info
from ..errors import UsageError
from ..storage.recipe import (Recipe, apply_overrides, load_yaml, read_recipe_data, read_recipe_text,
                              validate_recipe)

LOCKED = [("model",), ("tokenizer",), ("memory", "num_mem_tokens"), ("memory", "segment_size"), ("memory", "update"),
          ("memory", "gate_floor"), ("memory", "associative_key_size")]


def _get(data: dict, path: tuple):
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None, False
        data = data[part]
    return data, True


def _set(data: dict, path: tuple, value) -> None:
    for part in path[:-1]:
        if not isinstance(data.get(part), dict):
            data[part] = {}  # an empty section (`memory:`) reads as None
        data = data[part]
    data[path[-1]] = value


def extend_recipe(checkpoint: str | Path, recipe_path: str | Path, overrides: list[str]) -> Recipe:
    checkpoint = Path(checkpoint)
    info = read_info(checkpoint)
    trained_path = checkpoint / "recipe.yaml"
    trained = {"memory": info["memory"]}
    if trained_path.is_file():
        trained = load_yaml(read_recipe_text(trained_path, "the trained recipe"), str(trained_path))
    if not isinstance(trained, dict):
        raise UsageError(f"{trained_path}: the top level must be a mapping of keys to values")
    data = apply_overrides(read_recipe_data(recipe_path), overrides)
    base = validate_recipe(_minimal(trained), str(trained_path)).model_dump(mode="json")
    problems = []
    for path in LOCKED:
        have, known = _get(trained, path)
        if not known:
            continue
        want, given = _get(data, path)
        if given:
            # Compare validated forms, so a default written out and one left out are the same.
            probe = copy.deepcopy(_minimal(trained))
            _set(probe, path, want)
            try:
                asked = _get(validate_recipe(probe).model_dump(mode="json"), path)[0]
            except UsageError:
                asked = want
            if asked != _get(base, path)[0]:
                problems.append(f"{recipe_path}: {'.'.join(path)}: the checkpoint has {have!r}, the recipe asks "
                                f"{want!r}; extend keeps the checkpoint's (remove the key from the recipe)")
                continue
        _set(data, path, copy.deepcopy(have))
    if problems:
        raise UsageError("\n".join(problems))
    recipe = validate_recipe(data, str(recipe_path))
    if Path(recipe.output_dir).resolve() in (checkpoint.resolve(), checkpoint.resolve().parent):
        raise UsageError(f"{recipe_path}: output_dir: extend writes a new run; choose a folder other than the "
                         f"checkpoint's own ({recipe.output_dir})")
    return recipe


def _minimal(trained: dict) -> dict:
    keep = {k: trained[k] for k in ("model", "tokenizer", "memory") if k in trained}
    return {**keep, "curriculum": [{"segments": 1, "steps": 1}]}
