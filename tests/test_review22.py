"""The twenty-second review (untuned, session 15: a crafted set of memory files and checkpoint folders, and the
Python API): each test holds a fault it found, reproduced as it was found."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import MEMFILE_TEXT, one_error_line, run_cli as run
from rmt_cli.errors import UsageError


def test_a_bf16_memory_beyond_the_float16_range_is_refused(memfile, tmp_path):
    """A bf16 memory of 65536 (65504 rounds up in bf16) passed the ±65504 check, made in bf16 where 65504 itself
    is 65536; `rmt ask` then failed with exit 1, blaming the model's config."""
    from rmt_cli import load_memory

    with safe_open(str(memfile), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(memfile)
    tensors["memory"] = torch.full_like(tensors["memory"], 65536.0).to(torch.bfloat16)
    metadata = {**metadata, "dtype": "bfloat16"}
    metadata.pop("tensors_sha256", None)
    save_file(tensors, tmp_path / "big.st", metadata=metadata)
    with pytest.raises(UsageError, match=r"tensor memory.*beyond ±65504"):
        load_memory(tmp_path / "big.st")


def test_a_checkpoint_whose_initial_memory_is_beyond_the_float16_range_is_refused_at_load(tmp_path, checkpoint):
    """An initial memory of 1e30 loaded; every ingest then failed (exit 1) blaming the model's config."""
    from rmt_cli import load_checkpoint

    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    tensors = load_file(copy / "memory.safetensors")
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], 1e30)
    save_file(tensors, copy / "memory.safetensors")
    with pytest.raises(UsageError, match=f"memory.safetensors: {name} holds values that are not finite numbers or "
                                         f"beyond ±65504"):
        load_checkpoint(copy)


def test_a_fingerprint_in_rmt_json_that_is_no_fingerprint_is_refused(tmp_path, checkpoint):
    """`"fingerprint": "zz"` in rmt.json was accepted without a word."""
    from rmt_cli import load_checkpoint

    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    info = json.loads((copy / "rmt.json").read_text())
    (copy / "rmt.json").write_text(json.dumps({**info, "fingerprint": "zz"}))
    with pytest.raises(UsageError, match="fingerprint"):
        load_checkpoint(copy)


@pytest.mark.parametrize("call, says", [
    (lambda m, st, t: __import__("rmt_cli").ask(m, st, "Where is Mary?", temperature=10**30),
     "temperature 1000000000000000000000000000000: a finite number from 0 to 10000"),
    (lambda m, st, t: __import__("rmt_cli").save_checkpoint("", m.cell, m.tokenizer, m.memory_settings, "x"),
     "save_checkpoint: an empty path"),
    (lambda m, st, t: __import__("rmt_cli").ingest(None, m), "jobs: an IngestJob or a list of them, not NoneType"),
    (lambda m, st, t: __import__("rmt_cli").ingest("", m), "jobs: an IngestJob or a list of them, not str"),
    (lambda m, st, t: __import__("rmt_cli").ingest(t, m), "jobs: an IngestJob or a list of them, not PosixPath"),
    (lambda m, st, t: __import__("rmt_cli").load_checkpoint(m.path, upgrade="x"),
     "upgrade: memory settings (a MemorySpec) or None, not str"),
])
def test_the_api_refuses_these_arguments_in_one_usage_error(memfile, checkpoint, tmp_path, call, says):
    """A raw OverflowError, ValueError, TypeError or AttributeError from deep inside; `ingest('', m)` did nothing
    without a word."""
    from rmt_cli import load_checkpoint, load_memory

    (tmp_path / "s.txt").write_text(MEMFILE_TEXT)
    with pytest.raises(UsageError, match=__import__("re").escape(says)):
        call(load_checkpoint(checkpoint), load_memory(memfile), tmp_path / "s.txt")
    assert not any(tmp_path.glob("*.st"))


def test_a_temperature_within_the_bound_still_samples(memfile, checkpoint):
    r = run(["ask", memfile, "Where is Mary?", "--model", checkpoint, "--temperature", "10000", "--seed", "1"])
    assert r.exit_code == 0, r.stderr


def test_nul_bytes_after_a_text_beginning_are_said(tmp_path, checkpoint):
    """20 KB of text, then zeros (a preallocated file, a text header on binary data): ingested without a word, each
    NUL a token; NUL bytes at the start are refused as binary."""
    data = (MEMFILE_TEXT * 40).encode()  # past the 8 KiB head the binary check reads
    (tmp_path / "padded.txt").write_bytes(data + b"\0" * 500)
    r = run(["ingest", tmp_path / "padded.txt", "-o", tmp_path / "p.st", "--model", checkpoint, "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["warnings"] == [
        f"500 NUL bytes in {tmp_path / 'padded.txt'}, read as text after a text beginning: is it binary data?"]
    (tmp_path / "plain.txt").write_bytes(data)
    r = run(["ingest", tmp_path / "plain.txt", "-o", tmp_path / "q.st", "--model", checkpoint, "--json", "-q"])
    assert json.loads(r.stdout)["warnings"] == []


@pytest.mark.parametrize("engine", ["auto", "transformers"])
@pytest.mark.parametrize("damage, says", [
    ("weight", "holds values beyond ±65504, which no trained weight reaches"),
    ("epsilon", "config.json: rms_norm_eps 1e+300; a norm's epsilon is a small number from 0 to 1"),
])
def test_a_checkpoint_of_finite_but_absurd_values_is_refused_at_load(tmp_path, damage, says, engine):
    """A weight of 1e30, or `rms_norm_eps: 1e300`: loaded, and every answer was "" with exit 0."""
    from rmt_cli import load_checkpoint
    from rmt_cli.storage.assets import DEFAULT_MODEL_DIR

    copy = tmp_path / "ck"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    if damage == "weight":
        weights = load_file(copy / "model.safetensors")
        name = next(k for k in weights if "norm" in k)
        weights[name] = torch.full_like(weights[name], 1e30)
        save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    else:
        config = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e300}))
    with pytest.raises(UsageError, match=__import__("re").escape(says)):
        load_checkpoint(copy, engine=engine)


@pytest.mark.parametrize("head, loads", [("other", False), ("same", True)])
def test_a_head_of_its_own_beside_a_tied_embedding_is_refused(tmp_path, checkpoint, head, loads):
    """model.safetensors with an `lm_head.weight` of other values beside an embedding that config.json ties it
    to: transformers left the two apart (a warning), and the model answered "" with exit 0. A head equal to the
    embedding, as some savers write it, is tied and loads."""
    from rmt_cli import load_checkpoint

    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    assert json.loads((copy / "config.json").read_text()).get("tie_word_embeddings", True)
    tensors = load_file(copy / "model.safetensors")
    [embedding] = [name for name in tensors if name.endswith("wte.weight")]
    tensors["lm_head.weight"] = tensors[embedding].clone() if head == "same" else torch.zeros_like(tensors[embedding])
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    if loads:
        model = load_checkpoint(copy)
        assert model.cell.model.get_output_embeddings().weight is model.cell.model.get_input_embeddings().weight
    else:
        with pytest.raises(UsageError, match="LM head with values of its own.*tie_word_embeddings"):
            load_checkpoint(copy)


def test_default_model_given_an_empty_dtype_refuses_it():
    """`default_model('')` loaded the model in bfloat16 as if no dtype were given ('' is falsy)."""
    from rmt_cli import default_model

    with pytest.raises(UsageError, match="dtype '': a floating-point torch dtype"):
        default_model("")


def test_the_api_refuses_a_memory_whose_dtype_is_not_the_one_its_fingerprint_was_made_in(memfile, checkpoint,
                                                                                         tmp_path):
    """A memory file of a float32 model relabelled bfloat16 (its fingerprint kept): `rmt ask` loads the model in
    bfloat16 and refuses the fingerprint, but the API's `ask` with the float32 model took it. `force` still does."""
    from rmt_cli import ask, load_checkpoint, load_memory

    with safe_open(str(memfile), "pt") as f:
        metadata = f.metadata()
    assert metadata["dtype"] == "float32"
    tensors = load_file(memfile)
    tensors["memory"] = tensors["memory"].to(torch.bfloat16)
    metadata = {**metadata, "dtype": "bfloat16"}
    metadata.pop("tensors_sha256", None)
    save_file(tensors, tmp_path / "relabelled.st", metadata=metadata)
    model, state = load_checkpoint(checkpoint), load_memory(tmp_path / "relabelled.st")
    with pytest.raises(UsageError, match=r"made by another model or setting .* in bfloat16; this model .* in float32"):
        ask(model, state, "Where is Mary?")
    assert ask(model, state, "Where is Mary?", force=True).tokens > 0


@pytest.mark.parametrize("config, says", [("[1, 2]", "config.json must hold a JSON object {...} at the top level, "
                                                      "not a list"),
                                          ("{oops", "config.json is not valid JSON (line 1, column 2")])
def test_a_base_models_config_json_that_is_no_object_is_named(tmp_path, checkpoint, config, says):
    """A base model's config.json holding a list was reported as "cannot load the tokenizer of …"."""
    from test_review18 import _base_model_folder, _base_model_recipe

    folder = _base_model_folder(tmp_path, checkpoint, "base")
    (folder / "config.json").write_text(config)
    one_error_line(run(["train", _base_model_recipe(tmp_path, folder)]), 2, says)


def test_a_non_finite_recipe_value_is_reported_with_the_recipes_other_errors(tmp_path):
    """`seed=.inf` was the only error said, hiding the recipe's others (a second round for each); the value a
    non-finite number or a NUL stood in for is not reported again as of the wrong type."""
    from conftest import TINY_RECIPE
    from rmt_cli import load_recipe

    recipe = {**TINY_RECIPE, "task": {"name": "bogus"}, "seed": float("nan")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(UsageError) as raised:
        load_recipe(tmp_path / "r.yaml", ["curriculum.0.steps=.inf", 'output_dir="a\\0b"'])
    lines = str(raised.value).splitlines()
    assert sorted(line.split(": ")[1] for line in lines) == ["curriculum.0.steps", "output_dir", "seed", "task.name"]
    assert sum("finite number" in line for line in lines) == 2 and sum("NUL" in line for line in lines) == 1
    assert not any("valid integer" in line or "valid string" in line for line in lines)
