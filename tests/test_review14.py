"""The fourteenth review: two rmt processes writing one memory file or one output_dir at once, and a model loaded
in a dtype no memory file holds. Each must refuse at once with one line, never lose a run's work."""

import fcntl
import os

import pytest
import torch

from rmt_cli.commands.ingest import IngestJob, ingest
from rmt_cli.commands.train import train
from rmt_cli.errors import UsageError
from rmt_cli.storage.checkpoint import load_checkpoint
from rmt_cli.storage.memfile import load_memory
from rmt_cli.storage.recipe import validate_recipe
from conftest import one_error_line, run_cli as run
from test_train import tiny_recipe as train_recipe


def tiny_recipe(out, **changes):
    return train_recipe(out, curriculum=[{"segments": 1, "steps": 1}], eval={"samples": 1, "batch_size": 1},
                        checkpoint={"every": 1, "keep": 1}, **changes)

TEXT = "Mary went to the kitchen. Daniel moved to the garden. " * 4


def held(path):
    """An flock on `path` as another rmt holds it while it writes there."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_an_append_to_a_memory_file_another_rmt_writes_is_refused(tmp_path, checkpoint):
    """Two `ingest --append cc.st` at once both exited 0, and one append was lost (the second rename won)."""
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.txt").write_text(TEXT + " Sandra")
    assert run(["ingest", tmp_path / "a.txt", "-o", tmp_path / "cc.st", "--model", checkpoint]).exit_code == 0
    before = (tmp_path / "cc.st").read_bytes()
    fd = held(tmp_path / "cc.st")
    try:
        r = run(["ingest", "--append", tmp_path / "cc.st", tmp_path / "b.txt", "--model", checkpoint])
        one_error_line(r, 1, "cc.st", "another rmt is writing it")
        r = run(["ingest", tmp_path / "b.txt", "-o", tmp_path / "cc.st", "--model", checkpoint])  # a plain -o too
        one_error_line(r, 1, "another rmt is writing it")
        assert (tmp_path / "cc.st").read_bytes() == before
    finally:
        os.close(fd)
    # Once the other one ends (or is killed: its lock goes with it), the append goes through.
    r = run(["ingest", "--append", tmp_path / "cc.st", tmp_path / "b.txt", "--model", checkpoint])
    assert r.exit_code == 0, r.stderr
    assert [s["name"] for s in load_memory(tmp_path / "cc.st").sources][-1].endswith("b.txt")


def test_a_second_run_into_an_output_dir_another_run_writes_is_refused(tmp_path):
    """Two trainings into one output_dir both exited 0: one final/ replaced the other's, metrics.jsonl mixed."""
    out = tmp_path / "run"
    out.mkdir()
    fd = held(out)
    try:
        with pytest.raises(UsageError, match="another rmt run is writing it"):
            train(validate_recipe(tiny_recipe(out)), progress=False)
        assert list(out.iterdir()) == []
    finally:
        os.close(fd)
    train(validate_recipe(tiny_recipe(out)), progress=False)  # the lock is gone with its holder; the run's own ends
    train(validate_recipe(tiny_recipe(out, resume="auto")), progress=False)  # with it: a resume in-process follows


def test_ingest_refuses_a_model_in_a_dtype_no_memory_file_holds(tmp_path, checkpoint):
    """load_checkpoint(dtype=float64) + ingest reported success; load_memory and every command refused the file."""
    (tmp_path / "a.txt").write_text(TEXT)
    model = load_checkpoint(checkpoint, dtype=torch.float64)
    with pytest.raises(UsageError, match="float32, bfloat16, float16; this model is loaded in float64"):
        ingest([IngestJob([str(tmp_path / "a.txt")], tmp_path / "m.st")], model)
    assert not (tmp_path / "m.st").exists()


@pytest.mark.parametrize("change, field", [
    (lambda r: setattr(r, "batch_size", 0), "batch_size"),
    (lambda r: setattr(r.optim, "lr", float("nan")), "optim.lr"),
    (lambda r: setattr(r.curriculum[0], "steps", -5), "curriculum.0.steps"),
    (lambda r: setattr(r.memory, "segment_size", 0), "memory.segment_size"),
])
def test_train_validates_a_recipe_changed_after_it_was_made(tmp_path, change, field):
    """The API's train() took a Recipe whose fields were set after validation: tracebacks deep in training
    (`max() arg is an empty sequence`, `Invalid learning rate: nan`) where load_recipe gives one line."""
    recipe = validate_recipe(tiny_recipe(tmp_path / "run"))
    change(recipe)
    with pytest.raises(UsageError, match=field):
        train(recipe, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value", [("--samples", "\u0661"), ("--samples", "1_0"), ("--facts", "\u0662,\u0663"),
                                           ("--facts", "2,1_0")])
def test_eval_counts_are_ascii_digits(checkpoint, option, value):
    """--samples and --facts went through int(), which also reads '1_0' (10) and other scripts' digits; --lengths
    already refused them."""
    r = run(["eval", "--model", checkpoint, "--lengths", "200", option, value])
    one_error_line(r, 2, option)


def test_a_tilde_in_any_path_is_the_home_folder(tmp_path, monkeypatch, checkpoint):
    """`~` was expanded in inputs and output_dir only: `-o '~/x.st'` wrote ./~/x.st, `--plot '~/p.png'` said "no
    folder …/~". Quoted, or after `--option=`, no shell expands it; rmt does, everywhere a path is given."""
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(checkpoint, home / "ck")
    (home / "s.txt").write_text(TEXT)
    (home / "jobs.tsv").write_text("~/s.txt\t~/m3.st\n")
    (home / "q.txt").write_text("Where is Mary?\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert run(["ingest", "~/s.txt", "-o", "~/m.st", "--model=~/ck", "--trace=~/t.jsonl"]).exit_code == 0
    assert run(["ingest", "--append", "~/m.st", "~/s.txt", "--model", "~/ck"]).exit_code == 0
    assert run(["ingest", "--manifest", "~/jobs.tsv", "--model", "~/ck"]).exit_code == 0
    r = run(["ask", "~/m.st", "--file", "~/q.txt", "--model", "~/ck"])
    assert r.exit_code == 0 and r.stdout.strip(), r.stderr
    assert run(["perplexity", "~/s.txt", "--model", "~/ck", "--plot", "~/p.png"]).exit_code == 0
    assert {"m.st", "m3.st", "t.jsonl", "p.png"} <= {p.name for p in home.iterdir()}
    assert not (tmp_path / "~").exists()
    recipe = validate_recipe(tiny_recipe("~/run", resume="~/run/checkpoints/step-1"))
    assert recipe.output_dir == str(home / "run") and recipe.resume == str(home / "run/checkpoints/step-1")


def test_a_deleted_working_folder_is_one_error_line(tmp_path, memfile):
    """In a deleted working folder torch stopped every command with "Intel oneMKL FATAL ERROR", exit 2 and no
    `error:` line."""
    import subprocess
    import sys

    gone = tmp_path / "gone"
    gone.mkdir()
    command = f'cd "{gone}" && rmdir "{gone}" && exec "{sys.executable}" -m rmt_cli ask "{memfile}" "Where is Mary?"'
    r = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stderr)
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: the current folder no longer exists"), line
