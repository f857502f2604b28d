"""The training loop: a curriculum of stages over segment counts, checkpoints, exact resume, evaluation.

Each step's data is a pure function of (seed, step), the learning rate a function of the step, and the optimizer
and RNG states are saved with every checkpoint; so a resumed run ends with the same weights as one that was
never interrupted (same seed, same thread count). `accelerate` places the model, so the same loop runs on CUDA
and on several processes (`accelerate launch` / `torchrun`), each process taking its share of every batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..atomic import atomic_path, check_folder, check_outside_checkpoints, hold_lock
from ..storage.checkpoint import (LoadedModel, check_recipe_matches, is_rmt_checkpoint, is_unfinished_checkpoint,
                                  load_checkpoint, no_library_bars, replaceable_checkpoint, save_checkpoint)
from ..storage.training_state import (STEP_NAME, load_module_state, load_optimizer_state, module_tensors,
                                      read_training_state)
from .samples import TaskData
from ..errors import (RMTError, StopFlag, UsageError, bool_argument, counted, error_line, json_loads, one_line,
                      path_argument, shown, stop_signals, write_failure)
from .evaluate import evaluate
from ..core.memory import RecurrentMemoryModel, answer_correct
from ..storage.modeling import build_model, build_tokenizer, check_fits, make_cell
from ..progress import ProgressBar
from ..data.sources import read_small_text
from ..storage.recipe import Recipe, Stage, dump_recipe, load_recipe, load_yaml, validate_recipe, value_at
from ..core.segments import collate
from ..data.tasks import BINDING_COUNTS, rng_for
from ..distributed import check_launch, join_processes, on_cpu

CHECKPOINTS = "checkpoints"


@dataclass
class RunResult:
    output_dir: Path
    final_checkpoint: Path
    evaluations: list[dict]
    interrupted: bool = False
    main_process: bool = True


def stage_at(stages: list[Stage], step: int) -> tuple[int, int]:
    """(stage index, step within the stage) of a global step."""
    for i, stage in enumerate(stages):
        if step < stage.steps:
            return i, step
        step -= stage.steps
    return len(stages) - 1, stages[-1].steps


def learning_rate(recipe: Recipe, stage: Stage, step_in_stage: int) -> float:
    """Warm-up then cosine decay, restarted in every stage."""
    o = recipe.optim
    warm = min(o.warmup_steps, max(stage.steps // 4, 1))
    if step_in_stage < warm:
        return o.lr * (step_in_stage + 1) / warm
    progress = (step_in_stage - warm) / max(stage.steps - warm, 1)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def segments_for(seed: int, index: int, stage: Stage) -> int:
    rng = rng_for(seed, index, "length")
    if stage.segments > 1 and rng.random() < stage.mix_shorter:
        return rng.randint(1, stage.segments - 1)
    return stage.segments


class StepBatches(torch.utils.data.Dataset):
    """Step number -> that step's collated batch for one process, so DataLoader workers can build them ahead."""

    def __init__(self, data: TaskData, recipe: Recipe, pad_id: int, first_step: int, rank: int, local: int):
        self.data, self.recipe, self.pad_id = data, recipe, pad_id
        self.first_step, self.rank, self.local = first_step, rank, local
        self.total = sum(s.steps for s in recipe.curriculum)

    def __len__(self) -> int:
        return self.total - self.first_step

    def __getitem__(self, offset: int):
        step = self.first_step + offset
        stage = self.recipe.curriculum[stage_at(self.recipe.curriculum, step)[0]]
        first = step * self.recipe.batch_size + self.rank * self.local
        samples = [self.data.sample(i, segments_for(self.recipe.seed, i, stage), stage.facts, training=True,
                                    noise=stage.noise, task=stage.task, placement=stage.placement)
                   for i in range(first, first + self.local)]
        return collate(samples, self.pad_id)


def step_batches(data: TaskData, recipe: Recipe, pad_id: int, first_step: int, rank: int, local: int,
                 workers: int | None = None):
    """The batches from `first_step` on, built in `workers` (default `recipe.data_workers`) background processes,
    or inline for none."""
    dataset = StepBatches(data, recipe, pad_id, first_step, rank, local)
    workers = recipe.data_workers if workers is None else workers
    if workers == 0:
        return (dataset[i] for i in range(len(dataset)))
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                            prefetch_factor=4, worker_init_fn=_ignore_interrupts))


def _ignore_interrupts(worker_id: int) -> None:
    # A terminal's Ctrl-C (or a scheduler's SIGTERM) reaches the whole process group. A worker killed by it would
    # make the step waiting for its batch fail; the training process alone decides to finish the step, save and stop.
    for number in stop_signals():
        signal.signal(number, signal.SIG_IGN)
    # Ignoring SIGTERM, a worker would outlive a training process killed with SIGKILL: the kernel ends it then.
    with contextlib.suppress(Exception):  # Linux only (prctl); elsewhere a worker ends when its queue closes
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop_workers(batches) -> None:
    """End the DataLoader's workers however the run ends. They ignore stop signals (`_ignore_interrupts`), so
    after an unexpected error multiprocessing's exit handler, which ends them with SIGTERM, waited for them for
    good, deaf to Ctrl-C (the fifteenth review)."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # a DataLoader iterator's; the inline generator has none
    if shutdown is not None:
        shutdown()


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = []
    for p in (output_dir / CHECKPOINTS).glob("step-*"):
        if re.fullmatch(STEP_NAME, p.name) and (p / "training_state.json").is_file():
            found.append((_step_of(p), p))
    return max(found)[1] if found else None


def _check_whole(checkpoint: Path, loaded: LoadedModel, what: str, resuming: bool) -> None:
    """A checkpoint a run starts from is as its run wrote it: the fingerprint rmt.json holds was computed from its
    weights, memory, tokenizer and settings as written, and load_checkpoint computes it anew from the files; a
    training checkpoint's training_state.json holds it too (its optimizer tensors have their own digest there).
    Files swapped in from another run or another step resumed a hybrid without a word."""
    def written(name: str) -> dict:
        try:
            found = json_loads((checkpoint / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # read and checked a moment ago (or absent: not a resume)
            return {}
        return found if isinstance(found, dict) else {}

    loaded_fingerprint = loaded.info["fingerprint"]
    stored = written("rmt.json")
    memory = stored.get("memory")
    rule = memory.get("update", "replace") if isinstance(memory, dict) else None
    info = stored.get("fingerprint") if rule == loaded.memory_settings.update else None  # else: an upgraded cell
    if info is not None and info != loaded_fingerprint:
        raise UsageError(f"{what}: {shown(checkpoint)}: its weights, memory or tokenizer are not those rmt.json was "
                         f"written for (its fingerprint {shown(info, 40)} differs from the files', "
                         f"{loaded_fingerprint}): a file was replaced or changed; use another checkpoint")
    state = written("training_state.json").get("fingerprint") if resuming else None
    if state is not None and state != loaded_fingerprint:
        raise UsageError(f"{what}: {shown(checkpoint)}: its training_state.json and optimizer state belong to other "
                         f"weights (fingerprint {shown(state, 40)}; the checkpoint's {loaded_fingerprint}): files "
                         f"of two checkpoints were mixed; resume from another checkpoint")


def _step_of(checkpoint: Path) -> int:
    """The step of a checkpoint folder named as STEP_NAME."""
    return int(re.fullmatch(STEP_NAME, checkpoint.name).group(1))


def resolve_resume(recipe: Recipe) -> Path | None:
    if recipe.resume in (None, "", "no", "none"):
        return None
    if recipe.resume == "auto":
        return latest_checkpoint(Path(recipe.output_dir))
    path = Path(recipe.resume)
    if not path.exists():
        raise UsageError(f"resume: {shown(path)}: no such folder (a checkpoint folder, or auto)")
    if not (path / "training_state.json").is_file():
        raise UsageError(f"resume: {shown(path)} is not a training checkpoint (no training_state.json)")
    return path


BINDING_HEAD = "binding_head."  # its tensors' prefix in a training checkpoint's optimizer.safetensors

RESUME_LOCKED = ("model", "tokenizer", "memory")  # what the checkpoint's weights are: a resumed run keeps it
# How the memory is trained, not what it is: a resumed run may change these (gradient checkpointing to fit memory)
RESUME_FREE = {("memory", k) for k in ("bptt_depth", "gradient_checkpointing", "gate_supervision",
                                       "gate_supervision_open", "route_balance", "binding_supervision")}


# What a resumed run may change without a word: where it writes and evaluates, not what it trains.
RESUME_UNRECORDED = {("resume",), ("output_dir",), ("eval",), ("checkpoint",), ("data_workers",), ("init_from",)}


def _differences(had, wants, path: tuple = ()):
    """(path, had, wants) for every leaf where two dumped recipes differ; lists of one length item by item (a
    curriculum with one stage longer names that stage's steps)."""
    if isinstance(had, dict) and isinstance(wants, dict):
        for key in dict.fromkeys([*had, *wants]):
            yield from _differences(had.get(key), wants.get(key), path + (key,))
    elif isinstance(had, list) and isinstance(wants, list) and len(had) == len(wants):
        for index, (a, b) in enumerate(zip(had, wants)):
            yield from _differences(a, b, path + (index,))
    elif had != wants:
        yield path, had, wants


def _stored_recipe(checkpoint: Path, log: "_Logger") -> dict | None:
    """The recipe of the checkpoint's run, or None (said in one warning line) where its recipe.yaml is missing or
    no longer validates (an older rmt's, or one edited by hand): a resume then cannot compare the recipes."""
    try:
        was = load_recipe(checkpoint / "recipe.yaml").model_dump(mode="json")
    except UsageError as e:
        problems = str(e).splitlines()
        more = f" (and {counted(len(problems) - 1, 'more problem')})" if len(problems) > 1 else ""
        log.info(f"warning: resume: the recipe cannot be compared with the checkpoint's run: {problems[0]}{more}; a "
                 f"change of model, memory or task goes unchecked, and other changes unsaid and unrecorded")
        return None
    check_recipe_matches(checkpoint, was)  # compared with, it must describe the model saved beside it
    return was


def _resume_mismatches(recipe: Recipe, was: dict | None, first_step: int) -> list[str]:
    """What the recipe asks that the checkpoint's run was not: another model, tokenizer, memory or task (the run
    would train the checkpoint's model and save it described as the recipe's, which nothing could load), or a
    curriculum that ends before the checkpoint's step. `was`: the checkpoint's recipe (`_stored_recipe`)."""
    problems = []
    total = sum(s.steps for s in recipe.curriculum)
    if first_step > total:
        problems.append(f"curriculum: the checkpoint is at step {first_step}, the recipe's curriculum has "
                        f"{counted(total, 'step')} in all; resume needs at least as many")
    if was is None:
        return problems
    asked = recipe.model_dump(mode="json")
    for path in (*((section,) for section in RESUME_LOCKED), ("task", "name")):
        for where, had, wants in _differences(value_at(was, path), value_at(asked, path), path):
            if where[:2] not in RESUME_FREE:
                field = ".".join(map(str, where))
                problems.append(f"{field}: the checkpoint's run has {had!r}, the recipe asks {wants!r}; a "
                                f"resumed run continues the same model (start a new run, or rmt extend the checkpoint)")
    return problems


def _resume_changes(recipe: Recipe, was: dict | None) -> dict[str, list]:
    """How the recipe trains on differently from the checkpoint's run (data, batch, optimiser, seed, how the
    memory is trained): allowed, but the run then does not end as an uninterrupted one would, so it is said and
    recorded. {"task.placement": [old, new], ...}"""
    if was is None:
        return {}
    return {".".join(map(str, where)): [had, wants]
            for where, had, wants in _differences(was, recipe.model_dump(mode="json"))
            if where[:1] not in RESUME_UNRECORDED}


_StopFlag = StopFlag  # by this name here: tests stand in a flag that stops after N steps


def _source_name(recipe: Recipe) -> str:
    return recipe.model.name_or_path or f"scratch:{recipe.model.architecture}"


RUN_FILES = ("recipe.yaml", "metrics.jsonl")  # what a run keeps in output_dir beside its checkpoints


def check_run_inputs(recipe: Recipe, inputs: list[str | Path]) -> None:
    """No file a run writes in output_dir is one of its inputs: `rmt train recipe.yaml output_dir=.` would
    replace the recipe given (its comments and all) with the resolved one. The one exception is the run's own
    resolved recipe given back unchanged (`rmt train runs/x/recipe.yaml resume=auto`, the obvious way to continue
    a run): rewriting it changes nothing but `resume`."""
    own = {Path(os.path.realpath(Path(recipe.output_dir) / name)) for name in RUN_FILES}
    for given in inputs:
        if Path(os.path.realpath(given)) not in own:
            continue
        if Path(given).name == RUN_FILES[0] and _same_run(recipe, given):
            continue
        raise UsageError(f"output_dir {shown(recipe.output_dir)}: the run would write over {shown(given)}, which "
                         f"it reads, with other settings; choose another output_dir")


def _same_run(recipe: Recipe, given: str | Path) -> bool:
    """`given` is a resolved recipe as a run writes it, of the run `recipe` describes, whatever `resume` each
    says."""
    stored = _resolved_recipe(Path(given))
    return stored is not None and dump_recipe(stored.model_copy(update={"resume": None})) == \
        dump_recipe(recipe.model_copy(update={"resume": None}))


def _resolved_recipe(path: Path) -> Recipe | None:
    """The recipe in `path` if it is a resolved recipe as a run writes it (no comment, no key of one's own: nothing
    a rewrite would lose), else None."""
    try:
        text = read_small_text(path, "recipe")
        data = load_yaml(text, str(path))
        stored = validate_recipe(data, str(path))
    except (UsageError, OSError):
        return None
    # Written as a run writes it (no comment, nothing a rewrite would lose), by this rmt or an earlier one, whose
    # recipes lack the keys added since (a stage's task)
    return stored if text == yaml.safe_dump(data, sort_keys=False) else None


def _check_own(path: Path, folder: bool = False) -> None:
    """What a run keeps in output_dir is its own: a regular file (`folder`: a folder) or nothing; never a link
    (which would write elsewhere), a FIFO (which would hang training) or a device. The folders are a stage's
    NAME.tmp, written and then renamed (atomic.atomic_folder, which clears a folder a killed run left there): a
    file or link at that name would fail the run when the stage ends, after its work."""
    if folder and path.is_dir() and not path.is_symlink() and not is_unfinished_checkpoint(path):
        raise UsageError(f"output_dir {shown(path.parent)}: {path.name} holds what is not part of a checkpoint; rmt "
                         f"writes a stage's folder under that name first, clearing what a killed run left: remove "
                         f"it, or choose another output_dir")
    if not path.is_symlink() and (not path.exists() or (path.is_dir() if folder else path.is_file())):
        return
    if path.is_symlink():
        kind = "a symbolic link"
    elif folder:
        kind = "not a folder"
    else:
        kind = "a folder" if path.is_dir() else "not a regular file (a device, a FIFO or a socket)"
    what = "writes a stage's folder under that name first" if folder else "writes only regular files there"
    raise UsageError(f"output_dir {shown(path.parent)}: {path.name} is {kind}; rmt {what}: remove it, or choose "
                     f"another output_dir")


def _check_fresh(output_dir: Path, stages: int, resuming: bool = False) -> None:
    """What a run replaces in output_dir (its stage folders and final; for a new run also recipe.yaml and
    metrics.jsonl) must be what rmt wrote there, and a new run's folder must hold nothing else: never a user's
    files, which the run would delete, overwrite or append to (the sixth and seventh reviews: a `final/` holding a
    thesis was deleted, a hand-written recipe.yaml overwritten). A resumed run leaves other files alone."""
    if not output_dir.is_dir():
        return
    if not resuming and is_rmt_checkpoint(output_dir):
        raise UsageError(f"output_dir {shown(output_dir)}: is a checkpoint folder; a new run writes into a new or "
                         f"empty folder (rmt extend {shown(output_dir)} RECIPE continues that model)")
    replaced = {"final", *(f"stage-{k}" for k in range(stages))}
    for entry in sorted(output_dir.iterdir()):
        # Left by a kill -9: atomic_path's temporary recipe, a stage folder being written (cleared when rewritten)
        if re.fullmatch(r"\.recipe\.yaml\..+\.tmp\.yaml", entry.name) or entry.name.endswith(".tmp"):
            continue
        name = entry.name.removesuffix(".old")
        if name in replaced:
            what = None if replaceable_checkpoint(entry) else \
                "which a run would replace, but it is not a checkpoint rmt wrote"
        elif entry.name == CHECKPOINTS and (entry.is_symlink() or not entry.is_dir()):
            what = "which is not a folder (a file, or a link), where a run keeps its step checkpoints"
        elif resuming:
            continue
        elif name == CHECKPOINTS:
            what = None if not any(True for _ in entry.iterdir()) else \
                "which holds the checkpoints of another run" if latest_checkpoint(output_dir) is not None else \
                "which holds what is not a checkpoint of a run"
        elif name == "recipe.yaml":
            what = None if _resolved_recipe(entry) else "which a run would overwrite, but rmt did not write it"
        elif name == "metrics.jsonl":
            what = None if _rmt_metrics(entry) else "which a run would overwrite, but rmt did not write it"
        else:
            what = "which is not what a run of rmt leaves there"
        if what:
            raise UsageError(f"output_dir {shown(output_dir)}: holds {shown(entry.name)}, {what}; a new run writes "
                             f"into a new or empty folder (or continue a run with resume=auto)")
    _check_step_folders(output_dir / CHECKPOINTS)


def _check_step_folders(folder: Path) -> None:
    """Before any step is trained: no name a run would write its step checkpoints under holds anything but a
    checkpoint rmt wrote (a user's file at step-0000010 stopped a run only when it reached step 10, hours on)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for entry in sorted(folder.iterdir()):
        if re.fullmatch(STEP_NAME, entry.name) and not is_rmt_checkpoint(entry) and \
                not (entry.is_dir() and not entry.is_symlink() and not any(True for _ in entry.iterdir())):
            raise UsageError(f"{shown(entry)}: is not a checkpoint rmt wrote, where a run writes its step "
                             f"checkpoints; remove it (or choose another output_dir)")


def _rmt_metrics(path: Path) -> bool:
    """A metrics.jsonl as a run writes it: JSON objects, each a step or an evaluation."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        entries = [json_loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return False
    return all(isinstance(e, dict) and isinstance(e.get("step"), int) for e in entries)


def _drop_metrics_after(path: Path, step: int) -> list[dict]:
    """A resumed run trains again the steps after its checkpoint: drop their old lines (and a line cut short by a
    kill), so that metrics.jsonl logs each step once. Returns the last evaluation kept (its rows), which a run
    resumed at its end reports as its own."""
    if not path.is_file():
        return []
    kept, evaluations = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json_loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
            if entry.get("event") == "eval":
                if not _evaluation_row(entry):  # not a row rmt wrote: dropped, never reported as the run's
                    continue
                evaluations = [e for e in evaluations if e["step"] == entry["step"]] + [entry]
            kept.append(line + "\n")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(kept), encoding="utf-8")
    return evaluations


def _evaluation_row(entry: dict) -> bool:
    """An evaluation row as `evaluate` writes it: a length in segments, a sample count, and each score a finite
    number in its range (accuracies from 0 to 1, losses from 0, perplexities from 1)."""
    def number(key: str, low: float, high: float = math.inf) -> bool:
        value = entry.get(key)
        return type(value) in (int, float) and math.isfinite(value) and low <= value <= high

    scores = [key for key in entry if key.startswith(("accuracy", "loss", "perplexity"))]
    return (type(entry.get("segments")) is int and entry["segments"] >= 1 and type(entry.get("samples")) is int
            and entry["samples"] >= 1 and "loss" in scores
            and all(number(key, *({"accuracy": (0, 1), "loss": (0,), "perplexity": (1,)}[key.split("_")[0]]))
                    for key in scores))


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def train(recipe: Recipe, init_from: str | Path | None = None, console=None, progress: bool = True) -> RunResult:
    """Run a recipe's whole curriculum. `init_from`: start from a trained checkpoint's weights (rmt extend)."""
    # Validated again: a caller of the API may have changed a field since (pydantic checks a model when it is made,
    # not when a field is assigned), and `batch_size = 0` would end in a traceback deep in training.
    if not isinstance(recipe, Recipe):
        raise UsageError(f"train: a Recipe (load_recipe), not {type(recipe).__name__}")
    recipe = validate_recipe(recipe.model_dump(mode="json"))
    if init_from is not None:
        path_argument(init_from, "init_from")
    if console is not None and not callable(getattr(console, "print", None)):  # found at the first table, a stage on
        raise UsageError(f"console: a rich Console (or None), not {type(console).__name__}")
    bool_argument(progress, "progress")  # progress="no" showed the bars
    with contextlib.ExitStack() as held:  # output_dir's lock, released when the run ends (a second run may follow)
        if not progress:
            held.enter_context(no_library_bars())
        return _train(recipe, init_from, console, progress, held)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (the run wrote in it), or gone: left as it is
        folder.rmdir()


def _train(recipe: Recipe, init_from: str | Path | None, console, progress: bool,
           held: contextlib.ExitStack) -> RunResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # More threads than CPUs only thrash (threads=1000 on 2 cores: 2,000 threads, the machine unusable).
    threads = min(recipe.threads, available_cpus()) if recipe.threads else None
    if threads:
        torch.set_num_threads(threads)
    # accelerate only spreads CPU training over processes (torchrun, gloo) when told it is on the CPU.
    check_launch()
    accumulation = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").strip()
    if accumulation not in ("", "1"):  # accelerate would scale every loss by it, unrecorded and unlike a resume
        raise UsageError(f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS={shown(accumulation, 40)}: rmt train takes one "
                         f"optimizer step a batch (a larger batch_size is the recipe's way); unset it")
    try:
        join_processes(on_cpu())  # the processes' wait for each other bounded, and open to Ctrl-C
        accelerator = Accelerator(cpu=on_cpu(), mixed_precision=recipe.mixed_precision)
    except ValueError as e:  # accelerate reads its ACCELERATE_* and the launcher's variables, and raises on a bad one
        raise UsageError(f"accelerate refuses this environment: {error_line(e)} (check the ACCELERATE_* and "
                         f"launcher variables)") from None
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RMTError(f"launched as {launched} processes but accelerate sees {accelerator.num_processes}; "
                       f"check the launcher's settings")
    set_seed(recipe.seed)
    log = _Logger(console if accelerator.is_main_process else None)
    if threads and threads < recipe.threads:
        log.info(f"warning: threads={recipe.threads}, but this process may use {threads} CPUs: using {threads}")
    # Workers beyond the CPUs only queue for them (torch says so in two raw warnings): capped as threads are.
    workers = min(recipe.data_workers, available_cpus())
    if workers < recipe.data_workers:
        log.info(f"warning: data_workers={recipe.data_workers}, but this process may use {workers} CPUs: using "
                 f"{workers}")
    output_dir = Path(recipe.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output_dir {shown(output_dir)}: is a file, not a folder")
    if output_dir.is_symlink() and not output_dir.exists():
        raise UsageError(f"output_dir {shown(output_dir)}: a symbolic link to a folder that does not exist")
    check_folder(output_dir, f"output_dir {shown(output_dir)}")  # found now, not after building the model
    check_outside_checkpoints(output_dir, "output_dir ")  # `runs/x/final/sub`, as for every output of rmt
    if accelerator.is_main_process:  # one lock per run: its other processes write the same folder with it
        # Held for the run's life, before anything in output_dir is checked: a second run there would replace
        # final/ and mix its lines into metrics.jsonl. A flock dies with its process, so a killed run leaves none.
        if not output_dir.exists():  # made for the lock: gone again if the run stops before writing in it
            try:
                output_dir.mkdir(parents=True)
            except OSError as e:  # /proc/x, a read-only place: the recipe's setting, said as such (exit 2)
                raise UsageError(f"output_dir {shown(output_dir)}: cannot be made: {e.strerror or e}") from None
            held.callback(_remove_if_empty, output_dir)
        run_lock = hold_lock(output_dir, f"output_dir {shown(output_dir)}: another rmt run is writing it; wait for "
                                         f"it to end, or choose another output_dir", UsageError)
        if run_lock is not None:
            held.callback(os.close, run_lock)
    for own in RUN_FILES:  # found now, not after loading (a FIFO would hang training)
        _check_own(output_dir / own)
    for stage_folder in ["final", *(f"stage-{k}" for k in range(len(recipe.curriculum)))]:
        _check_own(output_dir / f"{stage_folder}.tmp", folder=True)  # found now, not when the stage ends
    resume_from = resolve_resume(recipe)
    if resume_from is None and latest_checkpoint(output_dir) is not None:
        raise UsageError(f"output_dir {shown(output_dir)} already holds checkpoints of a run: continue it with "
                         f"resume=auto, or choose another output_dir")
    if resume_from is None and init_from is None and recipe.init_from is not None:
        from .extend import check_extends

        check_extends(recipe)
        init_from = Path(recipe.init_from)
    if resume_from is None and recipe.resume == "auto":
        log.info(f"resume=auto: no checkpoint in {shown(output_dir)}; starting a new run"
                 + (f" from {shown(init_from)}" if init_from is not None else ""))
    later = latest_checkpoint(output_dir)
    if resume_from is not None and later is not None and _step_of(later) > read_training_state(resume_from)["step"]:
        # Its later checkpoints would outlive the new branch's in pruning, and resume=auto would go back to them.
        raise UsageError(f"resume: {shown(resume_from)} is an earlier step than {shown(later)}, which output_dir "
                         f"holds: resuming there would mix two histories in one run; remove the later checkpoints, "
                         f"or resume into another output_dir")
    resume_changes = {}
    if resume_from is not None:
        was = _stored_recipe(resume_from, log)
        problems = _resume_mismatches(recipe, was, read_training_state(resume_from)["step"])
        if problems:
            raise UsageError("\n".join(f"resume: {shown(resume_from)}: {p}" for p in problems))
        resume_changes = _resume_changes(recipe, was)
        if resume_changes:
            listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in resume_changes.items())
            log.info(f"warning: resume: the recipe trains on differently from the checkpoint's run ({listed}); "
                     f"recorded in metrics.jsonl: the run will not end as an uninterrupted one would")
    # A run resumed from a checkpoint of another folder writes into output_dir as a new run does: it must not hold
    # a user's recipe.yaml or metrics.jsonl either.
    own_checkpoint = resume_from is not None and output_dir.resolve() in resume_from.resolve().parents
    _check_fresh(output_dir, len(recipe.curriculum), resuming=own_checkpoint)

    data = TaskData(recipe.task, recipe.memory, recipe.seed)
    for warning in data.warnings:
        log.info(f"warning: {warning}")
    source = _source_name(recipe)
    if resume_from is not None or init_from is not None:
        # From a trained model (extend), the recipe's rule may upgrade the checkpoint's (gated -> gated-associative:
        # fresh associative matrices that compute nothing yet); a resumed run is already what it was.
        loaded = load_checkpoint(resume_from or init_from, upgrade=None if resume_from is not None else recipe.memory)
        _check_whole(resume_from or Path(init_from), loaded, "resume" if resume_from is not None else "init_from",
                     resume_from is not None)
        cell, tokenizer = loaded.cell, loaded.tokenizer
        source = loaded.info.get("source", source)
        if cell.kind != recipe.model.kind:
            raise UsageError(f"model.kind: the recipe says {recipe.model.kind}, the checkpoint "
                             f"{shown(loaded.path)} holds {'an encoder' if cell.kind == 'encoder' else 'a causal LM'}")
        check_fits(cell.model.config, recipe.memory, cell.kind)
        cell.train()
    else:
        tokenizer = build_tokenizer(recipe.tokenizer, recipe.model, data.corpus(recipe.tokenizer.training_texts))
        base_model = build_model(recipe.model, recipe.memory, tokenizer, recipe.seed)
        cell = make_cell(base_model, tokenizer, recipe.memory,
                         data.answer_set() if recipe.model.kind == "encoder" else None)
    data.bind(tokenizer, cell.answers if cell.kind == "encoder" else None)
    m = recipe.memory
    rmt = RecurrentMemoryModel(cell, m.segment_size, m.bptt_depth, m.gradient_checkpointing, m.gate_supervision,
                               m.gate_supervision_open, m.route_balance, m.binding_supervision,
                               BINDING_COUNTS.get(recipe.task.name, 0))
    rmt.train()
    optimizer = torch.optim.AdamW(rmt.cell.parameters(), lr=recipe.optim.lr, betas=recipe.optim.betas,
                                  weight_decay=recipe.optim.weight_decay)
    # The binding head trains beside the model with an optimizer of its own, so that the model's optimizer state
    # stays that of the model alone: a run may add the head when it resumes another's checkpoint.
    optimizers = [optimizer]
    if rmt.binding_head is not None:
        optimizers.append(torch.optim.AdamW(rmt.binding_head.parameters(), lr=recipe.optim.lr,
                                            betas=recipe.optim.betas, weight_decay=recipe.optim.weight_decay))
    start_step = 0
    if resume_from is not None:
        load_optimizer_state(resume_from, optimizer)
        if rmt.binding_head is not None and not load_module_state(resume_from, BINDING_HEAD, rmt.binding_head,
                                                                  optimizers[1]):
            log.info("resume: the checkpoint's run trained no binding head; a new one starts")
        start_step = read_training_state(resume_from)["step"]
        # The state brings back the checkpoint's settings; the recipe's go on from here (a resume that changes
        # them says so and records it: it must be what trains).
        for group in (g for o in optimizers for g in o.param_groups):
            group.update(betas=recipe.optim.betas, weight_decay=recipe.optim.weight_decay)
        log.info(f"resuming from {resume_from} at step {start_step}")
    # The RMT as accelerate runs it (wrapped for several processes); unwrap_model gives `rmt` back.
    prepared, *optimizers = accelerator.prepare(rmt, *optimizers)
    optimizer = optimizers[0]

    stages = recipe.curriculum
    total = sum(s.steps for s in stages)
    world, rank = accelerator.num_processes, accelerator.process_index
    if recipe.batch_size % world:
        raise UsageError(f"batch_size {recipe.batch_size} does not split evenly over {world} processes")
    local = recipe.batch_size // world
    recipe_yaml = dump_recipe(recipe)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(output_dir / "recipe.yaml") as tmp:  # whole or not at all (a link was refused above)
            Path(tmp).write_text(recipe_yaml, encoding="utf-8")
    metrics_path = output_dir / "metrics.jsonl"
    evaluations: list[dict] = []
    if accelerator.is_main_process:
        if own_checkpoint:
            last_evaluation = _drop_metrics_after(metrics_path, start_step)
            if start_step == total:  # resumed at its end (stopped in the last evaluation): it reports that one
                evaluations = last_evaluation
        else:  # a new run logs from its first step, not after an earlier run's lines
            metrics_path.unlink(missing_ok=True)
        if resume_changes:  # what each span of steps trained with
            _append_metrics(metrics_path, {"step": start_step, "event": "resume", "changed": resume_changes})

    def save(step: int, name: str | None = None) -> Path | None:
        # A step can spoil the weights without its own loss showing it (the last step of a run): never saved
        if not all(bool(torch.isfinite(p).all()) for p in prepared.parameters()):
            raise RMTError(f"training diverged at step {step}: the weights are no longer finite numbers (lower "
                           f"optim.lr, or check model.config)")
        if not accelerator.is_main_process:
            return None
        path = output_dir / (name or f"{CHECKPOINTS}/step-{step:07d}")
        state = {"step": step, "stage": stage_at(stages, step)[0]} if name is None else None
        head_tensors = None
        if state is not None and rmt.binding_head is not None:
            head_tensors, state[BINDING_HEAD.rstrip(".")] = module_tensors(BINDING_HEAD, rmt.binding_head,
                                                                          optimizers[1])
        out = save_checkpoint(path, accelerator.unwrap_model(prepared).cell, tokenizer, recipe.memory, source,
                              recipe_yaml, state, optimizer if name is None else None, extra_tensors=head_tensors)
        if name is None:
            _prune(output_dir / CHECKPOINTS, recipe.checkpoint.keep)
        return out

    def record(entry: dict) -> None:
        if accelerator.is_main_process:
            _append_metrics(metrics_path, entry)

    interrupted = False
    tokens_seen, t0 = 0, time.perf_counter()
    batches = step_batches(data, recipe, tokenizer.pad_token_id, start_step, rank, local, workers)
    held.callback(_stop_workers, batches)
    def stopping() -> None:
        log.info("stopping: finishing this step (or evaluation), then saving a checkpoint; press Ctrl-C again to "
                 "stop at once, losing the steps since the last checkpoint")

    with _StopFlag(stopping) as stop, ProgressBar(log.console if progress else None, "train", total, start_step, keep=True, count=True) as bar:
        step = start_step
        while step < total:
            if stop.stop:
                interrupted = True
                break
            stage_index, in_stage = stage_at(stages, step)
            stage = stages[stage_index]
            lr = learning_rate(recipe, stage, in_stage)
            for group in (g for o in optimizers for g in o.param_groups):
                group["lr"] = lr
            batch = next(batches).to(accelerator.device)
            out = prepared(batch)
            if not bool(torch.isfinite(out.loss.detach())):
                # Stopped before the step spoils the weights: a model of NaN would be saved as `final`, and
                # every command would then refuse it.
                saved = latest_checkpoint(output_dir)
                raise RMTError(f"training diverged at step {step + 1}: the loss is {float(out.loss.detach())} "
                               f"(lower optim.lr, or check model.config)" +
                               (f"; the last checkpoint is {shown(saved)}" if saved else ""))
            accelerator.backward(out.loss)
            if recipe.optim.grad_clip:
                accelerator.clip_grad_norm_(prepared.parameters(), recipe.optim.grad_clip)
            for o in optimizers:
                o.step()
                o.zero_grad(set_to_none=True)
            step += 1
            accuracy = None  # language modelling has no answers to be right about
            if recipe.task.name != "lm":
                with torch.no_grad():
                    accuracy = float(answer_correct(out.final_logits, batch.final_labels, batch.answers).float().mean())
            tokens_seen += batch.num_tokens * world
            speed = tokens_seen / max(time.perf_counter() - t0, 1e-9)
            loss = float(out.loss.detach())
            entry = {"step": step, "stage": stage_index, "segments": stage.segments, "loss": loss,
                     "accuracy": accuracy, "lr": lr, "tokens_per_second": speed}
            if stage.task is not None:  # the accuracy is this task's, not the recipe's
                entry["task"] = stage.task
            if out.gate_loss is not None:
                entry["gate_loss"] = float(out.gate_loss.detach())
            if out.balance_loss is not None:
                entry["balance_loss"] = float(out.balance_loss.detach())
            if out.binding_loss is not None:
                entry["binding_loss"] = float(out.binding_loss.detach())
            record(entry)
            score = f"ppl {math.exp(min(loss, 50)):.1f}" if accuracy is None else f"acc {accuracy:.0%}"
            bar.update(step, label=f"stage {stage_index} ({stage.segments} seg{', ' + stage.task if stage.task else ''})",
                       stats=f"loss {loss:.3f} {score} {speed:,.0f} tok/s")
            stage_ends = stage_at(stages, step)[0] != stage_index or step == total
            if step % recipe.checkpoint.every == 0 and not stage_ends:  # a stage's end saves once, after its evaluation
                save(step)
            if stage_ends:
                if accelerator.is_main_process:  # first: a diverged model is saved neither as a checkpoint nor a stage
                    rows = evaluate(accelerator.unwrap_model(prepared), data, recipe.eval_lengths(),
                                    recipe.eval.samples, recipe.eval.batch_size, accelerator.device)
                    if not all(math.isfinite(row["loss"]) for row in rows):  # e.g. weights of 1e30 after the step
                        raise RMTError(f"training diverged at step {step}: the evaluation's loss is not a finite "
                                       f"number (lower optim.lr, or check model.config)")
                save(step)
                save(step, f"stage-{stage_index}")
                if accelerator.is_main_process:
                    for row in rows:
                        row.update(stage=stage_index, step=step, event="eval")
                        record(row)
                    evaluations = rows
                    log.eval_table(stage_index, rows, recipe.task.name == "lm")
                accelerator.wait_for_everyone()
        # A stop during the last stage's evaluation: saved as a checkpoint, exit 130 (resume=auto writes final/)
        interrupted = interrupted or stop.stop
    if interrupted:
        path = save(step)
        log.info(f"interrupted at step {step}; saved {shown(path)}; continue with resume=auto")
        return RunResult(output_dir, path or output_dir, evaluations, True, accelerator.is_main_process)
    final = save(step, "final") or output_dir / "final"
    accelerator.wait_for_everyone()
    return RunResult(output_dir, final, evaluations, False, accelerator.is_main_process)


def _prune(folder: Path, keep: int) -> None:
    """The `keep` latest checkpoints stay; older ones go, and so do folders a killed run (kill -9) left half
    written or set aside (step-N.tmp, step-N.old): a checkpoint was just written whole, so none is in use."""
    # Only folders save_checkpoint wrote are counted and removed: a user's folder of that name stays (and a run
    # refuses to start beside one, `_check_step_folders`)
    found = sorted(p for p in folder.glob("step-*") if re.fullmatch(STEP_NAME, p.name) and is_rmt_checkpoint(p))
    left = [p for p in folder.glob("step-*") if re.fullmatch(STEP_NAME + r"\.(tmp|old)", p.name)]
    for p in [*found[:-keep], *left]:
        shutil.rmtree(p, ignore_errors=True)


def _append_metrics(path: Path, entry: dict) -> None:
    """One line of metrics.jsonl; a failed write (a full disk) names the file, as a checkpoint's does."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as e:
        raise RMTError(f"{shown(path)}: cannot write the metrics: {write_failure(e)}") from None


class _Logger:
    """Rich output on stderr, only on the main process."""

    def __init__(self, console):
        self.console = console

    def info(self, text: str) -> None:
        if self.console is not None:  # paths in it may hold newlines or escapes: one line, escaped
            self.console.print(one_line(text))

    def eval_table(self, stage: int, rows: list[dict], lm: bool) -> None:
        if self.console is None:
            return
        from rich.table import Table

        table = Table(title=f"evaluation after stage {stage}")
        table.add_column("segments", justify="right")
        if lm:
            table.add_column("perplexity", justify="right")
            table.add_column("memory reset", justify="right")
            for r in rows:
                table.add_row(str(r["segments"]), f"{r['perplexity']:.2f}", f"{r['perplexity_reset']:.2f}")
        else:
            table.add_column("accuracy", justify="right")
            table.add_column("memory reset", justify="right")
            for r in rows:
                table.add_row(str(r["segments"]), f"{r['accuracy']:.1%}", f"{r['accuracy_reset']:.1%}")
        self.console.print(table)
