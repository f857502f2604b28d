"""Several processes (`torchrun`, `accelerate launch`): which one this is, and gathering what each did.

A plain ingest never imports accelerate for it; training asks it only where its processes run (`on_cpu`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

from .errors import RMTError, UsageError, shown


def launched_processes() -> int:
    """How many processes the launcher started (1 for a plain run). A WORLD_SIZE that is no count of processes is
    a UsageError: accelerate would stop on it with a traceback, or run one process as if it were several."""
    raw = os.environ.get("WORLD_SIZE", "")
    if not raw.strip():
        return 1
    if not _COUNT.fullmatch(raw) or int(raw) < 1:
        raise UsageError(f"WORLD_SIZE={shown(raw, 40)} is not a number of processes (1 or more): unset it, or start "
                         f"several processes with torchrun or accelerate launch")
    return int(raw)


_COUNT = re.compile(r"\s*[0-9]{1,9}\s*")


def on_cpu() -> bool:
    """Whether the launched processes run on the CPU: no GPU here, or `ACCELERATE_USE_CPU` set, as accelerate
    itself reads it (so `ACCELERATE_USE_CPU=1 torchrun ...` on a GPU machine means CPU processes, gloo)."""
    import torch
    from accelerate.utils import parse_flag_from_env

    try:
        return not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    except ValueError:  # "maybe": accelerate's own traceback further on
        raise UsageError(f"ACCELERATE_USE_CPU={shown(os.environ.get('ACCELERATE_USE_CPU', ''), 40)}: 1 or 0 (true "
                         f"or false)") from None


LAUNCHER_VARIABLES = ("RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun and accelerate launch set beside it
JOIN_SECONDS = 300.0  # how long a launched process waits for the others to join (RMT_JOIN_TIMEOUT overrides)


def launched_by_torchrun() -> bool:
    """Whether torchrun (or accelerate launch, which runs it) started this process among several: its main process
    then says what all of them find wrong. A process given the variables by hand (WORLD_SIZE=2 RANK=1 alone) may
    be the only one there is, and says it itself."""
    try:
        return launched_processes() > 1 and bool(os.environ.get("TORCHELASTIC_RUN_ID"))
    except RMTError:
        return False


def check_launch() -> None:
    """Refuse what would stop the processes later, in torch's words or not at all: a WORLD_SIZE left in the
    environment without a launcher's other variables (a SLURM or torchrun job shell), where accelerate raises, or
    waits for the missing processes and ignores Ctrl-C; and more GPU processes than GPUs (`check_one_gpu_each`)."""
    world = launched_processes()
    missing = [name for name in LAUNCHER_VARIABLES if not os.environ.get(name)]
    if world > 1 and missing:
        raise UsageError(f"WORLD_SIZE={world} is set, but not {', '.join(missing)}: start several processes with "
                         f"torchrun or accelerate launch, or unset WORLD_SIZE")
    if world > 1:  # the numbers accelerate reads with int(): a traceback where one is not a number
        for name in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
            raw = os.environ.get(name)
            if raw is not None and not _COUNT.fullmatch(raw):
                raise UsageError(f"{name}={shown(raw, 40)} is not a number: it is set by torchrun or accelerate "
                                 f"launch, which start several processes")
    rank = os.environ.get("RANK", "")
    if rank.strip() and _COUNT.fullmatch(rank) and int(rank) >= world:  # WORLD_SIZE=1 RANK=5 ran as if alone
        raise UsageError(f"RANK={int(rank)} is not below WORLD_SIZE={world}: a process's rank counts from 0; unset "
                         f"RANK, or start several processes with torchrun or accelerate launch")
    check_one_gpu_each()
    join_timeout()


def join_timeout() -> float:
    """Seconds a launched process waits for the others: RMT_JOIN_TIMEOUT, or JOIN_SECONDS."""
    raw = os.environ.get("RMT_JOIN_TIMEOUT", "")
    if not raw.strip():
        return JOIN_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 86400:  # NaN fails too
        raise UsageError(f"RMT_JOIN_TIMEOUT={shown(raw, 40)}: seconds to wait for the launched processes, above 0 "
                         f"and at most 86400")
    return seconds


def join_processes(cpu: bool):
    """accelerate's PartialState of this process, once every launched process has joined. torch waits for them
    inside C++, for half an hour and deaf to Ctrl-C and SIGTERM (a process started alone with RANK=1 waited for
    a main process that never came): here the wait ends after join_timeout() seconds (exit 1) or at a stop
    signal (exit 130), each with its line."""
    import warnings

    from accelerate import PartialState

    if launched_processes() < 2:
        return PartialState(cpu=cpu)
    with _bounded_wait(join_timeout()), warnings.catch_warnings():
        # rmt sets its threads itself (recipe `threads`): accelerate's note on OMP_NUM_THREADS says nothing
        warnings.filterwarnings("ignore", message=".*OMP_NUM_THREADS")
        return PartialState(cpu=cpu)


@contextlib.contextmanager
def _bounded_wait(seconds: float):
    """A deadline and the stop signals watched by a thread of their own while the main thread is inside a C++ call
    that Python's handlers cannot interrupt. Python's C-level handler, whichever thread the signal lands on, writes
    its number to the wakeup fd: a pipe the watcher waits on, with the deadline, and to which the main thread
    writes 0 ("joined") when the call returns. The main thread blocks the stop signals meanwhile (the watcher
    takes them): one landing there broke torch's connect with a C++ stack on stderr."""
    import select
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = {signal.SIGINT, signal.SIGTERM}
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    before = signal.set_wakeup_fd(writable, warn_on_full_buffer=False)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    where = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)  # started with the main thread's mask
        ready, _, _ = select.select([readable], [], [], seconds)
        said = os.read(readable, 64) if ready else b""
        if b"\0" in said:  # joined (a stop signal with it is the main thread's to handle, as ever)
            return
        message = "interrupted" if said else (
            f"error: process {os.environ.get('RANK', '?')} of {launched_processes()}: the launched processes did not "
            f"all join at {shown(where, 80)} within {seconds:g} s (RMT_JOIN_TIMEOUT); start them together with "
            f"torchrun or accelerate launch")
        with contextlib.suppress(Exception):
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
        os._exit(130 if said else 1)

    watcher = threading.Thread(target=watch, name="rmt-join-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        os.write(writable, b"\0")
        watcher.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop signal pending meanwhile now reaches Python
        signal.set_wakeup_fd(before)
        os.close(readable)
        os.close(writable)


def check_one_gpu_each() -> None:
    """Refuse more GPU processes on this machine than it has GPUs: NCCL would stop them all with "Duplicate GPU
    detected" after the model has loaded."""
    import torch

    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return
    if on_cpu() or local <= (gpus := torch.cuda.device_count()):
        return
    raise UsageError(f"{local} processes on this machine but {gpus} GPU{'s' if gpus != 1 else ''}: a GPU process "
                     f"needs a GPU of its own; start at most {gpus} (torchrun --nproc_per_node {gpus}), or run "
                     f"them on the CPU with ACCELERATE_USE_CPU=1")


class Processes:
    """This process's place among the launched ones (CPU: gloo; CUDA: one GPU per process)."""

    def __init__(self):
        check_launch()
        self._state = join_processes(on_cpu())
        self.rank, self.world = self._state.process_index, self._state.num_processes
        self.device = self._state.device
        self.is_main = self._state.is_main_process

    def gather(self, items: list) -> list:
        """Every process's `items`, concatenated in rank order, on every process."""
        from accelerate.utils import gather_object

        return gather_object(items)

    def close(self) -> None:
        """End the process group once nothing more is gathered (and see `end_launched_process`)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def end_launched_process(code) -> None:
    """End a process that was one of several here, without the interpreter's teardown, once its output is flushed.
    Even after the process group is destroyed, gloo's worker threads may hold tensors whose release during
    finalization aborts a finished process ("terminate called without an active exception", SIGABRT), and the
    launcher then fails the whole run: about 1 run in 16 of a 2-process ingest under load. Every file rmt writes
    is closed by then, and its locks go with the process."""
    try:
        if launched_processes() < 2 or not isinstance(code, int) or "torch.distributed" not in sys.modules:
            return
    except RMTError:  # a WORLD_SIZE refused: this process ran alone
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader gone away, or a stream closed
            stream.flush()
    os._exit(code)
