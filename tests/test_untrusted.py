"""Nothing from a checkpoint folder is ever executed, whatever standard input holds."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from rmt_cli.checkpoint import save_checkpoint
from rmt_cli.cli import app
from rmt_cli.memory import MemoryCell
from rmt_cli.recipe import MemorySpec

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
        ["eval", "--noise", book, "--lengths", "50", "--samples", "2", "--model", path, "-q"],
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
