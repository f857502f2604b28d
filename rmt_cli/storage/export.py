"""A checkpoint made ready to ship: bf16 weights, no optimizer or training state, no local paths."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError, error_line, shown
from .checkpoint import load_checkpoint, save_checkpoint
from .recipe import load_yaml


def export_checkpoint(source: str | Path, destination: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A checkpoint for shipping: weights in `dtype`, no optimizer or training state, the same fingerprint.

    The fingerprint of a bf16 export is computed from its own weights (as loaded in float32), so memory files
    made with the exported model are checked against the exported model.
    """
    loaded = load_checkpoint(source)
    recipe_file = loaded.path / "recipe.yaml"
    try:
        recipe = recipe_file.read_text(encoding="utf-8") if recipe_file.is_file() else None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"checkpoint {shown(loaded.path)}: recipe.yaml is unreadable ({error_line(e)})") from None
    if recipe is not None:  # a shipped file names no folder of the machine it was trained on
        import yaml

        data = load_yaml(recipe, str(loaded.path / "recipe.yaml"))
        if isinstance(data, dict) and data.get("output_dir"):
            data["output_dir"] = f"runs/{Path(str(data['output_dir'])).name}"
            recipe = yaml.safe_dump(data, sort_keys=False)
    loaded.cell.to(dtype)
    return save_checkpoint(destination, loaded.cell, loaded.tokenizer, loaded.memory_settings,
                           loaded.info.get("source", str(source)), recipe)
