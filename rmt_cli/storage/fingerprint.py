"""The fingerprint of a model: what a memory file depends on, so that a memory is only read by the model that
wrote it (weights, initial memory, tokenizer, memory settings; for an encoder, that it is one and its answers)."""

from __future__ import annotations

import hashlib
import json

import torch

from ..core.memory import MemorySlots
from .recipe import MemorySpec


def fingerprint(cell: MemorySlots, tokenizer, memory: MemorySpec) -> str:
    """What a memory file depends on: base weights, initial memory, tokenizer, memory settings."""
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
    if memory.update == "associative":
        settings.update(associative_key_size=memory.associative_key_size)
    if cell.kind == "encoder":  # an encoder's memory is never read by a causal LM, nor with another answer set
        settings.update(kind=cell.kind, answers=list(cell.answers))
    h.update(json.dumps(settings).encode())
    return h.hexdigest()[:32]
