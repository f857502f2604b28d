"""Checkpoints: a folder a person can read and any tool can load, with no pickles anywhere.

    config.json, model.safetensors    the wrapped model, as `save_pretrained` writes it
    tokenizer.json, ...               its tokenizer
    memory.safetensors                the learned initial memory (and the gate; an encoder's classifier head)
    rmt.json                          memory settings, where the model came from, fingerprint; for an encoder
                                      "kind": "encoder" and its classifier's "answers"
    recipe.yaml                       the resolved recipe of the run that made it
    training_state.json               (training checkpoints) step, stage, RNG states
    optimizer.safetensors             (training checkpoints) optimizer tensors; hyper-parameters in the JSON;
                                      with memory.binding_supervision, the training-only binding head and its
                                      optimizer's tensors too (names starting "binding_head.")

Folders are written under a temporary name and renamed into place, so a kill never leaves half a checkpoint.
This module owns the folder format (writing, and reading it as untrusted input); beside it: `fingerprint` (what a
memory file depends on), `training_state` (optimizer and RNG state for an exact resume), `export` (a bf16 copy
for shipping) and `assets` (the models and text shipped in the package).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .. import __version__
from ..atomic import CHECKPOINT_INFO as RMT_JSON, atomic_folder, check_outside_checkpoints
from ..errors import RMTError, UsageError, error_line, json_object, path_argument, shown, write_failure
from ..core.memory import MemorySlots
from ..core.native_llama import NativeLlama, load_weights
from ..core.rules import has_gates, has_matrices, is_upgrade, upgrades_text
from ..data.sources import missing_reason
from .engine import NativeParts, native_parts, requested
from .modeling import check_fits, load_tokenizer, make_cell, model_class, no_pickles, with_needed_tokens
from .recipe import CODE_KEYS, MemorySpec, format_errors
from .fingerprint import fingerprint, tensors_digest
from .training_state import optimizer_tensors

MEMORY_FILE = "memory.safetensors"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A checkpoint as load_checkpoint (or default_model) gives it: what ingest, ask and perplexity take."""

    cell: MemorySlots  # a causal LM's MemoryCell, or an EncoderMemoryCell (cell.kind says which)
    tokenizer: object
    memory_settings: MemorySpec  # memory tokens, segment size, update rule
    info: dict  # rmt.json
    path: Path
    # What info["fingerprint"] was computed for (`model_signature`): see fingerprint_now
    signature: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def segment_size(self) -> int:
        return self.memory_settings.segment_size

    def fingerprint_now(self) -> str:
        """The fingerprint of the model as it is now. The one computed at load stands while no weight has been
        changed or replaced and the memory settings are the same; otherwise (the API lets a caller train or edit
        the model) it is computed anew, so that a memory file says which weights made it."""
        # an encoder's answers too: edited, they relabelled the memories of the model they were
        signature = model_signature(self.cell, self.memory_settings)
        if signature != self.signature or "fingerprint" not in self.info:
            self.info = {**self.info, "fingerprint": fingerprint(self.cell, self.tokenizer, self.memory_settings)}
            self.signature = signature
        return self.info["fingerprint"]

    @property
    def engine(self) -> str:
        """What runs the model: "native" (core.native_llama, see storage/engine.py) or "transformers"."""
        return getattr(self.cell.model, "engine", "transformers")


def model_signature(cell: MemorySlots, memory: MemorySpec) -> tuple:
    """What the fingerprint depends on that the API lets a caller change: the weights, the memory settings and an
    encoder's answers (edited, they relabelled the memories of the model they were)."""
    return weights_signature(cell), memory, tuple(getattr(cell, "answers", ()))


def weights_signature(cell: MemorySlots) -> tuple:
    """Changes when a tensor of the cell is changed in place (an optimizer step, an edit under no_grad: each bumps
    the tensor's version counter), given other storage (`param.data = …`, which bumps nothing) or replaced."""
    return tuple((name, id(t), t._version, t.data_ptr()) for name, t in cell.state_dict(keep_vars=True).items())


def memory_tensors(cell: MemorySlots) -> dict[str, torch.Tensor]:
    """What the cell adds to the wrapped model: the initial memory; for the gated rules, the gate; for the
    associative rules, the matrices' projections; for an encoder, its classifier head."""
    return {name: t.detach().cpu().contiguous() for name, t in cell.state_dict().items()
            if not name.startswith("model.")}


def cell_info(cell: MemorySlots) -> dict:
    """What rmt.json says about the cell's kind: nothing for a causal LM (as before encoders), else the kind and the
    classifier's answers, in the order of its logits."""
    return {"kind": cell.kind, "answers": list(cell.answers)} if cell.kind == "encoder" else {}


def save_checkpoint(path: str | Path, cell: MemorySlots, tokenizer, memory: MemorySpec, source: str,
                    recipe_yaml: str | None = None, training_state: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None,
                    extra_tensors: dict | None = None) -> Path:
    """`extra_tensors`: training state beside the optimizer's (training_state.module_tensors). `path` is replaced
    only where `replaceable_checkpoint` allows it (UsageError otherwise)."""
    final = Path(path_argument(path, "save_checkpoint"))
    _check_savable(final, cell, tokenizer, memory, source, recipe_yaml, extra)
    # The swap moves what is at `path` aside to `path`.old and removes both (atomic.atomic_folder): each must be
    # rmt's to remove (the thirteenth review: a folder of the user's there was deleted without a word).
    for folder in (final, final.with_name(final.name + ".old")):
        if not replaceable_checkpoint(folder):
            also = "" if folder == final else f", which writing {shown(final)} would remove"
            raise UsageError(f"{shown(folder)}: is not a checkpoint rmt wrote{also}; a checkpoint replaces only a "
                             f"new path, an empty folder or a checkpoint (remove it, or name another folder)")
    # It is filled in `path`.tmp, first cleared of what a killed write left there: only such a leftover.
    unfinished = final.with_name(final.name + ".tmp")
    if not is_unfinished_checkpoint(unfinished):
        raise UsageError(f"{shown(unfinished)}: holds what is not part of a checkpoint, and writing {shown(final)} "
                         f"would remove it (a checkpoint is written there first): remove it, or name another folder")
    try:
        _write_checkpoint(final, cell, tokenizer, memory, source, recipe_yaml, training_state, optimizer, extra,
                          extra_tensors)
    except (OSError, SafetensorError) as e:  # a full disk, a file size limit: one line (atomic_folder removed it)
        raise RMTError(f"{shown(final)}: cannot write the checkpoint: {write_failure(e)}") from None
    return final


# rmt.json's own keys, which `extra` may not replace
OWN_INFO_KEYS = ("format_version", "rmt_version", "memory", "source", "fingerprint", "kind", "answers")


def _check_savable(final: Path, cell: MemorySlots, tokenizer, memory: MemorySpec, source, recipe_yaml,
                   extra) -> None:
    """Nothing is written that load_checkpoint would refuse (the API can hand save_checkpoint anything): memory
    settings of the cell's memory size that fit its positions, a memory that is finite, an `extra` that leaves
    rmt.json's own keys alone, a recipe.yaml that a recipe loader reads. UsageError, "not written: …"."""
    def refuse(reason: str) -> UsageError:
        return UsageError(f"{shown(final)}: not written: {reason}")

    if not isinstance(memory, MemorySpec):
        raise refuse("memory settings are a MemorySpec")
    try:  # model_copy(update=...) and attribute edits skip validation: segment_size=-3 was written
        MemorySpec.model_validate(memory.model_dump())
    except ValidationError as e:
        raise refuse("; ".join(format_errors(e, "memory settings"))) from None
    # the settings rmt.json records are those the cell computes with (a gated cell saved as 'replace' was written)
    compared = ["num_mem_tokens", "update", *(["gate_floor"] if has_gates(memory.update) else []),
                *(["associative_key_size"] if has_matrices(memory.update) else [])]
    for name in compared:
        if getattr(memory, name) != getattr(cell, name, None):
            raise refuse(f"the memory settings say {name} {getattr(memory, name)!r}, the cell has "
                         f"{getattr(cell, name, None)!r}")
    if not hasattr(cell.model, "save_pretrained"):
        raise refuse("the native engine's model is for inference; load the checkpoint with engine=\"transformers\" "
                     "to save it")
    if not hasattr(tokenizer, "save_pretrained"):
        raise refuse(f"tokenizer: the model's transformers tokenizer, not {type(tokenizer).__name__}")
    try:
        check_fits(cell.model.config, memory, cell.kind)
    except UsageError as e:
        raise refuse(str(e)) from None
    if not all(_storable_memory(t) for t in memory_tensors(cell).values() if t.is_floating_point()):
        raise refuse(f"the cell's memory holds values that are not finite numbers or beyond ±{MAX_WEIGHT:g}")
    if not isinstance(source, str):
        raise refuse(f"source: a text saying where the model came from, not {type(source).__name__}")
    unusable = unusable_weight(cell.model)
    if unusable is not None:
        raise refuse(f"the model's weight {unusable}")
    if extra is not None and not isinstance(extra, dict):
        raise refuse(f"extra is a dict of rmt.json keys, not {type(extra).__name__}")
    taken = sorted(set(extra or {}) & set(OWN_INFO_KEYS))
    if taken:
        raise refuse(f"extra may not set rmt.json's own {', '.join(taken)}")
    try:  # strict JSON: NaN was written as NaN, which jq and JavaScript refuse
        json.dumps(extra or {}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise refuse(f"extra: {error_line(e)}") from None
    check_outside_checkpoints(final, "")  # a checkpoint inside another left the outer one no longer replaceable
    if recipe_yaml is not None:
        from .recipe import load_yaml

        try:
            ok = isinstance(recipe_yaml, str) and isinstance(load_yaml(recipe_yaml, "recipe_yaml"), dict)
        except UsageError as e:
            raise refuse(str(e)) from None
        if not ok:
            raise refuse("recipe_yaml is the text of a recipe (a YAML mapping)")


def is_rmt_checkpoint(folder: Path) -> bool:
    """A folder save_checkpoint wrote: its rmt.json, and no file a checkpoint does not have."""
    try:
        return folder.is_dir() and not folder.is_symlink() and (folder / RMT_JSON).is_file() and \
            all(f.name in CHECKPOINT_FILES for f in folder.iterdir())
    except OSError:  # a folder that may not be read is no checkpoint to replace
        return False


def is_unfinished_checkpoint(folder: Path) -> bool:
    """Nothing at `folder`, or what a write cut short by a kill leaves there (atomic.atomic_folder): a folder of
    checkpoint files only, which the next write may clear; never a link, a file or a folder of the user's."""
    try:
        return not os.path.lexists(folder) or (
            folder.is_dir() and not folder.is_symlink() and
            all(f.name in CHECKPOINT_FILES and not f.is_symlink() and f.is_file() for f in folder.iterdir()))
    except OSError:
        return False


def replaceable_checkpoint(folder: Path) -> bool:
    """Whether a checkpoint written to `folder` may replace what is there: nothing, an empty folder, or a checkpoint
    rmt wrote; never a file, a link or a folder of the user's."""
    try:
        return not os.path.lexists(folder) or is_rmt_checkpoint(folder) or \
            (folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()))
    except OSError:
        return False


# How a tokenizer was loaded (from_pretrained's options), which save_pretrained writes back as settings: a resumed
# run's checkpoints would differ from the uninterrupted run's, and `local_files_only` would follow the files around.
# A base model's `auto_map` too: its checkpoints would be refused by every command (the built-in class is used).
LOADING_OPTIONS = ("is_local", "local_files_only", *CODE_KEYS)  # and a base model's auto_map: rmt runs no code


def _drop_loading_options(config_path: Path) -> None:
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config, dict) and any(key in config for key in LOADING_OPTIONS):
        kept = {key: value for key, value in config.items() if key not in LOADING_OPTIONS}
        config_path.write_text(json.dumps(kept, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_checkpoint(final: Path, cell: MemorySlots, tokenizer, memory: MemorySpec, source: str,
                      recipe_yaml: str | None, training_state: dict | None,
                      optimizer: torch.optim.Optimizer | None, extra: dict | None,
                      extra_tensors: dict | None = None) -> None:
    with atomic_folder(final) as tmp, no_library_bars():  # "Writing model shards" says nothing rmt's output does not
        cell.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _drop_loading_options(tmp / "tokenizer_config.json")
        save_file(memory_tensors(cell), str(tmp / MEMORY_FILE))
        info = {
            "format_version": FORMAT_VERSION,
            "rmt_version": __version__,
            "memory": memory.model_dump(),
            "source": source,
            "fingerprint": fingerprint(cell, tokenizer, memory),
            **cell_info(cell),
            **(extra or {}),
        }
        (tmp / RMT_JSON).write_text(json.dumps(info, indent=2) + "\n")
        if recipe_yaml is not None:
            (tmp / "recipe.yaml").write_text(recipe_yaml)
        if training_state is not None:
            tensors, state_json = optimizer_tensors(optimizer) if optimizer is not None else ({}, None)
            tensors["torch_rng"] = torch.get_rng_state()
            tensors.update(extra_tensors or {})
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            # The tensors' digest beside them: an edit of the optimizer state that its checks cannot see (a
            # parameter's state removed, a step count lowered) would make a resume unlike the uninterrupted run.
            # And the model's fingerprint: the state pairs with these weights (a pair swapped in from another
            # checkpoint, optimizer state and step with it, resumed unlike either run).
            state = {**training_state, "optimizer": state_json, "optimizer_sha256": tensors_digest(tensors),
                     "fingerprint": info["fingerprint"]}
            (tmp / "training_state.json").write_text(json.dumps(state, indent=2))


# A checkpoint folder is untrusted input: each check below turns one way a folder can be broken or crafted into one
# line naming the file and what is wrong, before the folder's contents reach transformers (which may prompt, run code,
# re-initialise weights quietly, or fail with a traceback).

# What the tokenizer loader can build a vocabulary from: the fast tokenizer rmt writes, or a slow one's files.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
MIN_VOCAB = 64  # the smallest vocabulary a recipe can train; a one-entry tokenizer reads any text as nothing
# The files of a checkpoint that rmt or transformers read, where present: each must be a regular file (or a link to
# one). A FIFO in their place would hang the reader, a device such as /dev/zero be read for ever, and transformers
# skips a tokenizer_config.json that is not a regular file without a word (another tokenizer set-up).
CHECKPOINT_FILES = (RMT_JSON, MEMORY_FILE, CONFIG_FILE, MODEL_FILE, *TOKENIZER_FILES, "merges.txt",
                    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                    "generation_config.json", "processor_config.json", "recipe.yaml", "training_state.json",
                    "optimizer.safetensors")
MAX_JSON_BYTES = 16 * 2**20  # far above any real config; a bigger file is a flood, not a setting
PROBLEMS_SHOWN = 5  # a one-line error names this many problems and counts the rest
# The memory settings a model was trained with: a recipe's defaults are no stand-in for them. (`update` may be
# absent: checkpoints from before the gated rule are replace-rule checkpoints.)
STORED_MEMORY_KEYS = ("num_mem_tokens", "segment_size")


MAX_ANSWERS = 10_000  # a classifier over more answers than this is a crafted file, not a task
MAX_ANSWER_CHARS = 200
MAX_WEIGHT = torch.finfo(torch.float16).max
NORM_EPSILONS = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps")


class CheckpointInfo(BaseModel):
    """rmt.json as read back, in the JSON types rmt writes (validated strictly). Other keys are kept."""

    model_config = ConfigDict(extra="allow")
    format_version: int
    memory: MemorySpec
    source: str | None = None
    fingerprint: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")  # what fingerprint() computes
    rmt_version: str | None = None
    kind: Literal["causal", "encoder"] = "causal"  # absent in checkpoints from before encoders: causal
    answers: list[Annotated[str, Field(min_length=1, max_length=MAX_ANSWER_CHARS)]] | None = \
        Field(None, min_length=1, max_length=MAX_ANSWERS)

    @model_validator(mode="after")
    def _answers_match_kind(self):
        if self.kind == "encoder" and self.answers is None:
            raise ValueError("answers: missing (an encoder's classifier needs its answer set)")
        if self.kind == "causal" and self.answers is not None:
            raise ValueError("answers: only an encoder has a classifier (kind is causal)")
        if self.answers is not None and len(set(self.answers)) != len(self.answers):
            raise ValueError("answers: an answer is listed twice")
        return self


def _where(path: Path) -> str:
    return f"checkpoint {shown(path, 300)}"


def _problems_line(where: str, problems: list[str], after: str = "") -> UsageError:
    more = f"; and {len(problems) - PROBLEMS_SHOWN} more" if len(problems) > PROBLEMS_SHOWN else ""
    return UsageError(f"{where}: {'; '.join(shown(p) for p in problems[:PROBLEMS_SHOWN])}{more}{after}")


def _read_json_object(path: Path, name: str) -> dict:
    """A JSON file of the folder that must hold an object, or one line saying why it does not."""
    file, where = path / name, _where(path)
    try:
        with open(file, "rb") as f:  # read_info checked it is a regular file; at most the cap, whatever it is
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise UsageError(f"{where}: {name} cannot be read: {shown(e.strerror or e)}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise UsageError(f"{where}: {name} is larger than {MAX_JSON_BYTES // 2**20} MiB")
    return json_object(raw, where, name)


def _check_files_are_regular(path: Path) -> None:
    """Each file of CHECKPOINT_FILES the folder holds is a regular file (or a link to one)."""
    for name in CHECKPOINT_FILES:
        file = path / name
        if not os.path.lexists(file) or file.is_file():
            continue
        reason = ("is a folder, not a file" if file.is_dir() else
                  "is not a regular file (a device, a FIFO or a socket)" if file.exists() else
                  missing_reason(file, "file"))  # a broken or looping link
        raise UsageError(f"{_where(path)}: {name}: {reason}")


def read_info(path: str | Path) -> dict:
    """rmt.json, validated: the folder has the files of a checkpoint, and the memory settings are complete."""
    path = Path(path)
    where = _where(path)
    try:
        exists = path.exists()
    except OSError as e:  # a name too long: bad input, as a missing folder is
        raise UsageError(f"{where}: {e.strerror or e}") from None
    if not exists:
        raise UsageError(f"{where}: {missing_reason(path, 'folder')}")
    if not path.is_dir():
        raise UsageError(f"{where}: not a folder (a checkpoint is a folder with {RMT_JSON})")
    if not str(path).isascii():
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 in a name (Python holds them as surrogates)
            raise UsageError(f"{where}: the folder's path is not UTF-8; the libraries that read a model (safetensors, "
                             f"tokenizers) take UTF-8 paths only: rename the folder, or link to it from a UTF-8 "
                             f"name") from None
    _check_files_are_regular(path)
    missing = [f for f in (RMT_JSON, MEMORY_FILE, CONFIG_FILE, MODEL_FILE) if not (path / f).is_file()]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)} (was it written by rmt train?)")
    info = _read_json_object(path, RMT_JSON)
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise UsageError(f"{where}: format version {shown(repr(version), 40)}, this rmt reads {FORMAT_VERSION}")
    memory = info.get("memory")
    problems = [f"{RMT_JSON}: memory.{key}: missing" for key in STORED_MEMORY_KEYS
                if isinstance(memory, dict) and key not in memory]
    try:
        CheckpointInfo.model_validate(info, strict=True)
    except ValidationError as e:
        problems += format_errors(e, RMT_JSON)
    if problems:
        raise _problems_line(where, problems)
    return info


# The memory settings that make the model what it is: rmt.json holds them as saved.
DEFINING_MEMORY_KEYS = ("num_mem_tokens", "segment_size", "update", "gate_floor", "associative_key_size")


def recipe_disagreements(path: str | Path, recipe: dict) -> list[str]:
    """Where a checkpoint's recipe.yaml (`recipe`: validated, in its JSON form) describes another model than the
    folder's rmt.json and config.json hold: an edited or copied recipe.yaml would otherwise be continued by
    `rmt extend` (which takes its model and memory settings) or compared with on resume, and the next checkpoint
    would record a model that is not the one saved."""
    path = Path(path)
    info = read_info(path)
    problems = []
    stored = MemorySpec(**info["memory"]).model_dump(mode="json")
    said = recipe.get("memory") or {}
    for key in DEFINING_MEMORY_KEYS:
        if key in said and said[key] != stored.get(key):
            problems.append(f"memory.{key} {said[key]!r}, {RMT_JSON} {stored.get(key)!r}")
    model = recipe.get("model") or {}
    if model.get("kind", "causal") != info.get("kind", "causal"):
        problems.append(f"model.kind {model.get('kind')!r}, {RMT_JSON} {info.get('kind', 'causal')!r}")
    config = _read_json_object(path, CONFIG_FILE)
    if model.get("name_or_path") is None and model.get("architecture") not in (None, config.get("model_type")):
        problems.append(f"model.architecture {model['architecture']!r}, {CONFIG_FILE} model_type "
                        f"{config.get('model_type')!r}")
    for key, value in (model.get("config") or {}).items():
        # Plain values only: transformers may store a nested setting in a form of its own.
        if isinstance(value, (bool, int, float, str)) and key in config and config[key] != value:
            problems.append(f"model.config.{key} {value!r}, {CONFIG_FILE} {config[key]!r}")
    return problems


def check_recipe_matches(path: str | Path, recipe: dict) -> None:
    """`recipe_disagreements` as one line: the folder's files disagree."""
    problems = recipe_disagreements(path, recipe)
    if problems:
        raise _problems_line(f"{_where(Path(path))}: recipe.yaml says", problems,
                             ": the folder's files disagree (was recipe.yaml edited, or copied from another run?); "
                             "the model is what rmt.json and config.json describe")


def refuse_remote_code(path: Path) -> None:
    """A checkpoint is data: refuse one whose configs ask to run code shipped with it (never prompt)."""
    for name in (CONFIG_FILE, "tokenizer_config.json", "generation_config.json", "processor_config.json"):
        if not (path / name).is_file():
            continue
        if any(key in _read_json_object(path, name) for key in CODE_KEYS):
            raise UsageError(f"{_where(path)}: {name} asks to run Python code shipped with the checkpoint "
                             f"(auto_map); rmt never runs code from a checkpoint")


def read_config(path: Path):
    """config.json as transformers reads it, for an architecture this transformers knows."""
    import transformers
    from transformers import CONFIG_MAPPING, AutoConfig

    where = _where(path)
    config = _read_json_object(path, CONFIG_FILE)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise UsageError(f"{where}: {CONFIG_FILE}: model_type {shown(repr(model_type), 60)} is not an architecture "
                         f"transformers {transformers.__version__} knows")
    for key in ("dtype", "torch_dtype"):  # transformers' own words were "module 'torch' has no attribute 'bogus'"
        name = config.get(key)
        if name is not None and not (name == "auto" or isinstance(name, str) and
                                     isinstance(getattr(torch, name, None), torch.dtype)):
            raise UsageError(f"{where}: {CONFIG_FILE}: {key} {shown(repr(name), 60)} is not a torch dtype (such as "
                             f"float32 or bfloat16)")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # a crafted value fails in transformers' own ways (IndexError, ZeroDivisionError, ...)
        raise UsageError(f"{where}: {CONFIG_FILE}: {_config_failure(e).removeprefix('config.json ')}") from None


def _unreadable(path: Path, name: str, error: Exception) -> UsageError:
    return UsageError(f"{_where(path)}: {name} is unreadable (truncated, or not a safetensors file): "
                      f"{error_line(error)}")


def _cannot_build(path: Path, error: Exception) -> UsageError:
    # An untrusted config.json can fail in any of transformers' own ways (ValueError, ZeroDivisionError, ...)
    return UsageError(f"{_where(path)}: cannot load the model: {_config_failure(error)}")


def _config_failure(error: Exception) -> str:
    """Why transformers failed on a config.json, on one line; the two errors that say least given the likely
    reason."""
    why = error_line(error)
    if isinstance(error, KeyError):  # `activation_function: bogus` failed as "'bogus'"
        return f"config.json holds {why}, a name transformers has no entry for"
    if isinstance(error, ZeroDivisionError):  # `n_head: 0`
        return f"{why} (a size or count of 0 in config.json?)"
    return why


# safetensors' names of the floating-point dtypes that torch reads (weights are loaded as float32 from any of them)
FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def _stored_shapes(path: Path) -> dict[str, list[int]]:
    """The shape of each tensor model.safetensors holds, from its header alone (which safetensors checks against
    the file's length, so a truncated or corrupt file stops here); each tensor floating point: integer or bool
    weights load as numbers that answer nothing, complex ones with PyTorch's warning (the thirteenth review)."""
    try:
        with safe_open(str(path / MODEL_FILE), framework="pt") as weights:
            slices = {name: weights.get_slice(name) for name in weights.keys()}
            kinds = {name: tensor.get_dtype() for name, tensor in slices.items()}
            shapes = {name: tensor.get_shape() for name, tensor in slices.items()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise _unreadable(path, MODEL_FILE, e) from None
    other = next((name for name in sorted(kinds) if kinds[name] not in FLOATING), None)
    if other is not None:
        raise UsageError(f"{_where(path)}: {MODEL_FILE}: {shown(other)} holds {kinds[other]} values; a model's "
                         f"weights are floating point (F32, BF16, F16, ...)")
    return shapes


def saved_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's weights are saved in, as inference should run it when not told otherwise:
    bfloat16 where every floating weight is (an exported, shipped model such as the embedded one), else float32
    (a training run's checkpoint, and the reference path). An unreadable file reads as float32 here: loading it
    reports what is wrong."""
    try:
        with safe_open(str(Path(path) / MODEL_FILE), framework="pt") as weights:
            kinds = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    except Exception:  # safetensors' own error types; load_checkpoint says what is wrong
        return torch.float32
    floating = kinds & FLOATING
    return torch.bfloat16 if floating == {"BF16"} else torch.float32


def _load_model(path: Path, config, kind: str, native: bool = False):
    """The wrapped model with every weight from model.safetensors, in the shapes config.json gives: transformers
    would re-initialise missing or mismatched weights, and skip unexpected ones, with a warning at most.
    `native`: the native engine's model (config is its LlamaSettings)."""
    where = _where(path)
    shapes = _stored_shapes(path)
    tensors, stored = len(shapes), sum(math.prod(shape) for shape in shapes.values())
    # Even a weightless (meta) model is built layer by layer and expert by expert, each with at least one tensor in
    # the file: a config naming more of them than the file has tensors would keep the builder busy for ever.
    for key, value in config.to_dict().items():
        counts = key.startswith(("num_", "n_")) and ("layer" in key or "expert" in key)  # n_layer, num_experts, ...
        if counts and type(value) is int and value > tensors:
            raise UsageError(f"{where}: {CONFIG_FILE}: {shown(key)} is {value:,}, but {MODEL_FILE} holds only "
                             f"{tensors} tensors")
    build = NativeLlama if native else model_class(kind).from_config  # a causal LM with its head, or an encoder
    try:
        with torch.device("meta"):  # counts the weights without allocating them
            needed = sum(p.numel() for p in build(config).parameters())
    except Exception as e:
        raise _cannot_build(path, e) from None
    # Loading allocates (and initialises) whatever the file lacks, however large: refuse a config describing far
    # more weights than the file holds before that; a few missing weights are named by the report below.
    if needed > 2 * stored:
        raise UsageError(f"{where}: {CONFIG_FILE} describes a model of {needed:,} weights; {MODEL_FILE} holds "
                         f"{stored:,}")
    try:
        if native:
            model = NativeLlama(config)
            report = load_weights(model, load_file(str(path / MODEL_FILE)))
        else:
            with no_pickles(where), no_library_bars():  # the commands show none either
                model, report = model_class(kind).from_pretrained(
                    path, config=config, use_safetensors=True, dtype=torch.float32, trust_remote_code=False,
                    output_loading_info=True, ignore_mismatched_sizes=True)
    except UsageError:
        raise
    except Exception as e:
        raise _cannot_build(path, e) from None
    # Tied weights (an LM head sharing the embedding) are absent from the file by design; transformers does not
    # count them as missing.
    problems = [*(f"{name} is missing" for name in sorted(report["missing_keys"])),
                *(f"{name} is of shape {tuple(in_file)} in the file, {tuple(in_model)} in the model"
                  for name, in_file, in_model in sorted(report["mismatched_keys"])),
                *(f"{name} is not a weight of this model" for name in sorted(report["unexpected_keys"]))]
    if problems:
        raise _problems_line(where, [f"{MODEL_FILE} does not fit {CONFIG_FILE}: {problems[0]}", *problems[1:]])
    _check_tied_head(where, model, config)
    unusable = unusable_weight(model)
    if unusable is not None:
        raise UsageError(f"{where}: {MODEL_FILE}: {unusable}")
    for name in NORM_EPSILONS:  # rms_norm_eps 1e300 made every hidden state 0 (NaN is C27's: a run-time failure)
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and (value < 0 or value > 1):
            raise UsageError(f"{where}: {CONFIG_FILE}: {name} {value:g}; a norm's epsilon is a small number from "
                             f"0 to 1")
    return model


def _storable_memory(tensor: torch.Tensor) -> bool:
    """Finite, and within float16's range (MAX_WEIGHT), as a checkpoint's memory tensors must be."""
    return bool((tensor.float().abs() <= MAX_WEIGHT).all())  # NaN compares false


def unusable_weight(model) -> str | None:
    """"NAME holds …" for the first weight no model can run with, or None: values that are not finite, or finite
    but absurd (a weight of 1e30 made every answer "" with exit 0). Trained weights are far inside float16's range,
    which a model run in float16 needs anyway."""
    broken = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if broken is not None:
        return f"{shown(broken)} holds values that are not finite numbers"
    huge = next((name for name, p in model.named_parameters() if not (p.float().abs() <= MAX_WEIGHT).all()), None)
    if huge is not None:
        return f"{shown(huge)} holds values beyond ±{MAX_WEIGHT:g}, which no trained weight reaches"
    return None


def _check_tied_head(where: str, model, config) -> None:
    """A config that ties the LM head to the embedding, over a file holding a head of other values: transformers
    then leaves the two apart with a warning, and the model answered "" with exit 0 (the twenty-third review).
    A head equal to the embedding is tied as usual."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embedding is None or not getattr(config, "tie_word_embeddings", False):
        return
    if head.weight is not embedding.weight:
        raise UsageError(f"{where}: {MODEL_FILE} holds an LM head with values of its own, but {CONFIG_FILE} ties it "
                         f"to the embedding (tie_word_embeddings: true); set it false to use that head")


def _load_tokenizer(path: Path, model, encoder: bool, native=None):
    """The folder's own tokenizer (`native`: the native engine's, read already), with ids that the model's
    embedding can look up."""
    where = _where(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build a tokenizer with an empty vocabulary, which reads any text as nothing.
        raise UsageError(f"{where}: no tokenizer (expected tokenizer.json, or the tokenizer.model, vocab.json and "
                         f"merges.txt, or vocab.txt of a slow tokenizer)")
    tokenizer = with_needed_tokens(native, str(path)) if native is not None else \
        load_tokenizer(str(path), trust_remote_code=False, encoder=encoder)
    ids = tokenizer.get_vocab().values()
    if len(ids) < MIN_VOCAB:
        raise UsageError(f"{where}: the tokenizer has {len(ids)} entries; a real one has at least {MIN_VOCAB}")
    rows = model.get_input_embeddings().num_embeddings
    if max(ids) >= rows:
        beyond = sorted((i, token) for token, i in tokenizer.get_vocab().items() if i >= rows)
        named = ", ".join(shown(repr(token), 40) for _, token in beyond[:3]) + (" …" if len(beyond) > 3 else "")
        raise UsageError(f"{where}: the tokenizer has ids up to {max(ids)}, but the model's embedding has {rows} "
                         f"rows (ids from {rows} up could not be looked up: {named}; a special token that "
                         f"tokenizer_config.json names and tokenizer.json lacks is added past the vocabulary)")
    return tokenizer


def _load_memory(path: Path, cell: MemorySlots, memory: MemorySpec, fresh: tuple[str, ...] = ()) -> None:
    """The learned initial memory (and gate, and an encoder's head) from memory.safetensors, each tensor present
    and of its shape. `memory`: the checkpoint's own settings. `fresh`: prefixes of the cell's tensors that the
    checkpoint does not hold and that keep their fresh values (the matrices' projections of an upgrade)."""
    where = _where(path)
    try:
        saved = load_file(str(path / MEMORY_FILE))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise _unreadable(path, MEMORY_FILE, e) from None
    expected = {name: t for name, t in memory_tensors(cell).items() if not name.startswith(fresh)}
    rule = f"memory update rule {memory.update!r}" + (" of an encoder" if cell.kind == "encoder" else "")
    missing = sorted(set(expected) - set(saved))
    if missing:
        raise UsageError(f"{where}: {MEMORY_FILE} lacks {', '.join(missing)} ({rule})")
    # A tensor the rule does not use means rmt.json and the memory file disagree (a gated model read as replace).
    unused = sorted(set(saved) - set(expected))
    if unused:
        raise UsageError(f"{where}: {MEMORY_FILE} holds {shown(', '.join(unused))}, which the {rule} does not use")
    for name, tensor in expected.items():
        if saved[name].shape != tensor.shape:
            raise UsageError(f"{where}: {name} of shape {tuple(saved[name].shape)}, expected {tuple(tensor.shape)}")
        if not saved[name].is_floating_point():  # as for the model's weights (`_stored_shapes`)
            raise UsageError(f"{where}: {MEMORY_FILE}: {name} holds {str(saved[name].dtype).removeprefix('torch.')} "
                             f"values; the memory's tensors are floating point")
        # Finite, and within what a memory file may hold (float16's range): an initial memory of 1e30 loaded,
        # and every ingest then failed blaming the config
        if not _storable_memory(saved[name]):
            raise UsageError(f"{where}: {MEMORY_FILE}: {name} holds values that are not finite numbers or beyond "
                             f"±{MAX_WEIGHT:g}")
    with torch.no_grad():
        for name, param in cell.named_parameters():
            if name in expected:
                param.copy_(saved[name])


def _native_parts(path: Path, info: dict, engine: str) -> NativeParts | None:
    """The native engine's parts where it runs the checkpoint (storage/engine.py), else None: transformers runs
    it. Asked for by name (engine or RMT_ENGINE "native"), a checkpoint that does not qualify is an error."""
    engine = requested(engine)
    if engine == "transformers":
        return None
    tokenizer_config = "tokenizer_config.json"
    parts = native_parts(path, info, _read_json_object(path, CONFIG_FILE),
                         _read_json_object(path, tokenizer_config) if (path / tokenizer_config).is_file() else None,
                         lambda: _stored_shapes(path))
    if isinstance(parts, NativeParts):
        return parts
    if engine == "native":
        raise UsageError(f"{_where(path)}: the native engine was asked for, and cannot run it: {shown(parts)}")
    return None


def upgraded_memory(stored: MemorySpec, wanted: MemorySpec | None, where: str) -> MemorySpec:
    """The memory settings to load a checkpoint of `stored` settings under, for a run that wants `wanted`: the
    checkpoint's own, or where `wanted` upgrades its rule (rules.UPGRADES: the same rule plus fresh associative
    matrices, which compute the same), the checkpoint's with the new rule and the key size of its matrices."""
    if wanted is None or wanted.update == stored.update:
        return stored
    if not is_upgrade(stored.update, wanted.update):
        raise UsageError(f"{where}: memory.update: the checkpoint has {stored.update!r}, the run asks "
                         f"{wanted.update!r}; a trained model keeps its rule, but for the upgrades that add "
                         f"associative matrices ({upgrades_text()})")
    return stored.model_copy(update={"update": wanted.update, "associative_key_size": wanted.associative_key_size})


def _checked_placement(dtype, device) -> tuple[torch.dtype | None, torch.device]:
    """load_checkpoint's dtype and device, refused in one line where no model can run so: a dtype that is not a
    floating-point torch dtype, a device torch does not know, the meta device (shapes only), CUDA without one."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise UsageError(f"dtype {shown(repr(dtype), 40)}: a floating-point torch dtype (torch.float32, "
                         f"torch.bfloat16, torch.float16), or None for the default")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"device {shown(repr(device), 60)}: {error_line(e)}") from None
    if device.type == "meta":
        raise UsageError("device meta holds shapes, not numbers: a model there cannot read anything")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device}: this torch sees no CUDA GPU")
    return dtype, device


def check_usable(model: LoadedModel, argument: str = "model") -> None:
    """What ingest, ask and perplexity need of a model the API hands them (it may have been changed since it was
    loaded): a LoadedModel whose segment and memory fit the model's positions. UsageError naming what does not
    (`argument`: the parameter that gave it)."""
    if not isinstance(model, LoadedModel):
        raise UsageError(f"{argument}: a LoadedModel (load_checkpoint, default_model) is needed, not "
                         f"{type(model).__name__}")
    if not isinstance(model.memory_settings, MemorySpec):
        raise UsageError("the model's memory_settings are not memory settings (a MemorySpec)")
    check_fits(model.cell.model.config, model.memory_settings, model.cell.kind)
    head = getattr(model.cell, "head", None)
    if model.cell.kind == "encoder" and head is not None and len(model.cell.answers) != head.out_features:
        raise UsageError(f"the encoder's answers: {len(model.cell.answers)} names for the {head.out_features} its "
                         f"classifier scores")


@contextlib.contextmanager
def no_library_bars():
    """transformers' own bars ("Loading weights", "Writing model shards") off, and back as they were after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def in_eval_mode(function):
    """`function`, run with the cells of the LoadedModels among its arguments in eval mode (dropout off), as the
    commands run them, and each left in the mode it was in: a model left in training mode gave answers and memory
    files that changed from call to call, under the fingerprint of the model that gives one."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        cells = [a.cell for a in (*args, *kwargs.values()) if isinstance(a, LoadedModel)]
        modes = [cell.training for cell in cells]
        for cell in cells:
            cell.eval()
        try:
            return function(*args, **kwargs)
        finally:
            for cell, training in zip(cells, modes):
                cell.train(training)
    return run


def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    engine: str = "transformers", upgrade: MemorySpec | None = None) -> LoadedModel:
    """Load a checkpoint folder for training, ingesting or asking (safetensors only).

    Loads completely or raises UsageError with one line: never a traceback, never a silent fallback to weights
    it did not read. The fingerprint is computed from the weights as loaded (float32), not trusted from rmt.json.

    `engine`: "transformers" (a transformers model, which can be trained and saved), "auto" (inference only: the
    native engine where the checkpoint qualifies, RMT_ENGINE deciding when set; see storage/engine.py) or
    "native" (an error where it does not qualify).

    `dtype` None: float32 on "transformers" (training); for inference ("auto", "native"), the dtype the weights are
    saved in, as the commands load them (so that memory files and perplexities are theirs).

    `upgrade` (rmt extend): memory settings whose rule may upgrade the checkpoint's (`upgraded_memory`); the
    upgraded cell gets everything the checkpoint holds and fresh associative projections (seeded, read scale 0), and
    `memory_settings` are the upgraded ones. An upgrade always runs on transformers (training does).
    """
    dtype, device = _checked_placement(dtype, device)
    path = Path(path_argument(path, "load_checkpoint"))
    if upgrade is not None and not isinstance(upgrade, MemorySpec):
        raise UsageError(f"upgrade: memory settings (a MemorySpec) or None, not {type(upgrade).__name__}")
    info = read_info(path)  # its files checked regular first: reading a FIFO would wait for ever
    if dtype is None and engine != "transformers":
        dtype = saved_dtype(path)
    stored = MemorySpec(**info["memory"])
    memory = upgraded_memory(stored, upgrade, _where(path))
    refuse_remote_code(path)
    native = _native_parts(path, info, "transformers" if memory != stored else engine)
    config = native.settings if native else read_config(path)
    kind = info.get("kind", "causal")
    try:
        check_fits(config, memory, kind)
    except UsageError as e:
        raise UsageError(f"{_where(path)}: {RMT_JSON}: {e}") from None
    model = _load_model(path, config, kind, native is not None)
    tokenizer = _load_tokenizer(path, model, kind == "encoder", native and native.tokenizer)
    cell = make_cell(model, tokenizer, memory, info.get("answers") if kind == "encoder" else None)
    # What an upgrade adds (the matrices' projections) is not in the checkpoint: it starts fresh.
    added = ("associative.",) if has_matrices(memory.update) and not has_matrices(stored.update) else ()
    _load_memory(path, cell, stored, added)
    if memory != stored:
        info = {**info, "memory": memory.model_dump()}
    info = {**info, "fingerprint": fingerprint(cell, tokenizer, memory)}
    cell.to(device=device, dtype=dtype or torch.float32)
    cell.eval()
    return LoadedModel(cell, tokenizer, memory, info, path, model_signature(cell, memory))
