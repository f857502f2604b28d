"""What ships inside the package: the embedded question-answering model, the language-model RMT for
`rmt perplexity`, and a public-domain text for `rmt eval`; and the rule for which model a command uses."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError, shown
from .checkpoint import RMT_JSON


ASSETS = Path(__file__).parents[1] / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default-model"  # answers questions (ingest / ask)
DEFAULT_LM_DIR = ASSETS / "lm-default"  # a language-model RMT (perplexity)
DEFAULT_NOISE_TEXT = ASSETS / "texts" / "blake-poems.txt"  # public-domain text for `rmt eval` without --noise


def resolve_model_path(model: str | Path | None, hint: str = "", default: Path = DEFAULT_MODEL_DIR) -> Path:
    """--model, else the default model shipped in the package, else a clear error."""
    if model:
        return Path(model)
    if (default / RMT_JSON).is_file():
        return default
    extra = f" (the memory file was made with {shown(hint)})" if hint else ""  # the hint is text from a file
    raise UsageError(f"no model: pass --model CHECKPOINT, a folder written by rmt train{extra}")


def load_for_inference(model: str | Path | None = None, dtype=None, device="cpu", hint: str = "",
                       default: Path = DEFAULT_MODEL_DIR):
    """A checkpoint (`resolve_model_path`) loaded as the commands load it: on the native engine where it qualifies
    (storage/engine.py), in `dtype`, or (None) in the dtype its weights are saved in."""
    from .checkpoint import load_checkpoint

    path = resolve_model_path(model, hint, default)
    return load_checkpoint(path, dtype=dtype, device=device, engine="auto")  # None: the dtype it is saved in


def default_model(dtype=None):
    """The question-answering model shipped in the package, loaded as `rmt ingest` and `rmt ask` load it: in the
    dtype it is saved in (bfloat16) unless `dtype`, on the native engine (quietly: no transformers, no loading
    bar), so its memory files are those the commands write."""
    return load_for_inference(dtype=dtype)
