"""Which engine runs a checkpoint for inference: the native Llama where the checkpoint is exactly that model, else
transformers.

The native engine (`core.native_llama` with `storage.native_tokenizer`) is a speed path, not a feature: `rmt
ingest`, `ask`, `eval` and `perplexity` start in a fraction of the time and run each segment with less overhead,
with the same numbers, the same fingerprint and so the same memory files. A checkpoint qualifies when its config,
tokenizer, weights and memory settings are all ones the native engine reproduces; anything else (another family,
an encoder, the associative rule, a setting it does not know) runs on transformers, without a word. Training, the
bf16 export and the Python API's `load_checkpoint` default always use transformers, whose models learn and save.

RMT_ENGINE=transformers forces transformers; RMT_ENGINE=native makes a checkpoint that does not qualify an error
that says why (for tests, and for anyone checking that the fast path is taken).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..core.native_llama import LlamaSettings, NativeLlama, unsupported
from ..core.rules import has_matrices
from ..errors import UsageError, shown
from .native_tokenizer import NativeTokenizer, load as load_native_tokenizer

ENV = "RMT_ENGINE"
ENGINES = ("auto", "native", "transformers")


def requested(engine: str = "auto") -> str:
    """The engine asked for: `engine` itself, or for "auto" what RMT_ENGINE says (auto when unset)."""
    if engine not in ENGINES:
        raise UsageError(f"engine {shown(repr(engine), 40)}: one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in ENGINES:
        raise UsageError(f"{ENV}={shown(value, 40)}: choose native or transformers (or leave it unset for the "
                         f"fastest engine the checkpoint allows)")
    return value


@dataclass
class NativeParts:
    """What the native engine needs of a qualifying checkpoint, read while qualifying it."""

    settings: LlamaSettings
    tokenizer: NativeTokenizer


def native_parts(folder: Path, info: dict, config: dict, tokenizer_config: dict | None,
                 weights: Callable[[], dict[str, list[int]]]) -> NativeParts | str:
    """The native engine's parts for a checkpoint (rmt.json `info`, config.json and tokenizer_config.json as
    JSON, `weights()` model.safetensors' tensor shapes by name), or why it does not qualify. A broken weights
    file does not qualify: loading it with transformers says what is wrong, in the order it checks."""
    if info.get("kind", "causal") != "causal":
        return "an encoder"
    rule = info["memory"].get("update")
    if has_matrices(rule):
        return f"the {rule} update rule (its matrices hook into transformers' decoder layers)"
    reason = unsupported(config)
    if reason is not None:
        return f"config.json: {reason}"
    settings = LlamaSettings(**config)
    try:
        weights = weights()
    except UsageError as e:
        return str(e)
    if settings.num_hidden_layers > len(weights):  # a crafted count would keep even a weightless build busy
        return "config.json names more layers than model.safetensors has tensors"
    with torch.device("meta"):  # names only, no memory
        expected = NativeLlama(settings).weight_names()
    # transformers passes over some stray tensors (rotary frequencies) and unties a tied head stored apart:
    # a file of other names is its to read
    if set(weights) != expected:
        odd = sorted(set(weights) ^ expected)
        more = f" and {len(odd) - 3} more" if len(odd) > 3 else ""
        return f"model.safetensors and the model differ in tensors {', '.join(shown(n, 80) for n in odd[:3])}{more}"
    tokenizer = load_native_tokenizer(folder, tokenizer_config)
    if isinstance(tokenizer, str):
        return f"tokenizer: {tokenizer}"
    return NativeParts(settings, tokenizer)
