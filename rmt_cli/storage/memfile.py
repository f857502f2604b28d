"""The memory file: what a model remembers of a document, in one small safetensors file.

Tensors
    memory        [num_mem_tokens, hidden]  the memory written after the last whole segment
    tail_tokens   [k] int64, k < segment_size  tokens of the unfinished last segment
    associative_matrices  [layers, features, layer hidden]  (associative and gated-associative only, with the next)
    associative_norms     [layers, features]  the per-layer matrices and normalisers after the last whole segment
Metadata (safetensors string map)
    rmt_format            "1"
    rmt_version           the rmt that wrote it
    fingerprint           sha256 (32 hex) of the model's weights, architecture settings (config.json), initial
                          memory, tokenizer, memory settings, dtype
    model_hint            where the model was loaded from (a hint for error messages; never loaded or run)
    dtype, segment_size, num_mem_tokens
    tokens, segments      tokens and whole segments ingested
    carry_text            text read but not yet tokenized (its tokenization may change with more input)
    pending_bytes_hex     bytes of an unfinished UTF-8 character at the end of the input
    sources               JSON list of {name, size, sha256}; sources_omitted counts any left out by the cap
    created               UTC time, ISO 8601
    tensors_sha256        sha256 of the tensors (names, dtypes, shapes, bytes): a damaged file is refused, not
                          read as another memory (files without it, from before, load unchecked)
    forced_from           only in a file that mixes models: the fingerprint of the memory that a forced --append
                          (--force) continued with another model; every later use of the file needs --force

Continuing from (memory, tail_tokens, carry_text, pending_bytes) with more input gives exactly the state of
reading everything in one pass. Files are written to a temporary name and renamed into place
(`atomic.atomic_path`).

A memory file is untrusted input. `load_memory` reads only a regular file of at most MAX_FILE_BYTES and checks
every tensor (no others; memory float32, bfloat16 or float16 with values within float16's range, and so the
associative tensors, both or neither, in the memory's dtype and of agreeing shapes; tail_tokens int64 or int32,
non-negative) and every metadata field (type, range, the MAX_* caps below) before anything uses them.
`check_compatible` then checks the file against the model (memory and associative shapes, segment size, token ids
within the vocabulary), even with --force. Every failure is one line naming the file and the field (UsageError,
exit 2).
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors, save_file

from .. import __version__
from ..atomic import atomic_path, check_outside_checkpoints, replaceable_target
from ..errors import RMTError, UsageError, bool_argument, error_line, json_loads, path_argument, shown, write_failure
from ..core.associative import join_state, split_state
from ..data.tokenstream import MAX_CARRY_CHARS
from .fingerprint import tensors_digest

if TYPE_CHECKING:  # checkpoint imports this module
    from .checkpoint import LoadedModel

FORMAT = "1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKEN_DTYPES = (torch.int64, torch.int32)
TENSORS = ("memory", "tail_tokens")
ASSOCIATIVE_TENSORS = ("associative_matrices", "associative_norms")  # the associative rule's, both or neither
REQUIRED_METADATA = ("fingerprint", "dtype", "segment_size", "num_mem_tokens", "tokens", "segments")
# What a memory file may hold. The writer stays well inside these caps; the reader refuses anything beyond them.
MAX_FILE_BYTES = 256 * 1024 * 1024  # memory is num_mem_tokens x hidden floats: a few MiB even for large models
MAX_HEADER_BYTES = 1024 * 1024  # the safetensors header: two tensor entries and the metadata, JSON-escaped
MAX_METADATA_BYTES = 64 * 1024  # all metadata keys and values; the writer trims the sources list to fit
MAX_SEGMENT_SIZE = 1 << 20
MAX_MEM_TOKENS = 1 << 16
MAX_COUNT = 10**18  # tokens, segments, sources_omitted, a source's size
MAX_HINT_CHARS = 500  # model_hint
MAX_LABEL_CHARS = 100  # rmt_version, created
MAX_PENDING_BYTES = 3  # the start of a UTF-8 character (at most 4 bytes long)
# A memory is a hidden state, and models run in float16 keep those within its range. Larger finite values are
# crafted: they overflow inside the model into NaN answers, and would not even fit a float16 model.
MAX_MEMORY_VALUE = torch.finfo(torch.float16).max


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def memory_fingerprint(model_fingerprint: str, dtype: torch.dtype) -> str:
    return hashlib.sha256(f"{model_fingerprint}:{dtype_name(dtype)}".encode()).hexdigest()[:32]


@dataclass
class MemoryState:
    """What a memory file holds (load_memory reads one, save_memory writes one; the fields are the file's, see the
    top of this module): the memory after the last segment, the tokens and text not yet in a segment, and which
    model wrote it."""

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
    # The associative rules: `memory` holds, after its num_mem_tokens vectors, the per-layer matrices of this
    # (layers, features, hidden) shape as the cell lays them out (core.associative.join_state); None without.
    associative_shape: tuple[int, int, int] | None = None
    # The fingerprint of the memory a forced --append continued with another model ("" for a file of one model):
    # the new fingerprint alone would make the mix pass as that model's memory.
    forced_from: str = ""

    def metadata(self) -> dict[str, str]:
        meta = {
            "rmt_format": FORMAT,
            "rmt_version": self.rmt_version,
            "fingerprint": self.fingerprint,
            "model_hint": self.model_hint[:MAX_HINT_CHARS],
            "dtype": self.dtype,
            "segment_size": str(self.segment_size),
            "num_mem_tokens": str(self.num_mem_tokens),
            "tokens": str(self.tokens),
            "segments": str(self.segments),
            "carry_text": self.carry_text,
            "pending_bytes_hex": self.pending_bytes.hex(),
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.forced_from:
            meta["forced_from"] = self.forced_from
        sources, omitted = list(self.sources), self.sources_omitted
        budget = MAX_METADATA_BYTES - sum(len(k) + len(v.encode()) for k, v in meta.items()) - 200
        # The first sources that fit, sized one by one: json.dumps of a list is "[" + ", ".join(items) + "]", in
        # ASCII. (Dumping the whole list again after each one dropped took minutes for 20,000 files.)
        size, kept = 2, 0
        for source in sources:
            size += len(json.dumps(source)) + (2 if kept else 0)
            if size > budget:
                break
            kept += 1
        omitted += len(sources) - kept
        meta["sources"] = json.dumps(sources[:kept])
        meta["sources_omitted"] = str(min(omitted, MAX_COUNT))  # a count at its cap stays there: no reader refuses it
        return meta


def vocabulary_size(model: LoadedModel) -> int:
    """Token ids below this are both the tokenizer's and rows of the model's embedding."""
    return min(len(model.tokenizer), model.cell.model.get_input_embeddings().num_embeddings)


def check_compatible(state: MemoryState, model: LoadedModel, force: bool, name: str) -> None:
    """A memory file is only meaningful to the model (weights, tokenizer, memory settings, dtype) that wrote it; a
    file that mixes models (`forced_from`) to none of them.

    --force skips the fingerprint (and the mix) only: a fingerprint is easily copied, so what keeps the model from
    reading out of bounds (shapes, segment size, token ids) or computing on what it cannot represent (the memory's
    dtype) is checked always."""
    bool_argument(force, "force")
    expected = memory_fingerprint(model.fingerprint_now(), model.cell.dtype)
    where = shown(name)
    if state.forced_from and not force:  # whichever model reads it: it holds another's memory
        raise UsageError(
            f"{where}: mixes two models' memories (a memory of fingerprint {state.forced_from} continued with --force "
            f"by {shown(state.model_hint or 'an unknown model')}, fingerprint {state.fingerprint}); use --force to "
            f"read it anyway, or ingest the whole text again with one model"
        )
    # the dtype named beside the fingerprint too: `rmt ask` loads the model in it, the API's caller may not have
    if (state.fingerprint != expected or state.dtype != dtype_name(model.cell.dtype)) and not force:
        raise UsageError(
            f"{where}: made by another model or setting (file fingerprint {state.fingerprint}, made with "
            f"{shown(state.model_hint or 'an unknown model')} in {state.dtype}; this model {expected}, "
            f"{shown(model.path)} in {dtype_name(model.cell.dtype)}); use the model that made it, or --force"
        )
    if state.memory.shape[-1] != model.cell.hidden_size or state.num_mem_tokens != model.memory_settings.num_mem_tokens:
        raise UsageError(f"{where}: memory of shape {(state.num_mem_tokens, state.memory.shape[-1])} cannot be used "
                         f"with this model ({model.memory_settings.num_mem_tokens} x {model.cell.hidden_size}), even "
                         f"with --force")
    if state.associative_shape != model.cell.associative_shape:
        held, wanted = (" x ".join(map(str, shape)) if shape else "none"
                        for shape in (state.associative_shape, model.cell.associative_shape))
        raise UsageError(f"{where}: associative matrices (layers x features x hidden) {held}; this model's: {wanted} "
                         f"(memory update rule {model.memory_settings.update}), even with --force")
    if state.segment_size != model.segment_size:
        raise UsageError(f"{where}: made for segments of {state.segment_size} tokens; this model reads "
                         f"{model.segment_size}, even with --force")
    vocabulary, largest = vocabulary_size(model), max(state.tail_tokens, default=-1)
    if largest >= vocabulary:
        raise UsageError(f"{where}: token id {largest} in tail_tokens is outside this model's vocabulary of "
                         f"{vocabulary}, even with --force")
    if state.memory.dtype not in DTYPES.values():  # load_memory's value cap makes any of these cast finitely
        raise UsageError(f"{where}: memory in {dtype_name(state.memory.dtype)} cannot be used, even with --force")


def check_replaceable(path: str | Path) -> Path:
    """Where a memory file may be written: a new path, an empty file or a memory file (a new ingest, or an append
    written back); never any other file, which is a user's text a typo away from an input. Returns the target."""
    return replaceable_target(path, "", is_memory_file, "a memory file (or its header is damaged); rmt replaces "
                              "only memory files (remove it first, or name another output)")


def _state_tensors(state: MemoryState) -> dict[str, torch.Tensor]:
    """The tensors of a memory file: the memory vectors, the tail's token ids; for the associative rules, the
    matrices and their norms as tensors of their own."""
    memory = state.memory.detach().to("cpu")
    if not all(type(token) is int for token in state.tail_tokens):  # torch would cut 1.5 to 1 without a word
        raise TypeError("tail_tokens are token ids (int)")
    tensors = {"tail_tokens": torch.tensor(state.tail_tokens, dtype=torch.int64)}
    if state.associative_shape is not None:
        matrices, norms = split_state(memory[state.num_mem_tokens :], *state.associative_shape)
        tensors.update(associative_matrices=matrices.contiguous(), associative_norms=norms.contiguous())
        memory = memory[: state.num_mem_tokens]
    tensors["memory"] = memory.contiguous()
    return tensors


def save_memory(path: str | Path, state: MemoryState) -> Path:
    """Write a memory file whole or not at all; a failed write is one line (RMTError) and leaves any old file."""
    given = path
    path = Path(path_argument(path, "save_memory"))
    if str(given).endswith(("/", os.sep)):  # Path() drops the slash: "dir/" wrote a file named dir
        raise UsageError(f"save_memory: {shown(given)} names a folder; name the memory file (FOLDER/NAME.st)")
    if not isinstance(state, MemoryState):
        raise UsageError(f"save_memory: a MemoryState, not {type(state).__name__}")
    check_replaceable(path)
    check_outside_checkpoints(path, "save_memory: ")
    tensors, metadata = _file_contents(state, f"{shown(path)}: not written")
    metadata["tensors_sha256"] = tensors_digest(tensors)  # after the check, which would only compare it again
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)
    except (OSError, SafetensorError) as e:  # a full disk: safetensors raises its own error type, not OSError
        raise RMTError(f"{shown(path)}: cannot write the memory file: {write_failure(e)}") from None
    return path


def check_state(state: MemoryState, name: str = "state") -> None:
    """A MemoryState handed over by the API (edited in Python, or made by hand) checked as load_memory checks a
    file: UsageError naming what is wrong, never an IndexError from the model (a negative token id) or an answer
    from a memory no file could hold."""
    if not isinstance(state, MemoryState):
        raise UsageError(f"{name}: a MemoryState (load_memory), not {type(state).__name__}")
    _file_contents(state, name)


def _file_contents(state: MemoryState, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata a memory file of `state` holds, checked with load_memory's rules; errors begin with
    `where`."""
    try:  # a field of another type (a list for the memory, pending_bytes as text) fails here first
        tensors = _state_tensors(state)
        metadata = state.metadata()
    except (AttributeError, TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{where}: a field of the MemoryState is not of its type ({type(e).__name__}: "
                         f"{error_line(e)})") from None
    # What load_memory would refuse is never written (a model whose arithmetic broke writes NaN).
    if not all(_storable(t) for name, t in tensors.items() if name != "tail_tokens"):
        raise RMTError(f"{where}: the memory holds values that are not finite (NaN or infinity) or beyond "
                       f"±{MAX_MEMORY_VALUE:g}, as a model whose config is unsound makes")
    checked = _checked_state(tensors, metadata, where)  # nor anything else load_memory would refuse
    # The metadata are text: segment_size "128" passed as 128, and was then no size the model reads ("made for
    # segments of 128 tokens; this model reads 128"). Each field is of the type load_memory gives it.
    for name in ("fingerprint", "dtype", "segment_size", "num_mem_tokens", "model_hint", "tokens", "segments",
                 "carry_text", "sources_omitted", "created", "rmt_version", "associative_shape", "forced_from"):
        given, read = getattr(state, name), getattr(checked, name)
        if type(given) is not type(read):
            raise UsageError(f"{where}: {name} is {shown(repr(given), 60)}, not of its type "
                             f"({type(read).__name__})")
    return tensors, metadata


def _storable(tensor: torch.Tensor) -> bool:
    """Finite and within what a memory file may hold (±MAX_MEMORY_VALUE)."""
    values = tensor.float()
    return bool(torch.isfinite(values).all()) and bool((values.abs() <= MAX_MEMORY_VALUE).all())


def load_memory(path: str | Path) -> MemoryState:
    """Read a memory file, checking every tensor and metadata field before anything uses them (see the top)."""
    path = Path(path_argument(path, "load_memory"))
    where = shown(path)
    tensors, meta = _read_safetensors(_read_regular_file(path, where), where)
    return _checked_state(tensors, meta, where)


def _checked_state(tensors: dict[str, torch.Tensor], meta: dict[str, str], where: str) -> MemoryState:
    """A memory file's tensors and metadata as a MemoryState, every field checked (UsageError naming it)."""
    if "rmt_format" not in meta:
        raise UsageError(f"{where}: a safetensors file, but not an rmt memory file (no rmt metadata)")
    if meta["rmt_format"] != FORMAT:
        raise UsageError(f"{where}: memory file format {_quoted(meta['rmt_format'])}; this rmt reads '{FORMAT}'")
    metadata_bytes = sum(len(k.encode(errors="replace")) + len(v.encode(errors="replace")) for k, v in meta.items())
    if metadata_bytes > MAX_METADATA_BYTES:
        raise _invalid(where, "metadata", f"of {metadata_bytes} bytes; at most {MAX_METADATA_BYTES}")
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        raise UsageError(f"{where}: memory file metadata lacks {', '.join(missing)}")
    if "tensors_sha256" in meta and meta["tensors_sha256"] != tensors_digest(tensors):
        raise _corrupt(where, "tensors that do not match their checksum (tensors_sha256): the file was changed or "
                       "damaged after rmt wrote it")
    memory, tail = _checked_tensors(tensors, where)
    associative = _checked_associative(tensors, memory, where)

    fingerprint, dtype = meta["fingerprint"], meta["dtype"]
    forced_from = meta.get("forced_from", "")  # absent from a file of one model
    for key, value in (("fingerprint", fingerprint), ("forced_from", forced_from)):
        if (value or key == "fingerprint") and not re.fullmatch(r"[0-9a-f]{32}", value):
            raise _invalid(where, f"metadata {key}", f"{_quoted(value)} is not 32 lowercase hex digits")
    if dtype not in DTYPES:
        raise _invalid(where, "metadata dtype", f"{_quoted(dtype)} is not one of {', '.join(DTYPES)}")
    if DTYPES[dtype] != memory.dtype:
        raise _invalid(where, "metadata dtype", f"says {dtype}, but the memory tensor is {dtype_name(memory.dtype)}")
    segment_size = _whole_number(where, "segment_size", meta["segment_size"], 1, MAX_SEGMENT_SIZE)
    num_mem_tokens = _whole_number(where, "num_mem_tokens", meta["num_mem_tokens"], 1, MAX_MEM_TOKENS)
    if num_mem_tokens != memory.shape[0]:
        raise _invalid(where, "metadata num_mem_tokens", f"{num_mem_tokens} differs from the memory tensor's "
                       f"{memory.shape[0]} rows")
    if len(tail) >= segment_size:
        raise _invalid(where, "tensor tail_tokens", f"holds {len(tail)} tokens; a memory file keeps fewer than a "
                       f"segment ({segment_size})")
    tokens = _whole_number(where, "tokens", meta["tokens"], 0, MAX_COUNT)
    segments = _whole_number(where, "segments", meta["segments"], 0, MAX_COUNT)
    carry_text = _text(where, meta, "carry_text", MAX_CARRY_CHARS)
    # ingest writes tokens = segments x segment_size + the tail (under a segment) + the tokens of the carried text
    # (at most one a UTF-8 byte, plus a few a tokenizer may add). Counts outside that would go negative or past the
    # cap on --append, or (fewer than the tail holds) make --append report tokens it never read.
    whole = segments * segment_size
    if whole > MAX_COUNT:
        raise _invalid(where, "metadata segments", f"{segments} segments of {segment_size} tokens are more than "
                       f"{MAX_COUNT} tokens")
    carried = len(carry_text.encode("utf-8", errors="surrogatepass"))
    if not whole + len(tail) <= tokens < whole + segment_size + carried + 4:
        raise _invalid(where, "metadata tokens", f"{tokens} disagrees with {segments} segments of {segment_size} "
                       f"tokens and a tail of {len(tail)}")
    return MemoryState(
        memory=memory if associative is None else torch.cat([memory, join_state(*associative, memory.shape[-1])]),
        tail_tokens=tail,
        fingerprint=fingerprint,
        dtype=dtype,
        segment_size=segment_size,
        num_mem_tokens=num_mem_tokens,
        model_hint=_text(where, meta, "model_hint", MAX_HINT_CHARS),
        tokens=tokens,
        segments=segments,
        carry_text=carry_text,
        pending_bytes=_pending_bytes(where, meta.get("pending_bytes_hex", "")),
        sources=_sources(where, meta.get("sources", "[]")),
        sources_omitted=_whole_number(where, "sources_omitted", meta.get("sources_omitted", "0"), 0, MAX_COUNT),
        created=_text(where, meta, "created", MAX_LABEL_CHARS),
        rmt_version=_text(where, meta, "rmt_version", MAX_LABEL_CHARS),
        associative_shape=None if associative is None else tuple(associative[0].shape),
        forced_from=forced_from,
    )


def is_memory_file(path: str | Path) -> bool:
    """Whether a file's header says it is an rmt memory file (safetensors with rmt's metadata): what an output
    may replace. Only the header is read; the file itself is checked when it is loaded."""
    try:
        with open(path, "rb") as f:
            header_bytes = int.from_bytes(f.read(8), "little")
            if not 0 < header_bytes <= MAX_HEADER_BYTES:
                return False
            meta = json_loads(f.read(header_bytes)).get("__metadata__")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, or JSON that is not a map
        return False
    return isinstance(meta, dict) and "rmt_format" in meta


def _read_regular_file(path: Path, where: str) -> bytes:
    """The file's bytes, read only if it is a regular file within MAX_FILE_BYTES: opening a FIFO waits for a
    writer forever, a device may never end. Checked before opening, and again once open (it may have been
    swapped in between)."""
    try:
        _check_regular(os.stat(path), where)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with open(fd, "rb") as f:
            _check_regular(os.fstat(fd), where)
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{where}: no such memory file") from None
    except PermissionError:
        raise UsageError(f"{where}: permission denied") from None
    except OSError as e:  # a symbolic-link loop, a path through a file, an I/O error
        if e.errno == errno.ELOOP:
            raise UsageError(f"{where}: a loop of symbolic links") from None
        raise UsageError(f"{where}: cannot read it: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:  # it grew while being read
        raise UsageError(f"{where}: more than {MAX_FILE_BYTES} bytes; a memory file is at most that")
    return data


def _check_regular(info: os.stat_result, where: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{where}: is a folder, not a memory file")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{where}: is not a regular file (a device, a FIFO or a socket), so not a memory file")
    if info.st_size > MAX_FILE_BYTES:
        raise UsageError(f"{where}: {info.st_size} bytes; a memory file is at most {MAX_FILE_BYTES}")


def _read_safetensors(data: bytes, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file's bytes; safetensors checks the layout (offsets, sizes)."""
    if len(data) < 8:  # not even the length of the header: its bytes read as a length would mislead
        raise _corrupt(where, f"{len(data)} bytes, fewer than the 8 a safetensors file starts with (the length of "
                       f"its header)")
    header_bytes = int.from_bytes(data[:8], "little")
    if header_bytes > MAX_HEADER_BYTES:  # refused before parsing: a memory file's header is a few KiB
        raise _corrupt(where, f"a header of {header_bytes} bytes (at most {MAX_HEADER_BYTES})")
    if header_bytes > len(data) - 8:
        raise _corrupt(where, f"a header of {header_bytes} bytes, but only {len(data) - 8} bytes follow its length")
    try:
        tensors = load_safetensors(data)
        meta = json.loads(data[8 : 8 + header_bytes]).get("__metadata__") or {}
    except Exception as e:  # safetensors and json report corrupt and truncated files with several error types
        raise _corrupt(where, error_line(e)) from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _corrupt(where, "metadata that is not a map of strings")
    return tensors, meta


def _checked_tensors(tensors: dict[str, torch.Tensor], where: str) -> tuple[torch.Tensor, list[int]]:
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise UsageError(f"{where}: memory file lacks {', '.join(missing)}")
    extra = sorted(set(tensors) - set(TENSORS) - set(ASSOCIATIVE_TENSORS))
    if extra:
        raise UsageError(f"{where}: unexpected tensor {_quoted(extra[0])}; a memory file holds "
                         f"{' and '.join(TENSORS)} (and the associative rules' {' and '.join(ASSOCIATIVE_TENSORS)}) "
                         f"only")
    memory, tail = tensors["memory"], tensors["tail_tokens"]
    if memory.dtype not in DTYPES.values():
        raise _invalid(where, "tensor memory", f"is {dtype_name(memory.dtype)}, not one of {', '.join(DTYPES)}")
    if memory.dim() != 2 or 0 in memory.shape:
        raise _invalid(where, "tensor memory", f"has shape {shown(list(memory.shape), 80)}; expected "
                       f"[num_mem_tokens, hidden]")
    _check_values(memory, "memory", where)
    if tail.dtype not in TOKEN_DTYPES or tail.dim() != 1:
        raise _invalid(where, "tensor tail_tokens", f"is {dtype_name(tail.dtype)} of shape "
                       f"{shown(list(tail.shape), 80)}; expected a list of int64 token ids")
    if tail.numel() and int(tail.min()) < 0:
        raise _invalid(where, "tensor tail_tokens", f"holds a negative token id ({int(tail.min())})")
    return memory, tail.tolist()


def _checked_associative(tensors: dict[str, torch.Tensor], memory: torch.Tensor,
                         where: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The associative rules' (matrices [L, F, H], normalisers [L, F]), both in the memory's dtype and value
    range, or None for a file without them (the rules without matrices, and files from before the rule)."""
    present = [name for name in ASSOCIATIVE_TENSORS if name in tensors]
    if not present:
        return None
    if len(present) == 1:
        missing = next(name for name in ASSOCIATIVE_TENSORS if name not in tensors)
        raise UsageError(f"{where}: memory file holds {present[0]} but lacks {missing}")
    matrices, norms = (tensors[name] for name in ASSOCIATIVE_TENSORS)
    for name, tensor in zip(ASSOCIATIVE_TENSORS, (matrices, norms)):
        if tensor.dtype != memory.dtype:
            raise _invalid(where, f"tensor {name}", f"is {dtype_name(tensor.dtype)}; the memory is "
                           f"{dtype_name(memory.dtype)}")
    if matrices.dim() != 3 or 0 in matrices.shape or tuple(norms.shape) != tuple(matrices.shape[:2]):
        raise _invalid(where, "tensors associative_matrices and associative_norms", f"have shapes "
                       f"{shown(list(matrices.shape), 80)} and {shown(list(norms.shape), 80)}; expected [layers, "
                       f"features, hidden] and [layers, features]")
    for name, tensor in zip(ASSOCIATIVE_TENSORS, (matrices, norms)):
        _check_values(tensor, name, where)
    return matrices, norms


def _check_values(tensor: torch.Tensor, name: str, where: str) -> None:
    """Values a model run in float16 could hold: finite and within float16's range."""
    if not (tensor.float().abs() <= MAX_MEMORY_VALUE).all():  # also false for NaN; in float32: bf16 rounds 65504 up
        raise _invalid(where, f"tensor {name}", f"holds NaN, infinite or values beyond ±{MAX_MEMORY_VALUE:g}")


def _whole_number(where: str, key: str, value: str, low: int, high: int) -> int:
    # Digits only: int() would also take signs, spaces, underscores and non-ASCII digits.
    if not re.fullmatch(r"[0-9]{1,19}", value) or not low <= int(value) <= high:
        raise _invalid(where, f"metadata {key}", f"{_quoted(value)} is not a whole number from {low} to {high}")
    return int(value)


def _text(where: str, meta: dict[str, str], key: str, limit: int) -> str:
    value = meta.get(key, "")
    if len(value) > limit:
        raise _invalid(where, f"metadata {key}", f"has {len(value)} characters; at most {limit}")
    return value


def _pending_bytes(where: str, value: str) -> bytes:
    """The start of a UTF-8 character, exactly as the writer's incremental decoder held it."""
    if re.fullmatch(rf"(?:[0-9a-fA-F]{{2}}){{0,{MAX_PENDING_BYTES}}}", value):
        pending = bytes.fromhex(value)
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            if decoder.decode(pending) == "" and decoder.getstate()[0] == pending:
                return pending
        except UnicodeDecodeError:
            pass
    raise _invalid(where, "metadata pending_bytes_hex", f"{_quoted(value)} is not the hex of the start of a UTF-8 "
                   f"character")


def _sources(where: str, value: str) -> list[dict]:
    try:
        sources = json_loads(value)
    except ValueError:  # bad JSON, or brackets nested thousands deep
        sources = None
    if not isinstance(sources, list) or not all(_is_source(s) for s in sources):
        raise _invalid(where, "metadata sources", "is not a JSON list of {name, size, sha256}")
    return sources


def _is_source(source: object) -> bool:
    return (isinstance(source, dict) and set(source) == {"name", "size", "sha256"}
            and isinstance(source["name"], str)
            and type(source["size"]) is int and 0 <= source["size"] <= MAX_COUNT  # not a bool, not a float
            and isinstance(source["sha256"], str) and re.fullmatch(r"(?:[0-9a-f]{64})?", source["sha256"]) is not None)


def _quoted(value: object) -> str:
    return f"'{shown(value, 60)}'"


def _invalid(where: str, what: str, problem: str) -> UsageError:
    return UsageError(f"{where}: {what} {problem}")


def _corrupt(where: str, detail: str) -> UsageError:
    return UsageError(f"{where}: not a readable rmt memory file (corrupt or truncated?): {shown(detail)}")
