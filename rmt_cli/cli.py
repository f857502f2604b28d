"""The `rmt` command: a thin layer over the Python API. Results on stdout, everything else on stderr.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .errors import RMTError

app = typer.Typer(
    name="rmt",
    help="Give transformer models a recurrent memory: read a whole book at constant memory, save what was read, "
    "answer questions from it later.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def command(func):
    """Turn our errors into one line on stderr and the right exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            _quiet_libraries()
            return func(*args, **kwargs)
        except RMTError as e:
            for line in str(e).splitlines() or [type(e).__name__]:
                err.print(f"[red]error:[/red] {line}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130)
        except BrokenPipeError:
            # The reader of our stdout went away (`rmt ask ... | head`): not an error of ours.
            sys.stderr.close()
            raise typer.Exit(0)

    return wrapper


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()


@app.command(
    epilog="Examples:\n\n"
    "  rmt train recipes/memorize-tiny.yaml\n\n"
    "  rmt train recipes/memorize-tiny.yaml curriculum.2.steps=600 output_dir=runs/longer\n\n"
    "  rmt train recipes/memorize-tiny.yaml resume=auto   # continue after Ctrl-C or a kill"
)
@command
def train(
    recipe: Path = typer.Argument(..., help="A YAML recipe (see recipes/)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value settings that replace the recipe's."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train an RMT through the recipe's curriculum (1 segment, then more), with checkpoints and evaluation."""
    from .recipe import load_recipe
    from .train import train as run_train

    r = load_recipe(recipe, overrides or [])
    result = run_train(r, console=err, progress=not quiet)
    _finish_run(result, json_out)


def _finish_run(result, json_out: bool) -> None:
    summary = {"output_dir": str(result.output_dir), "checkpoint": str(result.final_checkpoint),
               "evaluation": result.evaluations, "interrupted": result.interrupted}
    if json_out:
        _print_json(summary)
    else:
        err.print(f"checkpoint: {result.final_checkpoint}")
    if result.interrupted:
        raise typer.Exit(130)


@app.command(
    epilog="Examples:\n\n"
    "  rmt extend runs/memorize-tiny/final recipes/memorize-extend.yaml\n\n"
    "  rmt extend runs/memorize-tiny/final recipes/memorize-extend.yaml output_dir=runs/ext2"
)
@command
def extend(
    checkpoint: Path = typer.Argument(..., help="A trained checkpoint folder (e.g. runs/NAME/final)."),
    recipe: Path = typer.Argument(..., help="A YAML recipe whose curriculum lists the longer stages."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value settings that replace the recipe's."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Continue a trained model on longer inputs: its weights, a fresh optimizer, the recipe's stages."""
    from .extend import extend_recipe
    from .train import train as run_train

    r = extend_recipe(checkpoint, recipe, overrides or [])
    result = run_train(r, init_from=checkpoint, console=err, progress=not quiet)
    _finish_run(result, json_out)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
