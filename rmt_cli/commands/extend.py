"""`rmt extend`: a new run from a trained checkpoint, to reach longer inputs.

The checkpoint fixes the architecture, the tokenizer and the memory settings; the recipe brings the task,
optimizer and the curriculum (absolute segment counts). A recipe value that contradicts the checkpoint is an
error naming the field, never silently replaced.

One change of a locked setting is allowed: an upgrade of the update rule that keeps what the model computes
(`core.rules.UPGRADES`: gated -> gated-associative, which adds associative matrices read at scale 0).
The run then starts from everything the checkpoint holds plus fresh matrices, of the recipe's
`associative_key_size` (the checkpoint had none).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from ..core.rules import is_upgrade, upgrades_text
from ..storage.checkpoint import check_recipe_matches, read_info
from ..errors import UsageError, shown
from ..data.sources import home_path, read_small_text
from ..storage.recipe import (Recipe, apply_overrides, load_yaml, override_of, read_recipe_data, recipe_label,
                              run_input_problems, validate_recipe, value_source)

UPDATE, KEY_SIZE = ("memory", "update"), ("memory", "associative_key_size")
LOCKED = [("model",), ("tokenizer",), ("memory", "num_mem_tokens"), ("memory", "segment_size"), UPDATE,
          ("memory", "gate_floor"), KEY_SIZE]


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


def _trained(checkpoint: Path) -> tuple[dict, dict]:
    """The recipe a checkpoint was trained with (as written), and its locked sections validated (as the saved
    model's files describe them)."""
    read_info(checkpoint)  # a checkpoint folder, or one line saying what is wrong with it
    trained_path = checkpoint / "recipe.yaml"
    if not trained_path.is_file():  # the model, tokenizer and memory it was built with: nothing to continue without
        raise UsageError(f"{shown(str(checkpoint))}: no recipe.yaml (the recipe the checkpoint was trained with, which "
                         f"rmt extend continues)")
    trained = load_yaml(read_small_text(trained_path, "the trained recipe"), str(trained_path))
    if not isinstance(trained, dict):
        raise UsageError(f"{trained_path}: the top level must be a mapping of keys to values")
    base = validate_recipe(_minimal(trained), str(trained_path)).model_dump(mode="json")
    check_recipe_matches(checkpoint, base)  # the settings extend keeps are the saved model's, not an edited file's
    return trained, base


def check_extends(recipe: Recipe) -> None:
    """A recipe naming `init_from` (an extend run's own recipe.yaml, given to `rmt train`) asks for the locked
    settings of that checkpoint, as `rmt extend` would have made them; UsageError naming each that differs."""
    checkpoint = Path(recipe.init_from)
    _, base = _trained(checkpoint)
    asked_all = recipe.model_dump(mode="json")
    problems, upgraded = [], False
    for path in LOCKED:
        had, asked = _get(base, path)[0], _get(asked_all, path)[0]
        if path == KEY_SIZE and upgraded:
            continue
        if path == UPDATE and is_upgrade(had, asked):
            upgraded = True
        elif asked != had:
            problems.append(f"{'.'.join(path)}: the checkpoint init_from names ({shown(str(checkpoint))}) has "
                            f"{had!r}, the recipe {asked!r}")
    if problems:
        raise UsageError("\n".join(problems))


def extend_recipe(checkpoint: str | Path, recipe_path: str | Path, overrides: list[str],
                  check_inputs: bool = False) -> Recipe:
    """The recipe of an extend run: the checkpoint's model and memory with the recipe's stages (`check_inputs`: as
    in load_recipe, the data paths the run reads checked with the recipe's other errors)."""
    checkpoint = Path(checkpoint)
    trained, base = _trained(checkpoint)
    problems: list[str] = []  # every one reported at once: malformed overrides, then the locked settings asked
    applied: list[str] = []  # a skipped override set nothing: never named as a setter
    data = apply_overrides(read_recipe_data(recipe_path), overrides, problems, applied)
    overrides = applied
    if check_inputs and isinstance(data, dict):  # its data paths (the model is the checkpoint's), said with the rest
        problems += run_input_problems({"task": data.get("task")}, recipe_label(recipe_path), overrides)[0]
    # The run's recipe.yaml says what it started from: `rmt train RUN/recipe.yaml resume=auto` after a kill before
    # the first checkpoint starts from it again (it began a model from scratch).
    source = os.path.realpath(checkpoint)
    given = data.get("init_from") if isinstance(data, dict) else None
    if given is not None and (not isinstance(given, str) or os.path.realpath(home_path(given)) != source):
        problems.append(f"{recipe_label(recipe_path)}: init_from: {shown(repr(given), 80)} is not the checkpoint "
                        f"extend starts from ({shown(source)}); remove it")
    elif isinstance(data, dict):
        data["init_from"] = source
    upgraded = False  # the recipe upgrades the checkpoint's update rule
    for path in LOCKED:
        have, known = _get(trained, path)
        if not known:
            continue
        if path == KEY_SIZE and upgraded:
            continue  # the upgrade's matrices are new: their key size is the recipe's
        want, given = _get(data, path)
        if given:
            # Compare validated forms, so a default written out and one left out are the same.
            probe = copy.deepcopy(_minimal(trained))
            _set(probe, path, want)
            try:
                asked = _get(validate_recipe(probe).model_dump(mode="json"), path)[0]
            except UsageError:
                asked = want
            had = _get(base, path)[0]
            if path == UPDATE and is_upgrade(had, asked):
                upgraded = True
                continue
            if asked != had:
                allowed = f"; the one change it allows is the upgrade {upgrades_text()}" if path == UPDATE else ""
                setters = override_of(path, overrides)  # the recipe file has no such key: name what set it
                where = value_source(recipe_label(recipe_path), setters)
                remove = "the override" if setters else "the key from the recipe"
                problems.append(f"{where}: {'.'.join(path)}: the checkpoint has {have!r}, the recipe asks "
                                f"{want!r}; extend keeps the checkpoint's (remove {remove}){allowed}")
        _set(data, path, copy.deepcopy(have))  # a refused value is not validated too: one line for it
    recipe = validate_recipe(data, recipe_label(recipe_path), overrides, problems)
    if Path(recipe.output_dir).resolve() in (checkpoint.resolve(), checkpoint.resolve().parent):
        raise UsageError(f"{recipe_label(recipe_path)}: output_dir: extend writes a new run; choose a folder other "
                         f"than the checkpoint's own ({shown(recipe.output_dir)})")
    return recipe


def _minimal(trained: dict) -> dict:
    """The trained recipe's locked sections, as a recipe of their own (to validate them); with the task's name where
    a setting of the memory's training needs it (memory.binding_supervision: task reasoning)."""
    keep = {k: trained[k] for k in ("model", "tokenizer", "memory") if k in trained}
    task, memory = trained.get("task"), trained.get("memory")
    if isinstance(memory, dict) and memory.get("binding_supervision") and isinstance(task, dict):
        keep["task"] = {"name": task.get("name")}
    return {**keep, "curriculum": [{"segments": 1, "steps": 1}]}
