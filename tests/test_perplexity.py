"""Language-model training and `rmt perplexity`: memory vs reset vs baseline, series, errors."""

import json

import pytest
from typer.testing import CliRunner

from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.cli import app
from rmt_cli.errors import UsageError
from rmt_cli.core.memory import MemoryCell
from rmt_cli.commands.perplexity import perplexity
from rmt_cli.storage.recipe import MemorySpec, validate_recipe
from rmt_cli.commands.train import train

TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. " * 3 +
        "Mary moved to the garden and John went back to the hallway. " * 3) * 6


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer, make_model):
    root = tmp_path_factory.mktemp("ppl")
    out = {}
    for name, mem, seg in (("rmt", 2, 24), ("base", 0, 24), ("other", 2, 16)):
        cell = MemoryCell(make_model("gpt2", seed=3), num_mem_tokens=mem)
        out[name] = save_checkpoint(root / name, cell, tokenizer, MemorySpec(num_mem_tokens=mem, segment_size=seg),
                                    "test")
    return out


def test_scores_memory_reset_and_baseline_in_one_pass(tmp_path, checkpoints):
    book = tmp_path / "book.txt"
    book.write_text(TEXT)
    model, base = load_checkpoint(checkpoints["rmt"]), load_checkpoint(checkpoints["base"])
    result = perplexity([str(book)], model, base)
    mem, reset, baseline = result["memory"], result["memory_reset"], result["baseline"]
    assert result["tokens"] == len(model.tokenizer.encode(TEXT, add_special_tokens=False))
    assert mem["tokens"] == reset["tokens"] == baseline["tokens"]
    # The first segment starts from the initial memory either way; later ones differ only through memory.
    assert mem["loss_by_segment"][0] == pytest.approx(reset["loss_by_segment"][0], abs=1e-6)
    assert mem["loss_by_segment"][1:] != pytest.approx(reset["loss_by_segment"][1:], abs=1e-6)
    assert len(mem["loss_by_position"]) == 24 and mem["loss_by_position"][0] is None
    assert result["segments"] == len(mem["loss_by_segment"]) > 3


def test_max_tokens_and_streaming_prefix(tmp_path, checkpoints):
    book = tmp_path / "book.txt"
    book.write_text(TEXT)
    model = load_checkpoint(checkpoints["rmt"])
    full = perplexity([str(book)], model)
    head = perplexity([str(book)], model, max_tokens=48)
    assert head["tokens"] == 48 and head["segments"] == 2
    assert head["memory"]["loss_by_segment"] == pytest.approx(full["memory"]["loss_by_segment"][:2])


def test_baseline_with_other_segment_size_is_refused(tmp_path, checkpoints):
    book = tmp_path / "book.txt"
    book.write_text(TEXT)
    with pytest.raises(UsageError, match="segment"):
        perplexity([str(book)], load_checkpoint(checkpoints["rmt"]), load_checkpoint(checkpoints["other"]))


def test_cli_prints_perplexity_alone_on_stdout(tmp_path, checkpoints):
    book = tmp_path / "book.txt"
    book.write_text(TEXT)
    runner = CliRunner()
    r = runner.invoke(app, ["perplexity", str(book), "--model", str(checkpoints["rmt"])])
    assert r.exit_code == 0, r.stderr
    value = float(r.stdout.strip())
    r = runner.invoke(app, ["perplexity", str(book), "--model", str(checkpoints["rmt"]), "--json", "-q"])
    assert json.loads(r.stdout)["memory"]["perplexity"] == pytest.approx(value, rel=1e-4)
    r = runner.invoke(app, ["perplexity", str(tmp_path / "nope.txt"), "--model", str(checkpoints["rmt"])])
    assert r.exit_code == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_plot_or_clear_message(tmp_path, checkpoints):
    book = tmp_path / "book.txt"
    book.write_text(TEXT)
    r = CliRunner().invoke(app, ["perplexity", str(book), "--model", str(checkpoints["rmt"]), "-q",
                                 "--plot", str(tmp_path / "loss.png")])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.exit_code == 2 and "matplotlib" in r.stderr
    else:
        assert r.exit_code == 0 and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_lm_recipe_trains_and_memory_changes_loss(tmp_path):
    (tmp_path / "book.txt").write_text(TEXT * 3)
    recipe = validate_recipe({
        "output_dir": str(tmp_path / "run"), "threads": 2,
        "model": {"architecture": "gpt2", "config": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
        "tokenizer": {"kind": "bpe", "vocab_size": 300},
        "memory": {"num_mem_tokens": 2, "segment_size": 16},
        "task": {"name": "lm", "lm_paths": [str(tmp_path / "book.txt")], "noise": {"kind": "none"}},
        "batch_size": 4, "curriculum": [{"segments": 2, "steps": 4}],
        "eval": {"samples": 4, "segments": [2]},
    })
    result = train(recipe, progress=False)
    [row] = result.evaluations
    assert row["loss"] > 0 and row["loss"] != row["loss_reset"]
    model = load_checkpoint(result.final_checkpoint)
    assert perplexity([str(tmp_path / "book.txt")], model, max_tokens=64)["tokens"] == 64


def test_embedded_default_model_works_without_model_option(tmp_path):
    from rmt_cli.storage.assets import DEFAULT_LM_DIR

    book = tmp_path / "book.txt"
    book.write_text(TEXT)
    r = CliRunner().invoke(app, ["perplexity", str(book), "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["model"] == str(DEFAULT_LM_DIR)
    assert 1 < result["memory"]["perplexity"] < 5000
    assert result["memory"]["tokens"] == result["memory_reset"]["tokens"] > 100


def test_perplexity_reads_a_folder_like_ingest(tmp_path, checkpoints):
    root = tmp_path / "code"
    root.mkdir()
    (root / "b.py").write_text(TEXT[:400])
    (root / "a.py").write_text(TEXT[400:800])
    (root / ".hidden.py").write_text(TEXT)
    model = load_checkpoint(checkpoints["rmt"])
    folder = perplexity([str(root)], model)
    by_hand = tmp_path / "joined.txt"  # what the folder reads as: sorted files, each after its path header
    by_hand.write_text("\n<<< file: a.py >>>\n" + TEXT[400:800] + "\n<<< file: b.py >>>\n" + TEXT[:400])
    assert folder["memory"]["loss_by_segment"] == pytest.approx(perplexity([str(by_hand)], model)["memory"]["loss_by_segment"])
