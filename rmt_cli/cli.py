"""The `rmt` command: a thin layer over the Python API. Results on stdout, everything else on stderr.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .data.sources import editor_lines, head_binary_reason, home_path
from .errors import (NON_FINITE_SCORES, RMTError, UsageError, counted, ignore_stop_signals, json_loads, one_line,
                     shown, stop_like_ctrl_c, unicode_text)

class _OneLineUsageErrors(typer.core.TyperGroup):
    """Usage mistakes (an unknown option, a value out of range) as one `error:` line, not a framed box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:  # typer >= 0.2x carries its own copy of click
            from typer._click import exceptions as click
        except ImportError:
            from click import exceptions as click

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        stop_like_ctrl_c()
        if not {"-h", "--help", "--version"} & set(args if args is not None else sys.argv[1:]):
            _check_working_folder()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.NoArgsIsHelpError as e:  # `rmt` or `rmt ingest` alone: the help, as usual
            e.show()
            sys.exit(e.exit_code)
        except click.ClickException as e:
            where = getattr(getattr(e, "ctx", None), "command_path", None)
            if not where:  # some parse errors carry no context: the subcommand named, if any
                named = [a for a in (args if args is not None else sys.argv[1:])[:1] if a in self.commands]
                where = f"rmt {named[0]}" if named else "rmt"
            _say("error", f"{e.format_message()} (see {where} --help)")
            sys.exit(e.exit_code)
        except typer.Abort:  # click's name for a Ctrl-C outside a command
            code = 130
        if code == 130:  # typer turns a Ctrl-C while it parses the arguments into exit 130, silently
            _say_interrupted()
        sys.exit(code if isinstance(code, int) else 0)

    def parse_args(self, ctx, args):
        if args or ctx.resilient_parsing:
            return super().parse_args(ctx, args)
        # `rmt` alone is bad usage (exit 2): its help goes to stderr, as usage errors do (typer prints help on
        # stdout, where `rmt --help` keeps it)
        with contextlib.redirect_stdout(sys.stderr):
            return super().parse_args(ctx, args)


def _check_working_folder() -> None:
    """A working folder deleted under the shell: torch then fails to load ("Intel oneMKL FATAL ERROR", exit 2)
    without an `error:` line, and a relative path could name nothing."""
    try:
        os.getcwd()
    except OSError:
        _say("error", "the current folder no longer exists (deleted while this shell was in it): cd to a folder "
                      "that exists and run again")
        sys.exit(1)


def _flags_without_a_type() -> None:
    """typer's help prints `<bool>` after a flag as if it took a value (`--json <bool>`; faults T33): a flag shows no
    type. Where typer changes the method's name, help just keeps its `<bool>`."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown_type = getattr(option, "display_type_rich", None)
    if shown_type is None or getattr(shown_type, "flags_untyped", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown_type(self, ctx)

    display_type_rich.flags_untyped = True
    option.display_type_rich = display_type_rich


_flags_without_a_type()

app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="rmt",
    help="Give transformer models a recurrent memory: read a whole book at constant memory, save what was read, "
    "answer questions from it later.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
# Lines on stderr are never wrapped (rich wraps at 80 columns where stderr is no terminal: CI logs, `2> file`),
# and text is never read as rich markup or emoji codes (a path such as runs/[b]x[/b] is printed as it is).
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)
SEED_MAX = 2**63 - 1  # what torch.manual_seed takes
OTHER_RANK_GRACE_SECONDS = 3.0  # how long a launched process other than the main one waits before a usage error ends it


_WHOLE_NUMBER = re.compile(r"\s*[0-9]+\s*")


def _whole_numbers(text: str) -> list[int]:
    """'10,20' -> [10, 20], in ASCII digits only (int() also takes '1_0' and other scripts' digits); ValueError."""
    parts = text.split(",")
    if not all(_WHOLE_NUMBER.fullmatch(part) for part in parts):
        raise ValueError(f"not whole numbers: {text!r}")
    return [int(part) for part in parts]


def _home(value):
    """A path option's `~` as a shell expands it: quoted, or after `--option=`, the shell left it."""
    return None if value is None else type(value)(home_path(str(value)))


def _path(value: str | None) -> Path | None:
    """A path argument or option as typed (typer's own Path conversion makes '' the current folder), `~` expanded
    as a shell would (quoted, or after `--option=`, the shell left it); an empty one (an unset shell variable)
    names nothing."""
    if value is None:
        return None
    if value == "":
        raise typer.BadParameter("an empty path ('') names no file or folder")
    return Path(home_path(value))


def _path_option(*names: str, help: str):
    """An option that names a file or folder (default none): `_path`."""
    return typer.Option(None, *names, parser=_path, metavar="<path>", help=help)


def _seed_in_range(value: int) -> int:
    # Checked here rather than with min/max, whose range the help would print as [0<=x<=9223372036854775807]
    if not 0 <= value <= SEED_MAX:
        raise typer.BadParameter(f"{value} is not a seed: 0 to 2^63-1")
    return value


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"rmt {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print rmt's version and exit.")) -> None:
    """Give transformer models a recurrent memory: read a whole book at constant memory, save what was read, answer
    questions from it later."""


def _quiet_libraries() -> None:
    """transformers' warnings and progress bars off: through the environment, which they read when first imported
    (a command on the native engine never imports transformers), and directly where they are imported already."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar.*")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


_INTERRUPTION_SAID: list = []  # "interrupted" is said once, wherever the interrupt is caught


def _say_interrupted() -> None:
    if not _INTERRUPTION_SAID:
        _INTERRUPTION_SAID.append(True)
        err.print("interrupted")


def _import_numpy_before_torch() -> None:
    """torch's start-up imports numpy from C, and when that import fails it warns and carries on: a Ctrl-C that
    lands there was swallowed, and the command ran to the end (faults T31). Imported first here, an interrupt
    raises here instead."""
    try:
        import numpy  # noqa: F401
    except ImportError:  # torch runs without numpy
        pass


class _TolerantStderr:
    """Standard error that a reader may close (`rmt train … 2>&1 | head`) or a full disk refuse: messages then stop,
    the work goes on. A broken stderr had stopped a training run before it saved `final/`, and exited 0 as if the
    reader of a finished command's output had gone away."""

    def __init__(self, stream):
        self.stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                try:
                    return self.stream.write(text)
                except UnicodeEncodeError:  # a stream that cannot show a character: escaped, not silenced
                    encoding = getattr(self.stream, "encoding", None) or "ascii"
                    return self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            except (OSError, ValueError):  # EPIPE, ENOSPC, or a stream closed under us
                self.broken = True
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.broken = True

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self.stream, name)


def command(func):
    """Turn our errors into one line on stderr and the right exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _INTERRUPTION_SAID.clear()  # each command (several in one process: the API, tests) says it once
        stderr = sys.stderr
        if stderr is not None and not isinstance(stderr, _TolerantStderr):
            sys.stderr = _TolerantStderr(stderr)
        try:
            return _run_command(func, args, kwargs)
        finally:
            if sys.stderr is not stderr and isinstance(sys.stderr, _TolerantStderr):
                sys.stderr = stderr

    return wrapper


# What uses less memory, by command: only a command that has a batch size is told to make it smaller.
_SMALLER = {"train": "a smaller batch_size= or a smaller model", "extend": "a smaller batch_size= or a smaller model",
            "ingest": "a smaller --batch-size or a smaller model",
            "eval_command": "a smaller --batch-size or a smaller model"}


def _run_command(func, args, kwargs):
    try:
        if sys.stdout is None:  # started with stdout closed (`>&-`): refuse only when a result is written
            sys.stdout = _ClosedStdout()
        elif hasattr(sys.stdout, "reconfigure"):
            # What this stdout cannot encode (an answer's "é" under PYTHONIOENCODING=ascii) is escaped, as
            # Python escapes it on stderr, not a UnicodeEncodeError.
            sys.stdout.reconfigure(errors="backslashreplace")
        _quiet_libraries()
        _import_numpy_before_torch()
        return func(*args, **kwargs)
    except RMTError as e:
        # Under torchrun every process checks the same input: one of them says what was wrong with it.
        if not (isinstance(e, UsageError) and _other_launched_process()):
            # A report of several recipe errors is one a line: cut at newlines only (splitlines() also cuts at a
            # U+2028 or a \x1c in a quoted name, which _say escapes).
            for line in [line for line in str(e).split("\n") if line.strip()] or [type(e).__name__]:
                _say("error", line)
        else:  # the main process finds the same mistake: ended first, this one would have the launcher stop it
            ignore_stop_signals()  # (SIGTERM) before it says what the mistake was
            time.sleep(OTHER_RANK_GRACE_SECONDS)
        raise typer.Exit(e.exit_code)
    except KeyboardInterrupt:
        _say_interrupted()
        raise typer.Exit(130)
    except BrokenPipeError:
        # The reader of our stdout went away (`rmt ask ... | head`): not an error of ours.
        sys.stderr.close()
        raise typer.Exit(0)
    except OSError as e:  # the file system said no (permissions, full disk, a folder in the way)
        where = f"{e.filename}: " if e.filename else ""
        _say("error", f"{where}{e.strerror or e}")
        raise typer.Exit(1)
    except MemoryError:
        _say("error", f"out of memory; try {_SMALLER.get(func.__name__, 'a smaller model')}")
        raise typer.Exit(1)
    except ImportError as e:  # a library's shared object that cannot be mapped: memory limited (ulimit -v)
        if "failed to map segment" not in str(e):
            raise
        _say("error", f"out of memory while loading a library ({str(e).splitlines()[0][:200]})")
        raise typer.Exit(1)
    except RuntimeError as e:
        # oneDNN says "could not create a primitive" where an allocation of its own failed
        if not any(words in str(e).lower() for words in OUT_OF_MEMORY_WORDS):
            raise  # a bug of ours: the traceback is the report
        _say("error", f"out of memory ({str(e).splitlines()[0][:200]}); try "
             f"{_SMALLER.get(func.__name__, 'a smaller model')}")
        raise typer.Exit(1)
    except BaseException as e:
        # pyo3's PanicException (a Rust library gave up: a tokenizer's pathological regex, say) derives from
        # BaseException, past every handler above; anything else goes on as it came.
        if type(e).__name__ != "PanicException":
            raise
        _say("error", f"a Rust library failed ({one_line(str(e))[:200]}); is the checkpoint's tokenizer sound?")
        raise typer.Exit(1)


class _ClosedStdout:
    """Stands in for a closed stdout: writing a result to it is a run-time error, one line, exit 1."""

    def write(self, text: str) -> int:
        raise RMTError("standard output is closed; nowhere to write the results")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


OUT_OF_MEMORY_WORDS = ("can't allocate memory", "out of memory", "could not create a primitive")


def _other_launched_process() -> bool:
    """Whether this is one of several processes torchrun started, not the main one: a RANK above 0 under a
    WORLD_SIZE above 1, in torchrun's environment. A RANK alone (left in a SLURM or MPI job's environment, or
    inherited from a torchrun worker that runs rmt) silenced every usage error."""
    from .distributed import launched_by_torchrun

    rank = os.environ.get("RANK", "0").strip()
    # WORLD_SIZE=2 RANK=1 set by hand (no launcher) may run alone, and was silent about its refusal
    return launched_by_torchrun() and rank.isascii() and rank.isdigit() and int(rank) != 0


def _say(kind: str, text: str) -> None:
    """One unwrapped line on stderr, so scripts can grep it (control characters from file text escaped)."""
    if sys.stderr is None:  # started with stderr closed: nowhere to say it; the exit code still tells
        return
    sys.stderr.write(f"{kind}: {one_line(text)}\n")
    sys.stderr.flush()


def _argument_text(text: str) -> str:
    """A command-line argument as the UTF-8 text it was typed as: under a locale that is not UTF-8 (LANG=C without
    Python's UTF-8 mode), Python decodes argv's bytes to surrogates, and "Dániel" was refused as not UTF-8."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    try:
        return os.fsencode(text).decode("utf-8")
    except UnicodeDecodeError:  # bytes that are not UTF-8 either: said as such by check_question
        return text


def _question_lines(data: bytes, source: str) -> list[tuple[int, str]]:
    """The questions of a file or stdin, one a line, each with its line number."""
    binary = head_binary_reason(data)  # --file given the wrong file: answers to its bytes helped no one
    if binary is not None:
        raise UsageError(f"{source}: looks like binary data ({binary}); questions are lines of text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{source}: questions must be UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = editor_lines(text)  # a BOM is no part of a question; a vertical tab does not end one
    while lines and not lines[-1].strip():  # blank lines at the end pair with no answer: nothing to say
        lines.pop()
    questions = [(n, q) for n, q in enumerate(lines, 1) if q.strip()]
    inner_blanks = len(lines) - len(questions)
    if inner_blanks:  # a script pairing answers with input lines must know (the tenth review)
        _say("warning", f"{source}: {counted(inner_blanks, 'blank line')} skipped; one answer per question line")
    return questions


def _answer_line(answer: str) -> str:
    """An answer on one terminal line: newlines as spaces, other control characters escaped, unicode kept."""
    return one_line(answer.replace("\n", " "))


def _print_json(obj) -> None:
    """One JSON line; strict JSON, so a non-finite number (NaN, Infinity) is a run-time error, never printed."""
    try:
        line = json.dumps(_utf8(obj), indent=None, allow_nan=False)
    except ValueError:
        raise RMTError(NON_FINITE_SCORES) from None
    _stdout(line + "\n")


def _utf8(obj):
    """`obj` with every string valid Unicode (`unicode_text`); other values as JSON writes them, or as text (a
    Path)."""
    if isinstance(obj, dict):
        return {_utf8(key): _utf8(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_utf8(value) for value in obj]
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    return unicode_text(obj)


class _TraceFailed(Exception):
    """The trace could not be written: neither an RMTError nor an OSError, which ingest records as one
    document's failure and goes on."""


def _stdout(text: str) -> None:
    """A result on standard output, now; a full disk behind a redirection is one line that says where."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader went away (`| head`): handled as no error
    except OSError as e:
        raise RMTError(f"cannot write standard output: {e.strerror or e}") from None


@app.command(
    epilog="Examples:\n\n"
    "  rmt train recipes/memorize-tiny.yaml\n\n"
    "  rmt train recipes/memorize-tiny.yaml curriculum.2.steps=600 output_dir=runs/longer\n\n"
    "  rmt train recipes/memorize-tiny.yaml resume=auto   # continue after Ctrl-C or a kill"
)
@command
def train(
    recipe: Path = typer.Argument(..., parser=_path, help="A YAML recipe (see recipes/); - reads it from stdin."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value settings that replace the recipe's."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train an RMT through the recipe's curriculum (1 segment, then more), with checkpoints and evaluation."""
    from .storage.recipe import load_recipe
    from .commands.train import check_run_inputs, train as run_train

    r = load_recipe(recipe, overrides or [], check_inputs=True)
    check_run_inputs(r, [recipe])
    result = run_train(r, console=err, progress=not quiet)
    _finish_run(result, json_out)


def _finish_run(result, json_out: bool) -> None:
    summary = {"output_dir": str(result.output_dir), "checkpoint": str(result.final_checkpoint),
               "evaluation": result.evaluations, "interrupted": result.interrupted}
    if not result.main_process:
        pass  # one summary per run, from the main process
    elif json_out:
        _print_json(summary)
    elif not isinstance(sys.stdout, _ClosedStdout):  # closed (`>&-`): the checkpoint is saved all the same
        _stdout(one_line(result.final_checkpoint) + "\n")  # the run's result alone: `ckpt=$(rmt train r.yaml -q)`
    if result.interrupted:  # the run has said where it stopped and what it saved
        _INTERRUPTION_SAID.append(True)
        raise typer.Exit(130)


@app.command(
    epilog="Examples:\n\n"
    "  rmt extend runs/memorize-tiny/final recipes/memorize-extend.yaml\n\n"
    "  rmt extend runs/memorize-tiny/final recipes/memorize-extend.yaml output_dir=runs/ext2"
)
@command
def extend(
    checkpoint: Path = typer.Argument(..., parser=_path, help="A trained checkpoint folder (e.g. runs/NAME/final)."),
    recipe: Path = typer.Argument(..., parser=_path, help="A YAML recipe whose curriculum lists the longer stages."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value settings that replace the recipe's."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Continue a trained model on longer inputs: its weights, a fresh optimizer, the recipe's stages."""
    from .commands.extend import extend_recipe
    from .commands.train import check_run_inputs, train as run_train

    r = extend_recipe(checkpoint, recipe, overrides or [], check_inputs=True)
    check_run_inputs(r, [recipe])
    result = run_train(r, init_from=checkpoint, console=err, progress=not quiet)
    _finish_run(result, json_out)


DTYPE_CHOICES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _dtype(name: str):
    from .storage.memfile import DTYPES

    key = DTYPE_CHOICES.get(name.lower())
    if key is None:
        raise UsageError(f"--dtype {name!r}: choose float32 or bfloat16")
    return DTYPES[key]


def _load_model(model: Optional[Path], dtype, hint: str = "", default: Optional[Path] = None, device=None):
    """A checkpoint for inference (`load_for_inference`), on this machine's device."""
    from .storage.assets import DEFAULT_MODEL_DIR, load_for_inference

    return load_for_inference(model, dtype, device or _device(), hint, default or DEFAULT_MODEL_DIR)


def _outside_checkpoint(outputs: list[tuple[str, Path]]) -> None:
    """Refuse an output inside a checkpoint folder (the one being read, or any other): `check_outside_checkpoints`."""
    from .atomic import check_outside_checkpoints

    for what, path in outputs:
        check_outside_checkpoints(path, what)


def _is_trace(path: Path) -> bool:
    """Whether a file starts as `rmt ingest --trace` writes: a JSON object with a segment and its change."""
    try:
        with open(path, "rb") as f:
            first = json_loads(f.readline(4096))
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"segment", "end_token", "change"} <= set(first)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@app.command(
    epilog="Examples:\n\n"
    "  rmt ingest book.txt -o mem.st --model runs/qa1/final\n\n"
    "  cat notes.txt | rmt ingest - -o mem.st --model runs/qa1/final\n\n"
    "  rmt ingest src/ -o code.st --model runs/qa1/final        # a codebase: sorted files, .gitignore honoured\n\n"
    "  rmt ingest --append mem.st chapter2.txt --model runs/qa1/final\n\n"
    "  rmt ingest a.txt b.txt c.txt -o mems/ --model M           # one memory file per input, batched\n\n"
    "  rmt ingest --manifest jobs.tsv --model M --json            # input<TAB>output lines"
)
@command
def ingest(
    paths: Optional[List[str]] = typer.Argument(None, help="Text files, folders, or - for stdin."),
    # Typed str and kept as given: a trailing / asks for a folder ('' is said to name no output, in plan_jobs)
    output: Optional[str] = typer.Option(None, "--output", "-o", callback=_home, help="Memory file to write (or a "
                                         "folder, existing or ending in /: one memory file per input)."),
    model: Optional[Path] = _path_option("--model", "-m", help="Checkpoint folder (default: the embedded "
                                                               "model, when the package ships one)."),
    append: Optional[Path] = _path_option("--append", help="Continue from this memory file; writes back "
                                                           "to it unless -o is given."),
    manifest: Optional[Path] = _path_option("--manifest", help="A file of input<TAB>output lines (relative "
                                                               "paths from the current folder); - reads stdin."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Documents read side by side."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 or bfloat16 (default: the dtype the "
                                        "checkpoint is saved in; bfloat16 for the embedded model). --append keeps "
                                        "the memory file's."),
    force: bool = typer.Option(False, "--force", help="With --append: accept a memory file of another model (the "
                               "file then records the mix, and every later use needs --force)."),
    trace: Optional[Path] = _path_option("--trace", help="Write one JSON line per segment to this file: how "
                                                         "much the segment changed the memory (and the gate, if "
                                                         "gated)."),
    compile_step: bool = typer.Option(False, "--compile", help="torch.compile the segment step: faster on long "
                                 "inputs after a one-off compile (tens of seconds on a CPU); results agree with "
                                 "the default to float rounding."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Stream a book, a codebase or stdin through a trained RMT and save its final memory to a file."""
    from .commands.ingest import IngestInterrupted, ingest as run_ingest, plan_jobs
    from .distributed import launched_processes
    from .storage.memfile import load_memory

    jobs = plan_jobs(list(paths or []), output, append, manifest)
    processes = None
    if launched_processes() > 1:
        if trace is not None:
            raise UsageError("--trace: one process writes one trace; run it without torchrun")
        from .commands.ingest import check_job, check_plan
        from .distributed import Processes

        # Every process checks the whole plan, so a bad line stops them all alike (none waits for the others).
        check_plan(jobs)
        for job in jobs:
            check_job(job)
        processes = Processes()
        quiet = quiet or not processes.is_main
    if force and append is None:  # it would do nothing, without a word
        raise UsageError("--force accepts another model's memory file for --append; without --append there is none")
    if dtype is not None:
        _dtype(dtype)  # a name rmt knows, whatever else is wrong
    if append is not None:
        kept = load_memory(append).dtype
        if kept not in DTYPE_CHOICES.values():  # float16: written by the Python API, read by rmt ask
            raise UsageError(f"--append {shown(append)}: the memory file holds a {kept} memory; rmt ingest continues "
                             f"float32 or bfloat16 memories only (ingest the whole text again into a new file, with "
                             f"-o)")
        if dtype is not None and DTYPE_CHOICES[dtype.lower()] != kept:
            raise UsageError(f"--dtype {dtype}: the memory file {shown(append)} holds a {kept} memory, and an append "
                             f"continues in the file's dtype (leave out --dtype, or ingest anew with -o)")
        dtype = kept
    torch_dtype = _dtype(dtype) if dtype else None
    if trace is not None:
        from .atomic import existing_folder, output_target, replaceable_target

        if str(trace) == "-":
            raise UsageError("--trace -: the trace goes to a file (standard output is for --json); name one")
        # The rule of every output: a regular file or a new path (a link: the file it names), checked now.
        trace = output_target(trace, "--trace ")
        existing_folder(trace, "--trace ")
        if any(trace in job.files() for job in jobs):
            raise UsageError(f"--trace {shown(trace)}: is an input or output of this ingest")
        # Inside a folder being read, the trace (and its temporary file) would be read as part of the codebase
        folders = [Path(os.path.realpath(p)) for job in jobs for p in job.paths if p != "-" and os.path.isdir(p)]
        if any(folder in trace.parents for folder in folders):
            raise UsageError(f"--trace {shown(trace)}: is inside a folder this ingest reads; write it elsewhere")
        replaceable_target(trace, "--trace ", _is_trace, "a trace; rmt replaces only a trace it wrote (remove it "
                           "first, or name another file)")
    _outside_checkpoint([("-o ", job.output) for job in jobs] + ([("--trace ", trace)] if trace else []))
    loaded = _load_model(model, torch_dtype, device=processes.device if processes else None)

    def warn(message: str) -> None:
        _say("warning", message)

    started = time.perf_counter()
    from .atomic import file_identity

    # What each output is before the run: to say which a trace that failed left written (a rename: another file)
    outputs_before = [file_identity(job.output) for job in jobs] if trace is not None else []
    try:
        with contextlib.ExitStack() as stack:
            record = None
            if trace is not None:
                from .atomic import atomic_path

                trace_file = open(stack.enter_context(atomic_path(trace, clear_stale=True)), "w")

                @contextlib.contextmanager
                def writing_trace():  # a write error of the trace (a full disk) says it was the trace's
                    try:
                        yield
                    except OSError as e:
                        raise _TraceFailed(f"--trace {shown(trace)}: cannot write the trace: {e.strerror or e}") from None

                def close_trace() -> None:
                    with writing_trace():
                        trace_file.close()

                stack.callback(close_trace)

                def record(t) -> None:  # streamed: a trace of a million segments is not held in memory
                    entry = {"segment": t.segment, "end_token": t.end_token, "change": round(t.change, 6)}
                    if len(jobs) > 1:
                        entry = {"document": str(jobs[t.document].output), **entry}
                    if t.gate_max is not None:
                        entry["gate_max"] = round(t.gate_max, 6)
                    with writing_trace():  # flushed: a full disk stops the ingest before its memory file is written
                        trace_file.write(json.dumps(entry) + "\n")
                        trace_file.flush()

            if processes is None:
                results = _with_progress(
                    lambda cb: run_ingest(jobs, loaded, batch_size, force, cb, record, compile_step, warn), quiet, len(jobs))
            else:
                results, interrupted = _sharded_ingest(jobs, processes, lambda some: _with_progress(
                    lambda cb: run_ingest(some, loaded, batch_size, force, cb, None, compile_step, warn), quiet,
                    len(some)))
                if interrupted:  # reported as one process reports it, from every process's results
                    raise IngestInterrupted(results)
                if not processes.is_main:  # the main process reports for all
                    failed = [r for r in results if r.error]
                    raise typer.Exit(0 if not failed else 2 if all(r.exit_code == 2 for r in failed) else 1)
    except _TraceFailed as e:  # the whole ingest fails: not one document's failure, as a read error is
        written = [shown(job.output) for job, before in zip(jobs, outputs_before)
                   if file_identity(job.output) != before]
        said = f"written before it failed: {', '.join(written)}" if written else "no memory file was written"
        raise RMTError(f"{e}; {said}") from None
    except IngestInterrupted as stop:  # say which memory files are written (a batch's finished documents)
        if processes is not None and not processes.is_main:  # the main process reports for all
            _INTERRUPTION_SAID.append(True)
            raise
        finished = [r for r in stop.results if not r.error]
        if not _INTERRUPTION_SAID and (len(jobs) > 1 or finished):  # in place of the bare "interrupted"
            _INTERRUPTION_SAID.append(True)
            _say("interrupted", f"{len(finished)} of {len(jobs)} documents finished; their memory files are "
                 f"written, the others wrote nothing" if len(jobs) > 1 else
                 f"{finished[0].output}: written whole before the interrupt")
        if json_out:
            summaries = [r.summary() for r in stop.results]
            _print_json(summaries[0] if len(jobs) == 1 and manifest is None else summaries)
        raise
    elapsed = time.perf_counter() - started
    failures = [r for r in results if r.error]
    for r in results:
        for w in r.warnings:
            _say("warning", f"{shown(r.output)}: {w}")
        if r.error:
            _say("error", r.error)
        elif len(results) == 1:
            held = f"; the file now holds {r.total_tokens:,} tokens" if r.total_tokens != r.tokens else ""
            _say("done", f"{shown(r.output)}: {counted(r.tokens, 'token')}, {counted(r.segments, 'segment')} in {r.seconds:.1f} s "
                 f"({r.tokens_per_second:,.0f} tokens/s){held}")
    if len(results) > 1:
        done = [r for r in results if not r.error]
        tokens = sum(r.tokens for r in done)
        _say("done", f"{len(done)} of {len(results)} documents, {tokens:,} tokens in {elapsed:.1f} s "
             f"({tokens / max(elapsed, 1e-9):,.0f} tokens/s together"
             f"{f', {processes.world} processes' if processes else ''})")
    if json_out:
        summaries = [r.summary() for r in results]
        _print_json(summaries[0] if len(jobs) == 1 and manifest is None else summaries)
    if failures:
        # 2 when every failure was bad input, else 1 (a runtime failure)
        raise typer.Exit(2 if all(r.exit_code == 2 for r in failures) else 1)


def _sharded_ingest(jobs, processes, run_some):
    """This process's share of the jobs (`shard_jobs`), then every process's results in the jobs' order, and
    whether any process was interrupted (its results then say which of its documents finished)."""
    from .commands.ingest import IngestInterrupted, shard_jobs
    from .errors import StopFlag

    mine = shard_jobs(jobs, processes.rank, processes.world)
    try:
        done, interrupted = run_some([jobs[i] for i in mine]), False
    except IngestInterrupted as stop:
        done, interrupted = stop.results, True
    # A stop signal in the gather is only noted (a second one stops at once): one cut between its collectives
    # would leave the other processes waiting for good.
    with StopFlag() as flag:
        gathered = processes.gather([(interrupted, list(zip(mine, done)))])
    processes.close()
    results = sorted((pair for _, pairs in gathered for pair in pairs), key=lambda pair: pair[0])
    return [result for _, result in results], flag.stop or any(stopped for stopped, _ in gathered)


def _with_progress(run, quiet: bool, documents: int):
    from .progress import ProgressBar

    with ProgressBar(None if quiet else err, "ingest") as bar:

        def update(p):
            docs = f" {p.documents_done}/{p.documents_total} docs" if documents > 1 else ""
            bar.update(p.bytes_read, total=p.bytes_total, stats=f"{p.bytes_read / 1e6:,.1f} MB {p.tokens:,} tokens "
                       f"{p.segments:,} segments {bar.speed(p.tokens)}{docs}")

        return run(None if quiet else update)


ASK_BATCH = 64


@app.command(
    epilog="Examples:\n\n"
    "  rmt ask mem.st \"Where is Daniel?\" --model runs/qa1/final\n\n"
    "  rmt ask mem.st \"Where is Daniel?\" --json --model runs/minilm-memorize/final   # an encoder: + probability, "
    "runner-up\n\n"
    "  rmt ask mem.st \"Where is Mary?\" \"Where is John?\" --json --model M\n\n"
    "  rmt ask mem.st --file questions.txt --model M      # one question per line\n\n"
    "  echo \"Where is Sandra?\" | rmt ask mem.st - --model M"
)
@command
def ask(
    memory: Path = typer.Argument(..., parser=_path, help="A memory file written by rmt ingest."),
    questions: Optional[List[str]] = typer.Argument(None, help="Questions; - reads them from stdin, one a line. "
                                                   "Answered in this order, then --file's."),
    model: Optional[Path] = _path_option("--model", "-m", help="Checkpoint folder (default: the embedded "
                                                               "model, when the package ships one)."),
    file: Optional[Path] = _path_option("--file", "-f", help="Read questions from a file, one a line."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1, help="Longest answer, in tokens (a causal "
                                       "LM's, and at most what the question's segment has room for; an encoder "
                                       "picks one of its answers)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy (default)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling when temperature > 0 (0 to 1)."),
    seed: int = typer.Option(0, "--seed", callback=_seed_in_range, help="Seed for sampling (0 to "
                                 "2^63-1)."),
    force: bool = typer.Option(False, "--force", help="Use a memory file made by another model or setting, or "
                               "mixing models (a forced --append)."),
    json_out: bool = typer.Option(False, "--json", help="JSON Lines, one object per question: question, answer, "
                                  "logprob (an encoder adds the answer's probability and the runner-up with its "
                                  "own)."),
):
    """Answer questions from a memory file: answers alone on stdout, one line per question."""
    import math

    import torch

    from .commands.ask import QuestionError, ask_many, check_question, check_question_lengths, check_sampling
    from .data.sources import read_small_file, read_small_stdin
    from .storage.memfile import DTYPES, is_memory_file, load_memory

    check_sampling(temperature, top_p)
    asked = [_argument_text(q) for q in questions or []]
    # `rmt ask mems/*.st "Q"` asked the other memory files' names as questions of the first, exit 0 (the 29th review)
    given_file = next((q for q in asked if q != "-" and os.path.isfile(q) and is_memory_file(q)), None)
    if given_file is not None:
        raise UsageError(f"{shown(given_file)} is a memory file, given as a question: rmt ask reads one memory file; "
                         f"ask each in turn (for m in *.st; do rmt ask \"$m\" QUESTION; done)")
    if asked.count("-") > 1:
        raise UsageError("standard input (-) can be read only once")
    where: list[str | None] = [None] * len(asked)  # the line a question came from, if any: named in errors
    if "-" in asked:  # stdin's questions where the - stands, so the answers come in the order asked
        at = asked.index("-")
        lines = _question_lines(read_small_stdin("standard input"), "standard input")
        asked[at : at + 1] = [q for _, q in lines]
        where[at : at + 1] = [f"standard input:{n}" for n, _ in lines]
    if file is not None and str(file) == "-":  # not "no such file": - is stdin elsewhere
        raise UsageError("--file -: questions from standard input come from a - among the questions: "
                         "rmt ask MEMORY - < questions.txt")
    if file is not None:
        lines = _question_lines(read_small_file(file, "--file"), f"--file {file}")
        asked += [q for _, q in lines]
        where += [f"--file {shown(file)}:{n}" for n, _ in lines]
    if not asked:
        raise UsageError("no question given: rmt ask MEMORY \"QUESTION\" (or --file, or - for stdin)")
    for question, line in zip(asked, where):  # before the model loads: what no model can be asked
        try:
            check_question(question)
        except UsageError as e:
            raise UsageError(f"{line}: {e}" if line else str(e)) from None
    if str(memory) == "-" and not os.path.exists("-"):  # "-: no such memory file" misled: - is stdin elsewhere
        raise UsageError("memory -: a memory file is read from its path (standard input may hold the questions: "
                         "rmt ask MEMORY - < questions.txt)")
    state = load_memory(memory)
    if state.tokens == 0:  # an empty input ingested (a warning then): the answers know nothing of a document
        _say("warning", f"{shown(memory)}: this memory read no text (0 tokens); its answers come from no document")
    loaded = _load_model(model, DTYPES.get(state.dtype, torch.float32), state.model_hint)
    generator = torch.Generator().manual_seed(seed)
    try:  # every question before any answer: exit 2 is "nothing done, fix the input"
        check_question_lengths(loaded, asked)
    except QuestionError as e:
        raise UsageError(f"{where[e.index]}: {e}" if where[e.index] else str(e)) from None

    def answers():  # in batches: a long --file is neither held whole on the model nor printed only at the end
        for start in range(0, len(asked), ASK_BATCH):
            try:
                yield from ask_many(loaded, state, asked[start : start + ASK_BATCH], max_new_tokens, temperature,
                                    top_p, generator, force, str(memory))
            except QuestionError as e:
                line = where[start + e.index]
                raise UsageError(f"{line}: {e}" if line else str(e)) from None

    for a in answers():
        if json_out:
            entry = {"question": a.question, "answer": a.answer, "logprob": round(a.logprob, 4)}
            if loaded.cell.kind == "encoder":  # a classifier: how sure it is, and what it would have said next
                second = a.runner_up_logprob
                entry.update(probability=round(math.exp(a.logprob), 4), runner_up=a.runner_up,
                             runner_up_probability=None if second is None else round(math.exp(second), 4))
            _print_json(entry)
        else:
            _stdout(_answer_line(a.answer) + "\n")


@app.command(
    epilog="Examples:\n\n"
    "  rmt perplexity book.txt                                   # the embedded language-model RMT\n\n"
    "  rmt perplexity book.txt --model runs/lm-books/final --baseline runs/lm-books-baseline/final\n\n"
    "  rmt perplexity src/ --json > ppl.json                     # a codebase, every series as JSON\n\n"
    "  rmt perplexity book.txt --plot loss.png                   # needs matplotlib"
)
@command
def perplexity(
    paths: List[str] = typer.Argument(..., help="Text files, folders, or - for stdin."),
    model: Optional[Path] = _path_option("--model", "-m", help="Checkpoint folder (default: the embedded "
                                                               "language-model RMT)."),
    baseline: Optional[Path] = _path_option("--baseline", help="A second checkpoint scored on the same "
                                                               "segments, e.g. the same model trained without memory."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=2, help="Stop after this many tokens."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 or bfloat16 (default: the dtype the "
                                        "model is saved in; the baseline runs in the model's)."),
    plot_file: Optional[Path] = _path_option("--plot", help="Draw loss by position to this PNG file."),
    json_out: bool = typer.Option(False, "--json", help="Print every series as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no table."),
):
    """Perplexity of a text under an RMT, with its memory reset every segment, and under a baseline."""
    from .storage.assets import DEFAULT_LM_DIR
    from .commands.perplexity import perplexity as run_perplexity, plot

    if plot_file is not None:
        _check_plot_target(plot_file, paths)
        _outside_checkpoint([("--plot ", plot_file)])
    loaded = _load_model(model, _dtype(dtype) if dtype else None, default=DEFAULT_LM_DIR)
    base = _load_model(baseline, loaded.cell.dtype) if baseline is not None else None
    from .progress import ProgressBar

    with ProgressBar(None if quiet else err, "perplexity") as bar:
        result = run_perplexity(paths, loaded, base, max_tokens, None if quiet else lambda tokens, segments: bar.update(
            stats=f"{tokens:,} tokens {segments:,} segments {bar.speed(tokens)}"))
    result["model"] = str(loaded.path)
    if base is not None:
        result["baseline_model"] = str(base.path)
    if json_out:
        _print_json(result)
    else:
        _stdout(f"{result['memory']['perplexity']:.4f}\n")
    if not quiet:
        _perplexity_table(result)
    if plot_file is not None:  # after the results: a plot that cannot be written loses none of them
        plot(result, str(plot_file))


@app.command(
    "eval",
    epilog="Examples:\n\n"
    "  rmt eval                                   # the embedded model, 1k-16k tokens of a shipped text\n\n"
    "  rmt eval --noise held-out-book.txt --lengths 1k,16k,128k,1M --samples 100,100,100,20\n\n"
    "  rmt eval --model runs/qa1-gated/final --noise books/ --babi qa1_test.txt --json > table.json\n\n"
    "  rmt eval --noise book.txt --lengths 4k,64k --plot accuracy.png     # needs matplotlib"
)
@command
def eval_command(
    noise: Optional[List[str]] = typer.Option(None, "--noise", "-n", help="Text files or folders the facts are "
                                              "hidden in (repeat the option for several; default: a public-domain "
                                              "text shipped with rmt, Blake's poems)."),
    model: Optional[Path] = _path_option("--model", "-m", help="Checkpoint folder (default: the embedded "
                                                               "model)."),
    lengths: str = typer.Option("1k,4k,16k", "--lengths", "-l", help="Document lengths in tokens, e.g. "
                                "1k,16k,128k,1M (k = 1,000, M = 1,000,000, G = 1,000,000,000)."),
    samples: str = typer.Option("100", "--samples", "-s", help="Samples per length: one number, or one per "
                                "length (100,100,20)."),
    task: Optional[str] = typer.Option(None, "--task", help="Story generator: qa1 (default), qa2, qa3, qa4, "
                                       "memorize, detect-and-memorize, reasoning."),
    babi: Optional[Path] = _path_option("--babi", help="Take the stories from this bAbI-format file "
                                                       "instead of a generator (--task babi, or no --task)."),
    babi_split: str = typer.Option("all", "--babi-split", help="all, train or valid: the stories of the file's "
                                   "split (by story, as training splits it)."),
    facts: Optional[str] = typer.Option(None, "--facts", help="MIN,MAX facts per generated story of qa1, qa2 or "
                                        "qa3 (default 2,10)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Documents read side by side."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 or bfloat16 (default: the dtype the "
                                        "checkpoint is saved in, as rmt ingest runs it)."),
    seed: int = typer.Option(0, "--seed", callback=_seed_in_range, help="Seed of the samples (0 "
                                 "to 2^63-1)."),
    plot_file: Optional[Path] = _path_option("--plot", help="Draw accuracy against length to this PNG."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no table."),
):
    """Accuracy by document length: facts hidden in noise, with memory, memory reset, constant guess (95% CIs)."""
    from .data.sources import read_texts
    from .commands.longeval import (NoiseCorpus, StorySource, evaluate_length, format_length, parse_lengths,
                                    plot_results)
    from .storage.recipe import MAX_FACTS, MAX_SAMPLES
    from .data.tasks import SIZED_TASKS, read_babi, split_sentences

    if quiet and not json_out and plot_file is None:  # minutes of scoring, then nothing shown
        raise UsageError("-q hides the table, the only output without --json or --plot: add --json (the rows on "
                         "stdout) or --plot FILE, or drop -q")
    wanted = parse_lengths(lengths)
    try:
        counts = _whole_numbers(samples)
    except ValueError:
        raise UsageError(f"--samples {samples!r}: a number, or one number per length") from None
    if len(counts) == 1:
        counts = counts * len(wanted)
    if len(counts) != len(wanted) or min(counts) < 1 or max(counts) > MAX_SAMPLES:
        raise UsageError(f"--samples {samples!r}: give one number from 1 to {MAX_SAMPLES:,}, or one per length "
                         f"({len(wanted)})")
    try:
        low, high = _whole_numbers(facts or "2,10")
    except ValueError:
        raise UsageError(f"--facts {facts!r}: MIN,MAX such as 2,10") from None
    if not 1 <= low <= high <= MAX_FACTS:
        raise UsageError(f"--facts {facts!r}: need 1 <= MIN <= MAX <= {MAX_FACTS}")
    if task == "babi" and babi is None:
        raise UsageError("--task babi needs --babi FILE (a bAbI-format file of stories)")
    if babi is not None and str(babi) == "-":  # not "no such file": - is stdin elsewhere
        raise UsageError("--babi -: name a bAbI-format file; standard input is not read here (/dev/stdin names it "
                         "as a file)")
    if babi is not None and task not in (None, "babi"):  # the file's stories are scored, never the generator's
        raise UsageError(f"--task {shown(task)} and --babi {shown(babi)}: --babi takes the stories from the file in "
                         f"place of a generator; give one of them")
    task = task or ("babi" if babi is not None else "qa1")
    if facts is not None and task not in SIZED_TASKS:  # it would be ignored without a word
        stories_of = "the file's stories" if task == "babi" else f"--task {task}'s stories"
        raise UsageError(f"--facts {shown(facts)}: {stories_of} have a size of their own; --facts sets how many facts "
                         f"a story of {', '.join(SIZED_TASKS)} has")
    if babi_split != "all" and babi is None:  # it splits a --babi file's stories; generated ones have no split
        raise UsageError(f"--babi-split {shown(babi_split)}: splits the stories of a --babi file; give one, or drop "
                         f"--babi-split")
    if babi_split not in ("all", "train", "valid"):
        raise UsageError(f"--babi-split {babi_split!r}: choose all, train or valid")
    if plot_file is not None:
        _check_plot_target(plot_file, [*(noise or []), *([str(babi)] if babi else [])])
        _outside_checkpoint([("--plot ", plot_file)])
    stories = None
    if babi is not None:
        try:
            stories = read_babi(babi, babi_split, "--babi")
        except OSError as e:
            raise UsageError(f"--babi {shown(babi)}: {e.strerror or e}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"--babi {shown(babi)}: {one_line(e)}") from None
    from .storage.assets import DEFAULT_NOISE_TEXT

    try:
        texts = read_texts(noise or [str(DEFAULT_NOISE_TEXT)], lambda message: _say("warning", f"--noise: {message}"))
    except UsageError as e:  # named as its warnings are
        raise UsageError(f"--noise: {e}") from None
    sentences = [s for _, text in texts for s in split_sentences(text)]
    loaded = _load_model(model, _dtype(dtype) if dtype else None)
    corpus = NoiseCorpus(loaded.tokenizer, sentences)
    source = StorySource(task, low, high, stories, seed)
    if loaded.cell.kind == "encoder":  # the tenth review: an evaluation it can never pass said 0% without a word
        from .data.tasks import answer_set, check_answerable

        check_answerable(f"--babi {shown(babi)}" if babi else f"--task {source.name}", answer_set(source.name, stories),
                         loaded.cell.answers)
    elif stories:  # a generator's answers are single words; a file's may not fit the room (the thirteenth review)
        from .commands.longeval import too_long_answers
        from .core.segments import ANSWER_ROOM

        too_long = too_long_answers(stories, loaded.tokenizer)
        if too_long:
            _say("warning", f"--babi {shown(babi)}: {too_long:,} of {counted(len(stories), 'answer')} take more than "
                 f"the {ANSWER_ROOM} tokens an answer is given; they can never be said, and score 0%")
    from .progress import ProgressBar

    results = []
    with ProgressBar(None if quiet else err, "eval", total=sum(n * c for n, c in zip(wanted, counts))) as bar:
        seen = [0]

        def step(tokens: int) -> None:
            seen[0] += tokens
            bar.update(advance=tokens, stats=bar.speed(seen[0]))

        for n, count in zip(wanted, counts):
            bar.update(label=f"eval {n:,} tokens x {count}")
            results.append(evaluate_length(loaded, corpus, source, n, count, batch_size, None if quiet else step))
            per_document = results[-1].tokens / count
            if per_document > n:  # the story alone is longer: no room for noise (the fifth review)
                _say("warning", f"--lengths {format_length(n)}: the stories alone are about {per_document:,.0f} tokens "
                     f"long, so these documents hold the story and no noise")
            # the whole document sits in the final segment with the question (a document of the story's own length,
            # longer than asked, may not: the twenty-eighth review)
            if max(n, per_document) <= loaded.segment_size:
                _say("warning", f"--lengths {format_length(n)}: a document of at most one segment "
                     f"({loaded.segment_size} tokens) is read in context, without the memory: memory and memory "
                     f"reset score alike")
    rows = [r.row() for r in results]
    if json_out:
        from .storage.memfile import dtype_name

        # what was evaluated, so that two runs' results say how they differ (a qa1 run and a bAbI file's looked alike)
        _print_json({"model": str(loaded.path), "dtype": dtype_name(loaded.cell.dtype), "task": task,
                     "babi": str(babi) if babi is not None else None, "babi_split": babi_split if babi else None,
                     "noise": [str(path) for path in noise] if noise else "shipped", "facts": facts, "seed": seed,
                     "rows": rows})
    if not quiet:
        _eval_table(rows)
    if plot_file is not None:  # after the results: a plot that cannot be written loses none of them
        plot_results(rows, str(plot_file), f"{loaded.path.name}: {'bAbI file' if babi else task}")


def _check_plot_target(plot_file: Path, inputs: List[str]) -> None:
    """`--plot`'s file, checked before any scoring: a PNG to write (a new path or a regular file), which is none
    of the command's `inputs` nor inside a folder of them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'rmt-cli[plot]' (or pip install matplotlib)")
    if plot_file.suffix.lower() != ".png":
        raise UsageError(f"--plot {shown(plot_file)}: the plot is a PNG file; name it NAME.png")
    from .atomic import existing_folder, output_target, plot_target

    target = output_target(plot_file, "--plot ")  # a regular file or a new path; a link: the file it names
    if target.suffix.lower() != ".png":  # a link named x.png onto notes.txt would overwrite the notes
        raise UsageError(f"--plot {shown(plot_file)}: a link to {shown(target)}, which is not a PNG file")
    existing_folder(target, "--plot ")  # found now, not after the whole evaluation
    for given in inputs:
        if given == "-":
            continue
        source = Path(os.path.realpath(given))
        if source == target or source in target.parents:  # the sixth review: a text named t.png was replaced
            raise UsageError(f"--plot {shown(plot_file)}: is an input of this command ({shown(given)}); write the plot "
                             f"elsewhere")
    plot_target(plot_file)  # never a file rmt did not write: found now, not after the scoring


def _print_table(table) -> None:
    """A table on stderr, its cells never wrapped where stderr is no terminal (faults U29): rich fits it to 80
    columns there and wrapped "memory reset each segment" over two lines; it is as wide as its widest row now."""
    if err.is_terminal:  # a terminal's own width: rich fits the table to it
        err.print(table)
        return
    from rich.measure import Measurement

    err.width = max(err.width, Measurement.get(err, err.options.update(max_width=1 << 16), table).maximum)
    try:
        err.print(table)
    finally:
        err.width = None  # the width found as before, for every later line


def _eval_table(rows: list[dict]) -> None:
    from rich.table import Table

    def cell(r, key):
        low, high = r[key + "_ci95"]
        return f"{r[key]:.1%} [{low:.0%}-{high:.0%}]"

    table = Table(title="accuracy against document length (95% intervals)")
    for col in ("tokens", "samples", "with memory", "memory reset", "constant guess"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['length']:,}", str(r["samples"]), cell(r, "accuracy"), cell(r, "accuracy_reset"),
                      cell(r, "constant_guess"))
    _print_table(table)


def _perplexity_table(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{counted(result['tokens'], 'token')}, {counted(result['segments'], 'segment')} of "
                        f"{result['segment_size']}")
    for col in ("model", "perplexity", "loss", "flatness", "first 10%", "last 10%"):
        table.add_column(col, justify="right" if col != "model" else "left")
    names = {"memory": "RMT with memory", "memory_reset": "memory reset each segment", "baseline": "baseline"}
    for key, label in names.items():
        if key not in result:
            continue
        r = result[key]
        shown_if = lambda value, form: "–" if value is None else format(value, form)  # noqa: E731 - too few positions
        table.add_row(label, f"{r['perplexity']:.2f}", f"{r['loss']:.3f}", shown_if(r["flatness"], "+.3f"),
                      shown_if(r["first_tenth"], ".3f"), shown_if(r["last_tenth"], ".3f"))
    _print_table(table)


def main() -> None:
    from .distributed import end_launched_process

    code = 0
    if sys.stdout is None:  # started with stdout closed (`>&-`): --help and --version have nowhere to go either
        sys.stdout = _ClosedStdout()
    try:
        app()
    except RMTError as e:  # what no command raised: help or the version written to a closed stdout
        _say("error", str(e))
        code = e.exit_code
    except KeyboardInterrupt:
        _say_interrupted()
        code = 130
    except SystemExit as e:
        code = e.code
    except BrokenPipeError:  # `rmt --help | head -1`: the reader went away, no error of ours
        sys.stderr.close()
    except OSError as e:  # what no command wrote: `rmt train --help > /dev/full`
        _say("error", f"cannot write standard output: {e.strerror or e}")
        code = 1
    finally:
        ignore_stop_signals()
    end_launched_process(code)  # returns unless this process was one of several (torchrun, accelerate launch)
    sys.exit(code)


if __name__ == "__main__":
    main()
