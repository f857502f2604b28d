"""Nothing from a checkpoint folder is ever executed, whatever standard input holds."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from rmt_cli.storage.checkpoint import save_checkpoint
from rmt_cli.cli import app
from rmt_cli.core.memory import MemoryCell
from rmt_cli.storage.recipe import MemorySpec

EVIL = '''
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import GPT2Config
class EvilConfig(GPT2Config):
    model_type = "gpt2"
'''


@pytest.fixture()
def evil_checkpoint(tmp_path, tokenizer, make_model):
    path = tmp_path / "evil"
    cell = MemoryCell(make_model("gpt2"), 2)
    save_checkpoint(path, cell, tokenizer, MemorySpec(num_mem_tokens=2, segment_size=24), "test")
    marker = tmp_path / "MARKER"
    (path / "evil.py").write_text(EVIL.format(marker=str(marker)))
    return path, marker


@pytest.mark.parametrize("config_name", ["config.json", "tokenizer_config.json"])
def test_no_command_runs_code_from_a_checkpoint(tmp_path, evil_checkpoint, config_name):
    path, marker = evil_checkpoint
    config = json.loads((path / config_name).read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig",
                          "AutoTokenizer": ["evil.EvilConfig", None]}
    (path / config_name).write_text(json.dumps(config))
    book = tmp_path / "book.txt"
    book.write_text("Mary went to the kitchen. " * 20)
    runs = [
        ["ingest", book, "-o", tmp_path / "m.st", "--model", path, "-q"],
        ["ingest", "-", "-o", tmp_path / "m2.st", "--model", path, "-q"],
        ["perplexity", book, "--model", path, "-q"],
        ["eval", "--noise", book, "--lengths", "50", "--samples", "2", "--model", path, "-q", "--json"],
    ]
    for args in runs:
        result = CliRunner().invoke(app, [str(a) for a in args], input="y\n" * 50)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert "auto_map" in result.stderr and "never runs code" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "[y/N]" not in result.stdout + result.stderr
        assert not marker.exists()
    # The same folder without the auto_map loads: the refusal is about the code, not the folder.
    del config["auto_map"]
    (path / config_name).write_text(json.dumps(config))
    ok = CliRunner().invoke(app, [str(a) for a in runs[0]])
    assert ok.exit_code == 0, ok.stderr
    assert not marker.exists()


def test_output_onto_a_fifo_is_refused_and_left_alone(tmp_path, checkpoint):
    import os
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    book = tmp_path / "book.txt"
    book.write_text("Mary went to the kitchen. " * 10)
    r = CliRunner().invoke(app, ["ingest", str(book), "-o", str(fifo), "--model", str(checkpoint), "-q"])
    assert r.exit_code == 2 and "not a regular file" in r.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still the FIFO, not replaced by a memory file


def test_a_manifest_that_would_destroy_its_own_inputs_is_refused_before_writing(tmp_path, checkpoint):
    victim = tmp_path / "victim.txt"
    victim.write_text("Mary went to the kitchen. " * 10)
    other = tmp_path / "other.txt"
    other.write_text("John went to the garden. " * 10)
    for lines, words in (
        ([f"{other}\t{victim}", f"{victim}\t{tmp_path / 'v.st'}"], "another job's input"),
        ([f"{other}\t{tmp_path / 'same.st'}", f"{victim}\t{tmp_path / 'same.st'}"], "job 1 and job 2"),
    ):
        manifest = tmp_path / "jobs.tsv"
        manifest.write_text("\n".join(lines) + "\n")
        r = CliRunner().invoke(app, ["ingest", "--manifest", str(manifest), "--model", str(checkpoint), "-q"])
        assert r.exit_code == 2 and words in r.stderr, r.stderr
        assert victim.read_text().startswith("Mary went")
        assert not (tmp_path / "same.st").exists() and not (tmp_path / "v.st").exists()
