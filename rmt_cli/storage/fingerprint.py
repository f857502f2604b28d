"""The fingerprint of a model: what a memory file depends on, so that a memory is only read by the model that
wrote it (weights, architecture settings, initial memory, tokenizer, memory settings; for an encoder, that it is one
and its answers)."""

from __future__ import annotations

import hashlib
import json

import torch

from ..core.memory import MemorySlots
from ..core.rules import has_matrices
from .recipe import MemorySpec


# config.json keys that say nothing about what the model computes: where it was loaded from, which library and
# dtype wrote it, which head class it was saved with (rmt picks the class by kind), runtime switches.
BOOKKEEPING_KEYS = frozenset({
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "_commit_hash",
    "_attn_implementation", "_attn_implementation_autoset", "attn_implementation", "use_cache", "return_dict",
    "output_attentions", "output_hidden_states", "torchscript", "id2label", "label2id", "problem_type",
    "finetuning_task", "tokenizer_class", "task_specific_params", "prefix",
})


def architecture_settings(config) -> dict:
    """The model's config as far as it changes what the model computes (rope_theta, a norm's epsilon, ...): the
    values that differ from the family's defaults, plus model_type, bookkeeping left out. Differences only, so a
    value written out and the same value left to its default agree, and a key a later transformers adds with its
    default changes nothing."""
    def as_json(settings: dict) -> dict:  # as config.json holds them: a tuple in memory is a list once loaded
        return json.loads(json.dumps(settings, default=str))

    values = as_json(config.to_dict())
    try:
        defaults = as_json(type(config)().to_dict())
    except Exception:  # a config class that cannot be built without arguments: every value counts
        defaults = {}
    missing = object()
    settings = {key: value for key, value in values.items()
                if key not in BOOKKEEPING_KEYS and defaults.get(key, missing) != value}
    return {**settings, "model_type": getattr(config, "model_type", "")}


def fingerprint(cell: MemorySlots, tokenizer, memory: MemorySpec) -> str:
    """What a memory file depends on: base weights, architecture settings, initial memory, tokenizer, memory
    settings."""
    h = hashlib.sha256()
    state = cell.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu")
        if t.is_floating_point():  # hash values as float32: a bf16 file and its float32 load agree
            t = t.float()
        t = t.contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(tokenizer.backend_tokenizer.to_str().encode() if hasattr(tokenizer, "backend_tokenizer") else b"")
    settings = {"num_mem_tokens": memory.num_mem_tokens, "segment_size": memory.segment_size}
    if memory.update != "replace":  # memory files of replace-rule models keep the fingerprints they had
        settings.update(update=memory.update, gate_floor=memory.gate_floor)
    if has_matrices(memory.update):
        settings.update(associative_key_size=memory.associative_key_size)
    if cell.kind == "encoder":  # an encoder's memory is never read by a causal LM, nor with another answer set
        settings.update(kind=cell.kind, answers=list(cell.answers))
    h.update(json.dumps(settings).encode())
    h.update(json.dumps(architecture_settings(cell.model.config), sort_keys=True).encode())
    return h.hexdigest()[:32]


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a file's tensors as stored (a memory file's, a checkpoint's optimizer state): each one's name,
    dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        # reshape first: a 0-dim tensor (a crafted file's) cannot be viewed as bytes
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
