"""The memory file: what a model remembers of a document, in one small safetensors file.

Tensors
    memory        [num_mem_tokens, hidden]  the memory written after the last whole segment
    tail_tokens   [k] int64, k < segment_size  tokens of the unfinished last segment
Metadata (safetensors string map)
    rmt_format            "1"
    rmt_version           the rmt that wrote it
    fingerprint           sha256 (32 hex) of the model's weights, initial memory, tokenizer, memory settings, dtype
    model_hint            where the model was loaded from (a hint for error messages; never loaded or run)
    dtype, segment_size, num_mem_tokens
    tokens, segments      tokens and whole segments ingested
    carry_text            text read but not yet tokenized (its tokenization may change with more input)
    pending_bytes_hex     bytes of an unfinished UTF-8 character at the end of the input
    sources               JSON list of {name, size, sha256}; sources_omitted counts any left out by the cap
    created               UTC time, ISO 8601

Continuing from (memory, tail_tokens, carry_text, pending_bytes) with more input gives exactly the state of
reading everything in one pass. Files are written to a temporary name and renamed into place
(`atomic.atomic_path`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .atomic import atomic_path
from .errors import UsageError

if TYPE_CHECKING:  # checkpoint imports this module
    from .checkpoint import LoadedModel

FORMAT = "1"
MAX_METADATA_BYTES = 64 * 1024
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def memory_fingerprint(model_fingerprint: str, dtype: torch.dtype) -> str:
    return hashlib.sha256(f"{model_fingerprint}:{dtype_name(dtype)}".encode()).hexdigest()[:32]


@dataclass
class MemoryState:
    memory: torch.Tensor
    tail_tokens: list[int]
    fingerprint: str
    dtype: str
    segment_size: int
    num_mem_tokens: int
    model_hint: str = ""
    tokens: int = 0
    segments: int = 0
    carry_text: str = ""
    pending_bytes: bytes = b""
    sources: list[dict] = field(default_factory=list)
    sources_omitted: int = 0
    created: str = ""
    rmt_version: str = __version__

    def metadata(self) -> dict[str, str]:
        meta = {
            "rmt_format": FORMAT,
            "rmt_version": self.rmt_version,
            "fingerprint": self.fingerprint,
            "model_hint": self.model_hint[:500],
            "dtype": self.dtype,
            "segment_size": str(self.segment_size),
            "num_mem_tokens": str(self.num_mem_tokens),
            "tokens": str(self.tokens),
            "segments": str(self.segments),
            "carry_text": self.carry_text,
            "pending_bytes_hex": self.pending_bytes.hex(),
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        sources, omitted = list(self.sources), self.sources_omitted
        budget = MAX_METADATA_BYTES - sum(len(k) + len(v.encode()) for k, v in meta.items()) - 200
        while sources and len(json.dumps(sources).encode()) > budget:
            sources.pop()
            omitted += 1
        meta["sources"] = json.dumps(sources)
        meta["sources_omitted"] = str(omitted)
        return meta


def check_output_target(path: str | Path) -> None:
    """Only a regular file or a new path may be written: never replace a device, a FIFO or a folder."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; name a memory file to write")
    if path.exists() and not path.is_file():
        raise UsageError(f"{path}: is not a regular file (a device, a FIFO or a socket); rmt writes only regular "
                         f"files or new paths")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{path}: {parent} is a file, not a folder")


def check_compatible(state: MemoryState, model: LoadedModel, force: bool, name: str) -> None:
    """A memory file is only meaningful to the model (weights, tokenizer, memory settings, dtype) that wrote it."""
    expected = memory_fingerprint(model.info["fingerprint"], model.cell.dtype)
    if state.fingerprint == expected or force:
        if state.memory.shape[-1] != model.cell.hidden_size or state.num_mem_tokens != model.memory.num_mem_tokens:
            raise UsageError(f"{name}: memory of shape {tuple(state.memory.shape)} cannot be used with this model "
                             f"({model.memory.num_mem_tokens} x {model.cell.hidden_size}), even with --force")
        return
    raise UsageError(
        f"{name}: made by another model or setting (file fingerprint {state.fingerprint}, made with "
        f"{state.model_hint or 'an unknown model'} in {state.dtype}; this model {expected}, {model.path} in "
        f"{dtype_name(model.cell.dtype)}); use the model that made it, or --force"
    )


def save_memory(path: str | Path, state: MemoryState) -> Path:
    path = Path(path)
    check_output_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "memory": state.memory.detach().to("cpu").contiguous(),
        "tail_tokens": torch.tensor(state.tail_tokens, dtype=torch.int64),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=state.metadata())
    return path


def load_memory(path: str | Path) -> MemoryState:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such memory file")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a memory file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("rmt_format") is None:
                raise UsageError(f"{path}: a safetensors file, but not an rmt memory file (no rmt metadata)")
            if meta["rmt_format"] != FORMAT:
                raise UsageError(f"{path}: memory file format {meta['rmt_format']!r}; this rmt reads {FORMAT!r}")
            keys = set(f.keys())
            if not {"memory", "tail_tokens"} <= keys:
                raise UsageError(f"{path}: memory file lacks {', '.join(sorted({'memory', 'tail_tokens'} - keys))}")
            memory = f.get_tensor("memory")
            tail = f.get_tensor("tail_tokens").tolist()
        return MemoryState(
            memory=memory,
            tail_tokens=tail,
            fingerprint=meta["fingerprint"],
            dtype=meta["dtype"],
            segment_size=int(meta["segment_size"]),
            num_mem_tokens=int(meta["num_mem_tokens"]),
            model_hint=meta.get("model_hint", ""),
            tokens=int(meta["tokens"]),
            segments=int(meta["segments"]),
            carry_text=meta.get("carry_text", ""),
            pending_bytes=bytes.fromhex(meta.get("pending_bytes_hex", "")),
            sources=json.loads(meta.get("sources", "[]")),
            sources_omitted=int(meta.get("sources_omitted", "0")),
            created=meta.get("created", ""),
            rmt_version=meta.get("rmt_version", ""),
        )
    except UsageError:
        raise
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    except Exception as e:  # safetensors reports corrupt and truncated files with several error types
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{path}: not a readable rmt memory file (corrupt or truncated?): {detail}") from None
