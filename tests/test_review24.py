"""The twenty-fourth review (untuned, session 16: real models offline, training and its launchers, eval and
perplexity): each test holds a fault it found, reproduced as it was found."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ctrl_c_as_under_a_terminal

TRAIN = ["train", "recipes/memorize-tiny.yaml", "curriculum=[{segments: 1, steps: 1}]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rmt(args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "rmt_cli", *map(str, args)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, **kwargs)


def _lines(stderr: str) -> list[str]:
    """stderr without accelerate's warning about thread counts (two lines, said by every launched process)."""
    return [line for line in stderr.splitlines() if "OMP_NUM_THREADS" not in line and "warnings.warn" not in line]


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_launched_process_whose_peers_never_join_stops_after_the_join_timeout(tmp_path, rank):
    """`WORLD_SIZE=2 RANK=1 MASTER_ADDR=… MASTER_PORT=… rmt train …` alone waited in torch for half an hour, deaf to
    SIGTERM and SIGINT, and printed a C++ stack."""
    env = {"WORLD_SIZE": "2", "RANK": rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "RMT_JOIN_TIMEOUT": "3"}
    started = time.monotonic()
    process = _rmt([*TRAIN, f"output_dir={tmp_path / 'run'}"], env)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 1 and time.monotonic() - started < 60
    [line] = _lines(stderr)
    assert line.startswith(f"error: process {rank} of 2: the launched processes did not all join at 127.0.0.1:")
    assert "within 3 s (RMT_JOIN_TIMEOUT)" in line


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_the_wait_for_the_other_processes(tmp_path, stop):
    env = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "RMT_JOIN_TIMEOUT": "120"}
    process = _rmt([*TRAIN, f"output_dir={tmp_path / 'run'}"], env, preexec_fn=ctrl_c_as_under_a_terminal)
    time.sleep(8)  # into the wait: the imports and the recipe take a few seconds
    process.send_signal(stop)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 130 and _lines(stderr) == ["interrupted"]


LONE = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env, says", [
    ({"WORLD_SIZE": "2", "RANK": "1"}, "WORLD_SIZE=2 is set, but not MASTER_ADDR, MASTER_PORT"),
    # the twenty-seventh review: a process given a launcher's variables by hand, alone, was silent too
    ({**LONE, "RMT_JOIN_TIMEOUT": "0"}, "RMT_JOIN_TIMEOUT=0: seconds to wait"),
    ({**LONE, "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({**LONE, "MASTER_PORT": "notaport"}, "MASTER_PORT=notaport is not a number"),
    ({"WORLD_SIZE": "1", "RANK": "5"}, "RANK=5 is not below WORLD_SIZE=1"),
    ({"RMT_JOIN_TIMEOUT": "soon"}, "RMT_JOIN_TIMEOUT=soon: seconds to wait"),
])
def test_a_launch_environment_no_launcher_made_is_said(tmp_path, env, says):
    """`WORLD_SIZE=2 RANK=1` without a launcher's address: exit 2 with nothing said (a process other than the main
    one stays silent, but this one ran alone); `WORLD_SIZE=1 RANK=5` trained as if alone."""
    process = _rmt([*TRAIN, f"output_dir={tmp_path / 'run'}"], {"WORLD_SIZE": "", "RANK": "", **env})
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 2 and _lines(stderr) == [line for line in _lines(stderr) if says in line] != []
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("gguf", ["../../../../etc/passwd", "/tmp/elsewhere.gguf", "", "a\\\\..\\\\b.gguf"])
def test_a_gguf_file_outside_the_model_folder_is_refused(tmp_path, gguf):
    """`model.gguf_file: ../../etc/passwd` (or an absolute path) was opened, outside name_or_path's folder."""
    from rmt_cli import load_recipe
    from rmt_cli.errors import UsageError

    with pytest.raises(UsageError, match="gguf_file: .* is not a file inside name_or_path's folder"):
        load_recipe("recipes/memorize-tiny.yaml", [f"model.name_or_path={tmp_path}", f"model.gguf_file='{gguf}'"])


def test_a_gguf_file_linked_from_outside_the_model_folder_is_refused(tmp_path):
    """`model.gguf_file: evil.gguf`, a link in the folder to a file elsewhere, was opened (the twenty-seventh
    review)."""
    pytest.importorskip("gguf")
    from conftest import one_error_line, run_cli

    (tmp_path / "model").mkdir()
    (tmp_path / "elsewhere.gguf").write_bytes(b"GGUF" + bytes(100))
    (tmp_path / "model" / "evil.gguf").symlink_to(tmp_path / "elsewhere.gguf")
    r = run_cli(["train", "recipes/memorize-tiny.yaml", f"model.name_or_path={tmp_path / 'model'}",
                 "model.gguf_file=evil.gguf", "tokenizer.kind=model", f"output_dir={tmp_path / 'run'}"])
    one_error_line(r, 2, "model.gguf_file evil.gguf: a link to a file outside")


def test_a_gguf_that_cannot_be_read_is_named(tmp_path):
    """A corrupt GGUF was "cannot load the tokenizer of 'FOLDER'", naming the folder, not the file."""
    pytest.importorskip("gguf")
    from conftest import one_error_line, run_cli

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "corrupt.gguf").write_bytes(b"GGUF" + os.urandom(3000))
    r = run_cli(["train", "recipes/memorize-tiny.yaml", f"model.name_or_path={tmp_path / 'model'}",
                 "tokenizer.kind=model", f"output_dir={tmp_path / 'run'}"])
    one_error_line(r, 2, f"the GGUF file {tmp_path / 'model' / 'corrupt.gguf'}")


def test_an_output_dir_that_cannot_be_made_is_the_recipes_error():
    """`output_dir=/proc/x`: exit 1 with the bare "/proc/x: No such file or directory"."""
    from conftest import one_error_line, run_cli

    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    r = run_cli(["train", "recipes/memorize-tiny.yaml", "output_dir=/proc/x"])
    one_error_line(r, 2, "output_dir /proc/x: cannot be made: No such file or directory")


def test_a_text_too_short_for_a_flatness_figure_gives_none(checkpoint, tmp_path):
    """A two-token file printed a "flatness" of +0.699: one token's loss against another's."""
    import json

    from conftest import run_cli

    (tmp_path / "two.txt").write_text("Mary went")
    r = run_cli(["perplexity", tmp_path / "two.txt", "--model", checkpoint, "--json"])
    assert r.exit_code == 0, r.stderr
    memory = json.loads(r.stdout)["memory"]
    assert memory["flatness"] is None and memory["first_tenth"] is None
    (tmp_path / "long.txt").write_text("Mary went to the kitchen. Daniel moved to the garden. " * 20)
    scored = run_cli(["perplexity", tmp_path / "long.txt", "--model", checkpoint, "--json"])
    memory = json.loads(scored.stdout)["memory"]
    assert memory["flatness"] == pytest.approx(memory["first_tenth"] - memory["last_tenth"])
