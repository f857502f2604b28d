"""Checkpoints: a folder a person can read and any tool can load, with no pickles anywhere.

    config.json, model.safetensors    the wrapped model, as `save_pretrained` writes it
    tokenizer.json, ...               its tokenizer
    memory.safetensors                the learned initial memory
    rmt.json                          memory settings, where the model came from, fingerprint
    recipe.yaml                       the resolved recipe of the run that made it
    training_state.json               (training checkpoints) step, stage, RNG states
    optimizer.safetensors             (training checkpoints) optimizer tensors; hyper-parameters in the JSON

Folders are written under a temporary name and renamed into place, so a kill never leaves half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .atomic import atomic_folder
from .errors import UsageError
from .memory import MemoryCell
from .recipe import MemorySpec, load_yaml

RMT_JSON = "rmt.json"
MEMORY_FILE = "memory.safetensors"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    cell: MemoryCell
    tokenizer: object
    memory: MemorySpec
    info: dict  # rmt.json
    path: Path

    @property
    def segment_size(self) -> int:
        return self.memory.segment_size


def fingerprint(cell: MemoryCell, tokenizer, memory: MemorySpec) -> str:
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
    h.update(json.dumps(settings).encode())
    return h.hexdigest()[:32]


def memory_tensors(cell: MemoryCell) -> dict[str, torch.Tensor]:
    """What the cell adds to the wrapped model: the initial memory and, for the gated rule, the gate."""
    return {name: t.detach().cpu().contiguous() for name, t in cell.state_dict().items()
            if not name.startswith("model.")}


def save_checkpoint(path: str | Path, cell: MemoryCell, tokenizer, memory: MemorySpec, source: str,
                    recipe_yaml: str | None = None, training_state: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None) -> Path:
    final = Path(path)
    with atomic_folder(final) as tmp:
        cell.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_file(memory_tensors(cell), str(tmp / MEMORY_FILE))
        info = {
            "format_version": FORMAT_VERSION,
            "rmt_version": __version__,
            "memory": memory.model_dump(),
            "source": source,
            "fingerprint": fingerprint(cell, tokenizer, memory),
            **(extra or {}),
        }
        (tmp / RMT_JSON).write_text(json.dumps(info, indent=2) + "\n")
        if recipe_yaml is not None:
            (tmp / "recipe.yaml").write_text(recipe_yaml)
        if training_state is not None:
            tensors, state_json = _optimizer_tensors(optimizer) if optimizer is not None else ({}, None)
            tensors["torch_rng"] = torch.get_rng_state()
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "training_state.json").write_text(json.dumps({**training_state, "optimizer": state_json}, indent=2))
    return final


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors = {}
    scalars: dict = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(path: Path, optimizer) -> None:
    info = json.loads((path / "training_state.json").read_text())["optimizer"]
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in info["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    torch.set_rng_state(tensors["torch_rng"])


def read_info(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint {path}: no such folder")
    if not path.is_dir():
        raise UsageError(f"checkpoint {path}: not a folder (a checkpoint is a folder with {RMT_JSON})")
    missing = [f for f in (RMT_JSON, MEMORY_FILE, "config.json", "model.safetensors") if not (path / f).is_file()]
    if missing:
        raise UsageError(f"checkpoint {path}: missing {', '.join(missing)} (was it written by rmt train?)")
    try:
        info = json.loads((path / RMT_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"checkpoint {path}: {RMT_JSON} is not valid JSON: {e}") from None
    if info.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"checkpoint {path}: format version {info.get('format_version')!r}, this rmt reads "
                         f"{FORMAT_VERSION}")
    return info


CODE_KEYS = ("auto_map",)  # config keys that make transformers import Python files shipped beside the weights


def refuse_remote_code(path: Path) -> None:
    """A checkpoint is data: refuse one whose configs ask to run code shipped with it (never prompt)."""
    for name in ("config.json", "tokenizer_config.json", "generation_config.json", "processor_config.json"):
        f = path / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise UsageError(f"checkpoint {path}: {name} is not valid JSON ({type(e).__name__})") from None
        if isinstance(data, dict) and any(key in data for key in CODE_KEYS):
            raise UsageError(f"checkpoint {path}: {name} asks to run Python code shipped with the checkpoint "
                             f"(auto_map); rmt never runs code from a checkpoint")


def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint folder for training, ingesting or asking (safetensors only).

    The fingerprint is computed from the weights as loaded (float32), not trusted from rmt.json.
    """
    from transformers import AutoModelForCausalLM

    from .modeling import load_tokenizer

    path = Path(path)
    info = read_info(path)
    memory = MemorySpec(**info["memory"])
    refuse_remote_code(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=torch.float32,
                                                     trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"checkpoint {path}: cannot load the model: {str(e).splitlines()[0]}") from None
    tokenizer = load_tokenizer(str(path), trust_remote_code=False)
    cell = MemoryCell(model, memory.num_mem_tokens, memory.update, memory.gate_floor)
    try:
        saved = load_file(str(path / MEMORY_FILE))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UsageError(f"checkpoint {path}: {MEMORY_FILE} is unreadable: {e}") from None
    expected = memory_tensors(cell)
    missing = sorted(set(expected) - set(saved))
    if missing:
        raise UsageError(f"checkpoint {path}: {MEMORY_FILE} lacks {', '.join(missing)} "
                         f"(memory update rule {memory.update!r})")
    for name, tensor in expected.items():
        if saved[name].shape != tensor.shape:
            what = "memory" if name == "memory" else name
            raise UsageError(f"checkpoint {path}: {what} of shape {tuple(saved[name].shape)}, expected "
                             f"{tuple(tensor.shape)}")
    with torch.no_grad():
        for name, param in cell.named_parameters():
            if name in expected:
                param.copy_(saved[name])
    info = {**info, "fingerprint": fingerprint(cell, tokenizer, memory)}
    cell.to(device=device, dtype=dtype or torch.float32)
    cell.eval()
    return LoadedModel(cell, tokenizer, memory, info, path)


ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default-model"  # answers questions (ingest / ask)
DEFAULT_LM_DIR = ASSETS / "lm-default"  # a language-model RMT (perplexity)
DEFAULT_NOISE_TEXT = ASSETS / "texts" / "blake-poems.txt"  # public-domain text for `rmt eval` without --noise


def resolve_model_path(model: str | Path | None, hint: str = "", default: Path = DEFAULT_MODEL_DIR) -> Path:
    """--model, else the default model shipped in the package, else a clear error."""
    if model:
        return Path(model)
    if (default / RMT_JSON).is_file():
        return default
    extra = f" (the memory file was made with {hint})" if hint else ""
    raise UsageError(f"no model: pass --model CHECKPOINT, a folder written by rmt train{extra}")


def export_checkpoint(source: str | Path, destination: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A checkpoint for shipping: weights in `dtype`, no optimizer or training state, the same fingerprint.

    The fingerprint of a bf16 export is computed from its own weights (as loaded in float32), so memory files
    made with the exported model are checked against the exported model.
    """
    loaded = load_checkpoint(source)
    recipe = (loaded.path / "recipe.yaml").read_text() if (loaded.path / "recipe.yaml").is_file() else None
    if recipe is not None:  # a shipped file names no folder of the machine it was trained on
        import yaml

        data = load_yaml(recipe, str(loaded.path / "recipe.yaml"))
        if isinstance(data, dict) and data.get("output_dir"):
            data["output_dir"] = f"runs/{Path(str(data['output_dir'])).name}"
            recipe = yaml.safe_dump(data, sort_keys=False)
    loaded.cell.to(dtype)
    return save_checkpoint(destination, loaded.cell, loaded.tokenizer, loaded.memory,
                           loaded.info.get("source", str(source)), recipe)
