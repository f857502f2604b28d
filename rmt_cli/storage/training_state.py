"""Optimizer and RNG state of a training checkpoint (`training_state.json` + `optimizer.safetensors`), for a
resume that continues exactly where the run stopped. No pickles: tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import UsageError, error_line, json_loads, shown
from .fingerprint import tensors_digest


STEP_NAME = r"step-([0-9]{1,12})"  # a run's step checkpoint folder: ASCII digits (\d takes any script's)


def optimizer_tensors(optimizer) -> tuple[dict, dict]:
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


def read_training_state(path: Path) -> dict:
    """training_state.json of a training checkpoint, checked: the step to resume at and the optimizer's settings."""
    try:
        state = json_loads((path / "training_state.json").read_text(encoding="utf-8"))
        ok = (isinstance(state, dict) and type(state.get("step")) is int and state["step"] >= 0  # not `true`
              and isinstance(state.get("optimizer"), dict)
              and isinstance(state["optimizer"].get("param_groups"), list)
              and isinstance(state["optimizer"].get("scalars"), dict))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise UsageError(f"resume: {shown(path)}: training_state.json is unreadable ({error_line(e)})") from None
    if not ok:
        raise UsageError(f"resume: {shown(path)}: training_state.json lacks a step or the optimizer's settings; "
                         f"resume from another checkpoint")
    named = re.fullmatch(STEP_NAME, path.name)  # a run's step-N folder holds the state of step N
    if named and int(named.group(1)) != state["step"]:
        raise UsageError(f"resume: {shown(path)}: training_state.json says step {state['step']}, the folder's name "
                         f"step {int(named.group(1))}; resume from another checkpoint")
    return state


def check_digest(saved: dict, tensors: dict) -> None:
    """optimizer.safetensors is the file written beside training_state.json (its `optimizer_sha256`; a checkpoint
    of an rmt from before the digest has none). ValueError where it is not."""
    digest = saved.get("optimizer_sha256")
    if digest is not None and digest != tensors_digest(tensors):
        raise ValueError("optimizer.safetensors does not match the digest training_state.json holds of it: it was "
                         "changed or damaged after rmt wrote it")


def _check_groups(saved, live: list[dict]) -> None:
    """The saved parameter groups hold settings this run's optimizer can take: each flag as this run sets it (an
    edited `amsgrad`, `maximize` or `capturable` would fail at the first step, or climb the loss), each number finite
    and in range. Raises ValueError naming the first that is not; keys a torch version leaves out are its own
    business (it fills in defaults)."""
    def number(value) -> bool:
        return type(value) in (int, float) and math.isfinite(value) and value >= 0

    if not isinstance(saved, list) or len(saved) != len(live):
        raise ValueError(f"{len(saved) if isinstance(saved, list) else 'no'} parameter groups, where the optimizer "
                         f"has {len(live)}")
    for i, (group, own) in enumerate(zip(saved, live)):
        if not isinstance(group, dict):
            raise ValueError(f"param_groups[{i}] is not a mapping")
        for key, value in group.items():
            want = own.get(key)
            if key == "params":
                ok = isinstance(value, list) and all(type(p) is int for p in value)
            elif key == "betas":
                ok = isinstance(value, list) and len(value) == 2 and all(number(b) and b < 1 for b in value)
            elif key == "initial_lr" or type(want) in (int, float):  # lr, eps, weight_decay, the schedule's base
                ok = number(value)
            elif key in own:  # flags and choices (amsgrad, maximize, foreach, ...): as this run has them
                ok = type(value) is type(want) and value == want
            else:
                ok = False
            if not ok:
                raise ValueError(f"param_groups[{i}].{key} is {json.dumps(value)[:40]}")


def _restore(optimizer, tensors: dict, info: dict, steps: int, prefix: str = "") -> None:
    _check_groups(info["param_groups"], optimizer.state_dict()["param_groups"])
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "state."):
            _, pid, key = name[len(prefix):].split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in info["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    _check_state(state, [p for group in optimizer.param_groups for p in group["params"]], steps)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


# What AdamW keeps per parameter (with amsgrad, which _check_groups refuses, also max_exp_avg_sq).
MOMENTS = ("exp_avg", "exp_avg_sq")


def _check_state(state: dict, params: list, steps: int) -> None:
    """Each parameter's saved AdamW state fits it: both moments, of its shape and dtype, finite, the second
    non-negative; a step count, a whole number from 1 to the steps the run has taken (the bias correction divides by
    what it makes); no state of a parameter the optimizer does not have. torch takes almost anything, then fails
    at the first step (a shape, a missing moment, a step of 0), trains on NaN, or keeps what it never uses.
    Raises ValueError naming the first that does not fit."""
    for pid, entry in state.items():
        if not 0 <= pid < len(params):
            raise ValueError(f"state.{pid}: the optimizer has {len(params)} parameters")
        unknown = sorted(set(entry) - {"step", *MOMENTS})
        if unknown:
            raise ValueError(f"state.{pid}.{unknown[0]}: not a part of AdamW's state")
        lacking = [key for key in ("step", *MOMENTS) if key not in entry]
        if lacking:
            raise ValueError(f"state.{pid} has no {lacking[0]}")
        step = entry["step"]
        step = step.item() if torch.is_tensor(step) and step.numel() == 1 else step
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) \
                or step != int(step) or not 1 <= step <= max(steps, 1):
            raise ValueError(f"state.{pid}.step is not a step count from 1 to {steps}")
        for key in MOMENTS:
            where, value, param = f"state.{pid}.{key}", entry[key], params[pid]
            if not torch.is_tensor(value) or value.dtype != param.dtype:
                dtype = str(param.dtype).removeprefix("torch.")
                raise ValueError(f"{where} is not a tensor of the parameter's dtype ({dtype})")
            if value.shape != param.shape:
                raise ValueError(f"{where} has shape {list(value.shape)}, the parameter {list(param.shape)}")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{where} holds values that are not finite")
            if key == "exp_avg_sq" and bool((value < 0).any()):
                raise ValueError(f"{where} holds negative values (a mean of squares)")


def module_tensors(prefix: str, module, optimizer) -> tuple[dict, dict]:
    """A training-only module (the binding head) and its own optimizer, as tensors named `prefix`... that go
    beside the main optimizer's in optimizer.safetensors, and the JSON part for training_state.json."""
    tensors, info = optimizer_tensors(optimizer)
    out = {f"{prefix}{name}": value for name, value in tensors.items()}
    out.update({f"{prefix}param.{name}": value.detach().cpu().contiguous()
                for name, value in module.state_dict().items()})
    return out, info


def load_module_state(path: Path, prefix: str, module, optimizer) -> bool:
    """Put back what `module_tensors` saved; False when the checkpoint has none (its run trained without the
    module, which then starts fresh)."""
    saved = read_training_state(path)
    info = saved.get(prefix.rstrip("."))
    if not isinstance(info, dict):
        return False
    try:
        tensors = load_file(str(path / "optimizer.safetensors"))
        check_digest(saved, tensors)
        param = prefix + "param."
        params = {name[len(param):]: value for name, value in tensors.items() if name.startswith(param)}
        module.load_state_dict(params)
        _restore(optimizer, tensors, info, saved["step"], prefix)
    except Exception as e:  # as load_optimizer_state: every failure means "cannot resume"
        raise UsageError(f"resume: {shown(path)}: the {prefix.rstrip('.').replace('_', ' ')}'s state does not fit "
                         f"({type(e).__name__}: {error_line(e)}); resume from another checkpoint") from None
    return True


def load_optimizer_state(path: Path, optimizer) -> None:
    """Put the optimizer and the torch RNG back as they were at the checkpoint; a damaged state is one line."""
    saved = read_training_state(path)
    try:
        tensors = load_file(str(path / "optimizer.safetensors"))
        check_digest(saved, tensors)
        _restore(optimizer, tensors, saved["optimizer"], saved["step"])
        torch.set_rng_state(tensors["torch_rng"])
    except Exception as e:  # safetensors, torch and a crafted file fail in many ways; all mean "cannot resume"
        raise UsageError(f"resume: {shown(path)}: the optimizer state does not fit this model "
                         f"({type(e).__name__}: {error_line(e)}); resume from another checkpoint") from None
