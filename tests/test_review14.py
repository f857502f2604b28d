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
