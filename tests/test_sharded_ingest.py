"""`rmt ingest --manifest` under torchrun: the documents are shared out between processes, and every memory file
is the one a single process writes (bit for bit, at batch size 1; batching documents side by side changes float
rounding only, as tests/test_ingest_ask.py checks)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from rmt_cli.commands.ingest import ingest, manifest_jobs, shard_jobs

TEXT = "Mary moved to the bathroom. The old man saw a red boat near the river. Daniel went to the kitchen. "


def _torchrun(args, cwd, processes=2, entry=("-m", "rmt_cli.cli")):
    # CPU processes (gloo) even on a GPU machine: two GPU processes need two GPUs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(processes), *entry, "ingest", *map(str, args)]
    for attempt in range(2):
        r = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        # A launcher failure (rendezvous, a port taken meanwhile) says nothing about rmt: one more try. An error
        # or an interruption of rmt's own is an `error:` or `interrupted` line, and is returned at once.
        if r.returncode == 0 or "error:" in r.stderr or "interrupted" in r.stderr:
            return r
    return r


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, {k: v for k, v in f.metadata().items()
                                                                 if k != "created"}


def test_every_process_gets_a_share_and_no_job_twice():
    for world in (1, 2, 3, 8):
        shares = [shard_jobs(list(range(7)), rank, world) for rank in range(world)]
        assert sorted(i for share in shares for i in share) == list(range(7))


def test_torchrun_ingest_writes_what_one_process_writes(tmp_path, checkpoint):
    lines = []
    for i in range(5):
        (tmp_path / f"d{i}.txt").write_text(TEXT * (3 + 4 * i))
        lines.append(f"d{i}.txt\tsharded/d{i}.st")
    (tmp_path / "sharded").mkdir()
    (tmp_path / "jobs.tsv").write_text("\n".join(lines) + "\n")
    r = _torchrun(["--manifest", "jobs.tsv", "--model", checkpoint, "--batch-size", "1", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    summaries = json.loads(r.stdout)  # one JSON list, from the main process only, in the manifest's order
    assert [s["output"] for s in summaries] == [f"sharded/d{i}.st" for i in range(5)]

    (tmp_path / "single").mkdir()
    (tmp_path / "single.tsv").write_text("\n".join(lines).replace("sharded/", "single/") + "\n")
    from rmt_cli.storage.checkpoint import load_checkpoint

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ingest(manifest_jobs("single.tsv"), load_checkpoint(checkpoint), batch_size=1)
    finally:
        os.chdir(cwd)
    for i in range(5):
        sharded, sharded_meta = _tensors(tmp_path / "sharded" / f"d{i}.st")
        single, single_meta = _tensors(tmp_path / "single" / f"d{i}.st")
        assert sharded_meta == single_meta
        assert sharded.keys() == single.keys()
        assert all(torch.equal(sharded[k], single[k]) for k in single)


def test_a_bad_manifest_line_stops_every_process_with_one_error_line(tmp_path, checkpoint):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "jobs.tsv").write_text("a.txt\ta.st\nmissing.txt\tb.st\n")
    r = _torchrun(["--manifest", "jobs.tsv", "--model", checkpoint], tmp_path)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and "missing.txt" in errors[0], r.stderr
    assert not (tmp_path / "a.st").exists()


def test_more_gpu_processes_than_gpus_is_one_usage_error(monkeypatch):
    """Two GPU processes on a one-GPU machine stopped both with NCCL's "Duplicate GPU detected" (an H100 check,
    session 13), after the model had loaded; now it is refused first. ACCELERATE_USE_CPU=1 runs them on the CPU."""
    from rmt_cli.distributed import check_one_gpu_each
    from rmt_cli.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    check_one_gpu_each()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="2 processes on this machine but 1 GPU: .*ACCELERATE_USE_CPU=1"):
        check_one_gpu_each()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    check_one_gpu_each()


# Each process finishes its first document, then gets a Ctrl-C (as torchrun passes one on to every process).
STOP_AFTER_ONE = """
import rmt_cli.commands.ingest as ingest_module
from rmt_cli.cli import main

finish, finished = ingest_module._finish, []


def finish_one_then_stop(reader, model):
    if finished:
        raise KeyboardInterrupt
    finish(reader, model)
    finished.append(reader.job.output)


ingest_module._finish = finish_one_then_stop
main()
"""


def test_an_interrupted_torchrun_ingest_reports_every_document(tmp_path, checkpoint):
    """Ctrl-C under torchrun printed no --json (each process knew its own share only): the processes now gather
    their results, and the main one reports them as one process does, exit 130."""
    lines = []
    for i in range(5):
        (tmp_path / f"d{i}.txt").write_text(TEXT * (3 + i))
        lines.append(f"d{i}.txt\td{i}.st")
    (tmp_path / "jobs.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "stop.py").write_text(STOP_AFTER_ONE)
    r = _torchrun(["--manifest", "jobs.tsv", "--model", checkpoint, "--batch-size", "1", "--json", "-q"], tmp_path,
                  entry=("stop.py",))
    assert r.returncode != 0, r.stderr
    report = json.loads(r.stdout)  # one JSON list, from the main process only, in the manifest's order
    assert [s["output"] for s in report] == [f"d{i}.st" for i in range(5)]
    written = sorted(p.name for p in tmp_path.glob("*.st"))
    assert written == [s["output"] for s in report if s["error"] is None] == ["d0.st", "d1.st"]  # one a process
    assert all("interrupted before its end; nothing written" in s["error"] for s in report[2:])
    assert r.stderr.count("interrupted: 2 of 5 documents finished") == 1, r.stderr


def test_a_world_size_left_without_a_launcher_is_one_usage_line(tmp_path, monkeypatch):
    """WORLD_SIZE=2 alone (a job shell's leftover) ended in accelerate's traceback; with MASTER_ADDR too, ingest
    waited for the missing process for good and ignored Ctrl-C (the fourteenth review)."""
    from rmt_cli.distributed import check_launch
    from rmt_cli.errors import UsageError

    (tmp_path / "a.txt").write_text(TEXT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    env.pop("MASTER_PORT", None)
    r = subprocess.run([sys.executable, "-m", "rmt_cli.cli", "ingest", "a.txt", "-o", "a.st"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "WORLD_SIZE=2 is set, but not MASTER_PORT" in r.stderr and not (tmp_path / "a.st").exists()
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"),
                        ("LOCAL_WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    check_launch()  # what torchrun sets passes
    monkeypatch.delenv("RANK")
    with pytest.raises(UsageError, match="not RANK"):
        check_launch()


@pytest.mark.parametrize("env, says", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE=abc is not a number of processes"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 is not a number of processes"),
    ({"WORLD_SIZE": "-3"}, "WORLD_SIZE=-3 is not a number of processes"),
    ({"WORLD_SIZE": "2", "RANK": "x", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK=x is not a number"),
])
@pytest.mark.parametrize("command", ["ingest", "train"])
def test_launcher_variables_that_are_not_numbers_are_one_usage_line(tmp_path, env, says, command):
    """The fifteenth review: WORLD_SIZE=abc ended train in accelerate's traceback; WORLD_SIZE=0 was exit 1 and -3
    was taken by ingest as one process; with RANK=x nothing was said at all (a rank other than 0 keeps quiet)."""
    (tmp_path / "a.txt").write_text(TEXT)
    args = ["a.txt", "-o", "a.st"] if command == "ingest" else [str(tmp_path / "r.yaml")]
    (tmp_path / "r.yaml").write_text("model: {architecture: gpt2}\ntokenizer: {kind: bpe}\n"
                                      "curriculum: [{segments: 1, steps: 1}]\noutput_dir: run\n")
    full = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}
    r = subprocess.run([sys.executable, "-m", "rmt_cli.cli", command, *args], cwd=tmp_path,
                       env={**full, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not (tmp_path / "a.st").exists() and not (tmp_path / "run").exists()


def test_a_launched_process_ends_with_its_output_flushed_and_no_teardown(tmp_path):
    """A finished 2-process ingest failed about 1 run in 16: gloo's threads aborted a process in the interpreter's
    teardown ("terminate called without an active exception"). A launched process now skips that teardown (an
    atexit handler stands for it here), its output flushed and its exit code kept; a plain run ends as usual."""
    script = ("import atexit, sys, pathlib, torch.distributed\n"
              "from rmt_cli.distributed import end_launched_process\n"
              f"atexit.register(lambda: pathlib.Path({str(tmp_path / 'teardown')!r}).write_text('ran'))\n"
              "sys.stdout.write('the answer'); sys.stderr.write('done: it')\n"
              "end_launched_process(3)\n"
              "sys.exit(4)\n")
    for world, code, torn_down in (("2", 3, False), ("1", 4, True)):
        r = subprocess.run([sys.executable, "-c", script], env={**os.environ, "WORLD_SIZE": world},
                           capture_output=True, text=True, timeout=120)
        assert (r.returncode, r.stdout, r.stderr) == (code, "the answer", "done: it")
        assert (tmp_path / "teardown").exists() == torn_down
