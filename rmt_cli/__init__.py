"""rmt: give transformer models a recurrent memory (Recurrent Memory Transformer).

The package's folders are its layers, and imports only run down them:

    errors, atomic, progress   the base: one-line errors, atomic writes, the progress bar
    core/      the memory cells (causal LM, encoder), their update rules and the recurrence; segments; the
               native Llama decoder that inference runs where a checkpoint allows
    data/      stories and haystacks, the one reader of user text, streamed tokenization
    storage/   recipes, model building, checkpoint folders and which engine runs them, fingerprints, memory
               files, shipped assets
    commands/  train, extend, ingest, ask, perplexity, eval (and the training samples and evaluation)
    cli.py     the `rmt` command, a thin layer on top
    __main__.py  its entry point (`rmt`, `python -m rmt_cli`): loads cli.py, turning an interrupt meanwhile into exit 130

`from rmt_cli import ...` gives the public API below; names are imported when first used, so that `rmt --help`
does not wait for torch.
"""

import importlib as _importlib
import os as _os

__version__ = "0.1.0"

_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_EXPORTS = {
    "RMTError": "errors", "UsageError": "errors",
    "MemoryCell": "core.memory", "EncoderMemoryCell": "core.encoder", "RecurrentMemoryModel": "core.memory",
    "build_final_segment": "core.segments",
    "Recipe": "storage.recipe", "load_recipe": "storage.recipe",
    "LoadedModel": "storage.checkpoint", "load_checkpoint": "storage.checkpoint", "save_checkpoint": "storage.checkpoint",
    "default_model": "storage.assets", "MemoryState": "storage.memfile", "load_memory": "storage.memfile",
    "save_memory": "storage.memfile", "train": "commands.train", "IngestJob": "commands.ingest",
    "ingest": "commands.ingest", "IngestInterrupted": "commands.ingest", "ask": "commands.ask", "perplexity": "commands.perplexity",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rmt_cli' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
