"""A checkpoint folder loads completely or fails with one line saying what is wrong: never a traceback, never a
silent fallback (a one-entry tokenizer, re-initialised weights, default memory settings)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import FAMILIES
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from rmt_cli.storage.checkpoint import (
    MEMORY_FILE,
    MODEL_FILE,
    RMT_JSON,
    load_checkpoint,
    read_info,
    save_checkpoint,
)
from rmt_cli.storage.assets import resolve_model_path
from rmt_cli.cli import app
from rmt_cli.errors import UsageError
from rmt_cli.core.memory import MemoryCell
from rmt_cli.storage.fingerprint import architecture_settings
from rmt_cli.storage.modeling import EOS, PAD
from rmt_cli.storage.recipe import MemorySpec

M = 2  # memory tokens of the checkpoints below; the tiny models have 128 positions
SPEC = MemorySpec(num_mem_tokens=M, segment_size=24)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer, make_model):
    """name -> a checkpoint folder, written once; tests break copies of them."""
    root = tmp_path_factory.mktemp("checkpoints")
    models = {
        "gpt2": lambda: make_model("gpt2"),  # LM head tied to the embedding
        "llama": lambda: make_model("llama"),  # LM head of its own
        "llama-tied": lambda: make_model("llama", tie_word_embeddings=True),
        "gpt2-wide": lambda: make_model("gpt2", n_embd=64),
        "gpt2-small-vocab": lambda: make_model("gpt2", vocab_size=300),  # fewer rows than the tokenizer has ids
    }
    return {name: save_checkpoint(root / name, MemoryCell(build(), M), tokenizer, SPEC, "test")
            for name, build in models.items()}


@pytest.fixture()
def folder(tmp_path, saved):
    """A fresh copy of the gpt2 checkpoint, to break."""
    return shutil.copytree(saved["gpt2"], tmp_path / "ck")


def refused(path, *words):
    """load_checkpoint(path) raises UsageError with one printable line holding `words`; returns the line."""
    with pytest.raises(UsageError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.isprintable(), message  # no newline, carriage return, escape sequence, ...
    for word in words:
        assert word in message, (word, message)
    return message


def edit_json(path, name, change):
    data = json.loads((path / name).read_text())
    change(data)
    (path / name).write_text(json.dumps(data))


# --- tokenizer ----------------------------------------------------------------------------------------------------


def test_a_folder_without_tokenizer_files_is_refused(folder):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    refused(folder, "no tokenizer", "tokenizer.json")  # says which files it looked for


def test_a_tokenizer_of_a_few_entries_is_refused(folder):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {EOS: 0, PAD: 1, "Mary": 2, "kitchen": 3}
    tiny = Tokenizer(models.WordLevel(words, unk_token=PAD))
    PreTrainedTokenizerFast(tokenizer_object=tiny, eos_token=EOS, pad_token=PAD).save_pretrained(folder)
    refused(folder, "the tokenizer has 4 entries")


def test_a_tokenizer_with_ids_beyond_the_embedding_is_refused(saved):
    refused(saved["gpt2-small-vocab"], "ids up to 399", "300 rows")


@pytest.mark.parametrize("content", ['{"a": 1}', "[1, 2]", "{not json", "\x00\xff"])
def test_a_malformed_tokenizer_json_is_refused(folder, content):
    (folder / "tokenizer.json").write_text(content)
    refused(folder, "cannot load the tokenizer")


# --- weights --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama-tied"])
def test_tied_and_untied_models_load_without_complaint(saved, name):
    # A tied LM head is absent from model.safetensors by design: not a missing weight.
    stored = load_file(str(saved[name] / MODEL_FILE))
    assert ("lm_head.weight" in stored) == (name == "llama")
    loaded = load_checkpoint(saved[name])
    assert loaded.info["fingerprint"] == read_info(saved[name])["fingerprint"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_supported_family_passes_the_checks(tmp_path, tokenizer, make_model, family):
    # The checks must not refuse a sound checkpoint of any family the README lists (tied heads, projections, ...).
    cell = MemoryCell(make_model(family), M)
    save_checkpoint(tmp_path / family, cell, tokenizer, SPEC, "test")
    loaded = load_checkpoint(tmp_path / family)
    for name, tensor in cell.state_dict().items():
        assert torch.equal(loaded.cell.state_dict()[name], tensor), name
    # config.json read back gives the architecture settings (a part of the fingerprint) the model in memory had
    assert architecture_settings(loaded.cell.model.config) == architecture_settings(cell.model.config)


def test_weights_of_another_width_are_refused(folder, saved):
    shutil.copy(saved["gpt2-wide"] / MODEL_FILE, folder / MODEL_FILE)
    message = refused(folder, "model.safetensors does not fit config.json", "is of shape", "in the file")
    assert "more" in message  # every layer is off; the line names a few and counts the rest


def test_a_missing_weight_is_refused_not_reinitialised(folder):
    weights = load_file(str(folder / MODEL_FILE))
    del weights["transformer.h.1.mlp.c_fc.bias"]
    save_file(weights, str(folder / MODEL_FILE), metadata={"format": "pt"})
    refused(folder, "transformer.h.1.mlp.c_fc.bias is missing")


def test_an_unexpected_weight_is_refused(folder):
    weights = load_file(str(folder / MODEL_FILE))
    weights["transformer.extra.weight"] = torch.zeros(3)
    save_file(weights, str(folder / MODEL_FILE), metadata={"format": "pt"})
    refused(folder, "transformer.extra.weight is not a weight of this model")


def test_a_config_for_a_far_bigger_model_is_refused_before_anything_is_allocated(folder):
    edit_json(folder, "config.json", lambda c: c.update(vocab_size=10**9))  # 32e9 weights if it were allocated
    refused(folder, "config.json describes a model of", "model.safetensors holds")


def test_weights_that_are_not_finite_are_refused(folder):
    weights = load_file(str(folder / MODEL_FILE))
    weights["transformer.ln_f.weight"][0] = float("nan")
    save_file(weights, str(folder / MODEL_FILE), metadata={"format": "pt"})
    refused(folder, "transformer.ln_f.weight holds values that are not finite")


def with_embedding_as(tmp_path, saved, dtype):
    """A copy of the llama checkpoint whose embedding is stored as `dtype`: (folder, the stored tensor)."""
    folder = shutil.copytree(saved["llama"], tmp_path / "ck")
    weights = load_file(str(folder / MODEL_FILE))
    weights[EMBEDDING] = weights[EMBEDDING].to(dtype)
    save_file(weights, str(folder / MODEL_FILE), metadata={"format": "pt"})
    return folder, weights[EMBEDDING]


EMBEDDING = "model.embed_tokens.weight"
ENGINES = ["transformers", "native"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.bool, torch.complex64])
def test_weights_that_are_not_floating_point_are_refused(tmp_path, saved, dtype, engine):
    """The thirteenth review's L2: int8 or bool weights loaded (and answered nothing, exit 0), complex ones with
    PyTorch's two-line warning; on both engines."""
    folder, _ = with_embedding_as(tmp_path, saved, dtype)
    with pytest.raises(UsageError) as caught:
        load_checkpoint(folder, engine=engine)
    assert f"{MODEL_FILE}: {EMBEDDING} holds " in str(caught.value) and "floating point" in str(caught.value)
    memory = load_file(str(saved["llama"] / MEMORY_FILE))
    name = next(iter(memory))
    save_file({**memory, name: memory[name].to(dtype)}, str(folder / MEMORY_FILE))
    shutil.copy(saved["llama"] / MODEL_FILE, folder / MODEL_FILE)
    refused(folder, f"{MEMORY_FILE}: {name} holds ", "floating point")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_floating_point_weights_of_any_width_load(tmp_path, saved, dtype, engine):
    folder, stored = with_embedding_as(tmp_path, saved, dtype)
    loaded = load_checkpoint(folder, engine=engine)
    assert loaded.engine == engine
    assert torch.equal(loaded.cell.model.get_input_embeddings().weight.detach(), stored.to(torch.float32))


@pytest.mark.parametrize("name", [MODEL_FILE, MEMORY_FILE])
@pytest.mark.parametrize("damage", ["cut in half", "random bytes", "empty"])
def test_a_truncated_or_corrupt_tensor_file_is_refused(folder, name, damage):
    data = (folder / name).read_bytes()
    broken = {"cut in half": data[: len(data) // 2], "random bytes": os.urandom(len(data)), "empty": b""}[damage]
    (folder / name).write_bytes(broken)
    refused(folder, f"{name} is unreadable")


def test_a_memory_that_is_not_finite_is_refused(folder):
    save_file({"memory": torch.full((M, 32), float("inf"))}, str(folder / MEMORY_FILE))
    refused(folder, "memory holds values that are not finite")


def test_a_memory_file_with_a_gate_the_settings_do_not_use_is_refused(folder):
    # rmt.json that lost `update: gated` must not load a gated model as a replace-rule one.
    saved_memory = load_file(str(folder / MEMORY_FILE))
    save_file({**saved_memory, "gate.weight": torch.zeros(1, 32), "gate.bias": torch.zeros(1)},
              str(folder / MEMORY_FILE))
    refused(folder, "holds gate.bias, gate.weight", "'replace' does not use")


# --- rmt.json -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, words", [
    ("[1, 2]", "must hold a JSON object {...} at the top level, not a list"),
    ("{not json", "rmt.json is not valid JSON (line 1, column 2"),
    ("\udcff", "rmt.json is not UTF-8"),
    ('{"format_version": 1}', "rmt.json: memory: Field required"),
    ('{"format_version": "1", "memory": {}}', "format version '1', this rmt reads 1"),
    ("[" * 100_000, "nested too deeply"),
])
def test_an_unreadable_rmt_json_is_one_line(folder, content, words):
    (folder / RMT_JSON).write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(UsageError) as caught:
        read_info(folder)
    assert words in str(caught.value) and str(caught.value).isprintable()


def test_every_problem_of_the_memory_settings_is_reported_at_once(folder):
    def spoil(info):
        info["memory"].update(num_mem_tokens="eight", update="sometimes", gate_floor=[1])
        del info["memory"]["segment_size"]
        info["source"] = 3

    edit_json(folder, RMT_JSON, spoil)
    message = refused(folder, "rmt.json: memory.segment_size: missing", "rmt.json: memory.num_mem_tokens: Input should "
                      "be a valid integer", "memory.update: Input should be 'replace', 'gated', 'associative', "
                      "'gated-associative' or 'routed'", "memory.gate_floor", "rmt.json: source: ")
    assert message.count("; ") == 4


@pytest.mark.parametrize("value", [True, 2.0, "2"])
def test_memory_settings_are_read_in_the_json_types_rmt_writes(folder, value):
    # A recipe may say `2.0`; rmt.json is written by rmt, so anything but an integer means a damaged file.
    edit_json(folder, RMT_JSON, lambda info: info["memory"].update(num_mem_tokens=value))
    refused(folder, "memory.num_mem_tokens: Input should be a valid integer")


def test_an_unknown_memory_setting_is_named(folder):
    edit_json(folder, RMT_JSON, lambda info: info["memory"].update(segmnet_size=24))
    refused(folder, "memory.segmnet_size: unknown key; did you mean 'segment_size'?")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_segment_must_fit_the_models_positions_with_both_memories(tmp_path, saved, name):
    # A segment is laid out as [read memory, tokens, write memory]: position ids 0 .. segment + 2 x memory - 1.
    folder = shutil.copytree(saved[name], tmp_path / name)
    fits = 128 - 2 * M
    edit_json(folder, RMT_JSON, lambda info: info["memory"].update(segment_size=fits))
    assert load_checkpoint(folder).segment_size == fits
    edit_json(folder, RMT_JSON, lambda info: info["memory"].update(segment_size=fits + 1))
    refused(folder, f"rmt.json: memory.segment_size: a segment of {fits + 1} tokens", "the model has 128")
    edit_json(folder, RMT_JSON, lambda info: info["memory"].update(segment_size=10**40))
    refused(folder, "memory.segment_size")


# --- config.json ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, words", [
    ("{not json", "config.json is not valid JSON"),
    ("[1]", "config.json must hold a JSON object"),
    ('{"model_type": "nosuch"}', "model_type 'nosuch' is not an architecture transformers"),
    ("{}", "model_type None is not an architecture"),
    ('{"model_type": "gpt2", "n_embd": "wide"}', "config.json: "),
    ('{"model_type": "gpt2", "n_embd": 30, "n_head": 4}', "cannot load the model"),
    ('{"model_type": "gpt2", "dtype": "x"}', "config.json: "),
    ('{"model_type": "llama", "num_attention_heads": 0}', "config.json: "),
    # Even a weightless model is built layer by layer: this many layers would never finish.
    ('{"model_type": "gpt2", "n_layer": 1099511627776}', "n_layer is 1,099,511,627,776, but model.safetensors holds"),
])
def test_a_broken_config_is_one_line(folder, content, words):
    (folder / "config.json").write_text(content)
    refused(folder, words)


# --- text from the folder never reaches the terminal raw ------------------------------------------------------------


def test_text_from_the_files_is_escaped(folder):
    edit_json(folder, RMT_JSON, lambda info: info["memory"].update({"\x1b[31mred\nsecond line": 1}))
    message = refused(folder, "\\x1b[31mred\\nsecond line")
    assert "\x1b" not in message


def test_a_folder_name_with_a_newline_stays_on_one_line(tmp_path, saved):
    odd = shutil.copytree(saved["gpt2"], tmp_path / "odd\nname")
    assert load_checkpoint(odd).segment_size == SPEC.segment_size  # such a folder is fine in itself
    (odd / "tokenizer.json").unlink()
    refused(odd, "odd\\nname", "no tokenizer")


def test_a_folder_path_that_is_not_utf8_is_named_as_such(tmp_path, saved):
    """safetensors and tokenizers take UTF-8 paths only: such a folder was refused as an unreadable weights file."""
    odd = shutil.copytree(saved["gpt2"], tmp_path / os.fsdecode(b"mod\xe9l"))
    refused(odd, "mod\\udce9l", "path is not UTF-8", "rename the folder")
    (tmp_path / "plain").symlink_to(odd)  # as the message says: a UTF-8 name for it loads
    assert load_checkpoint(tmp_path / "plain").segment_size == SPEC.segment_size
    r = CliRunner().invoke(app, ["ingest", "-", "-o", str(tmp_path / "m.st"), "--model", str(odd), "-q"], input="Hi.")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "not UTF-8" in r.stderr, r.stderr
    assert not (tmp_path / "m.st").exists()


def _point(file, kind: str) -> None:
    if kind == "link to /dev/zero":
        file.symlink_to(os.devnull.replace("null", "zero"))
    elif kind == "folder":
        file.mkdir()
    elif kind == "looping link":
        file.symlink_to(file)
    else:  # a broken link
        file.symlink_to(file.parent / "nowhere")


@pytest.mark.parametrize("name, kind, words", [
    ("tokenizer_config.json", "link to /dev/zero", "is not a regular file"),  # transformers skipped it unsaid
    ("config.json", "link to /dev/zero", "is not a regular file"),
    ("tokenizer.json", "folder", "is a folder"),
    ("model.safetensors", "looping link", "a loop of symbolic links"),  # was "missing model.safetensors"
    ("generation_config.json", "broken link", "a broken symbolic link"),
])
def test_a_checkpoint_file_that_is_not_a_regular_file_is_refused(folder, name, kind, words):
    (folder / name).unlink()
    _point(folder / name, kind)
    refused(folder, f"{name}: {words}")


def test_a_looping_link_as_the_folder_is_named_as_one(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refused(tmp_path / "loop", "a loop of symbolic links")  # was "no such folder"


# --- the fingerprint covers config.json -------------------------------------------------------------------------


def _edit_config(folder, change):
    edit_json(folder, "config.json", change)
    return folder


def _other_rope_theta(config):
    rope = config.get("rope_parameters")  # transformers 5; rope_theta at the top level before
    (rope if isinstance(rope, dict) else config)["rope_theta"] = 500_000.0


def test_the_fingerprint_covers_the_architecture_settings_not_the_bookkeeping(tmp_path, saved):
    """Same weights, another rms_norm_eps or rope_theta: another model, whose memory files the first refuses. The
    keys that change no computation (where it was loaded from, the writer's version and dtype, a default written
    out or left out) leave the fingerprint as it was."""
    def copy(name):
        return shutil.copytree(saved["llama"], tmp_path / name)

    base = load_checkpoint(saved["llama"]).info["fingerprint"]
    eps = _edit_config(copy("eps"), lambda c: c.update(rms_norm_eps=1e-3))
    rope = _edit_config(copy("rope"), _other_rope_theta)
    for other in (eps, rope):
        assert load_checkpoint(other).info["fingerprint"] != base
    defaults = json.loads((saved["llama"] / "config.json").read_text())
    same = _edit_config(copy("same"), lambda c: (
        c.update(_name_or_path="/elsewhere", transformers_version="4.0.0", dtype="bfloat16", torch_dtype="float16",
                 architectures=["LlamaModel"], use_cache=not c.get("use_cache", True), attention_dropout=0.0),
        c.pop("attention_bias", None), c.pop("mlp_bias", None)))  # defaults (false) left out
    assert "attention_bias" in defaults or "mlp_bias" in defaults  # so leaving them out was tried
    assert load_checkpoint(same).info["fingerprint"] == base

    doc = tmp_path / "doc.txt"
    doc.write_text("Mary went to the garden. Daniel moved to the kitchen. " * 10)
    r = CliRunner().invoke(app, ["ingest", str(doc), "-o", str(tmp_path / "m.st"), "--model", str(saved["llama"]),
                                 "-q"])
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(app, ["ask", str(tmp_path / "m.st"), "Where is Mary?", "--model", str(eps)])
    assert r.exit_code == 2 and "made by another model" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = CliRunner().invoke(app, ["ask", str(tmp_path / "m.st"), "Where is Mary?", "--model", str(same)])
    assert r.exit_code == 0, r.stderr


def test_a_model_hint_from_a_memory_file_is_escaped(tmp_path):
    with pytest.raises(UsageError) as caught:
        resolve_model_path(None, hint="model\n\x1b[2Jcleared", default=tmp_path / "none")
    assert str(caught.value).isprintable() and "model\\n\\x1b[2Jcleared" in str(caught.value)


# --- random damage to rmt.json --------------------------------------------------------------------------------------

JSON_TREES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
MEMORY_KEYS = list(SPEC.model_dump()) + ["not_a_setting"]
TOP_KEYS = ["format_version", "memory", "source", "fingerprint", "rmt_version", "extra"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(["top", "memory", "whole"]), key=st.sampled_from(TOP_KEYS + MEMORY_KEYS),
       value=JSON_TREES)
def test_random_values_in_rmt_json_load_or_fail_in_one_line(saved, tmp_path_factory, where, key, value):
    folder = tmp_path_factory.mktemp("mutated")
    for item in saved["gpt2"].iterdir():
        os.symlink(item, folder / item.name)
    info = read_info(saved["gpt2"])
    if where == "whole":
        info = value
    elif where == "top":
        info[key] = value
    else:
        info["memory"][key] = value
    (folder / RMT_JSON).unlink()
    (folder / RMT_JSON).write_text(json.dumps(info))
    try:
        load_checkpoint(folder)
        event("loaded")
    except UsageError as e:
        event("refused")
        assert str(e).isprintable() and len(str(e)) < 2000, str(e)


# --- through the CLI ------------------------------------------------------------------------------------------------


def _no_tokenizer(path, saved):
    (path / "tokenizer.json").unlink()


def _wide_weights(path, saved):
    shutil.copy(saved["gpt2-wide"] / MODEL_FILE, path / MODEL_FILE)


def _truncated_weights(path, saved):
    data = (path / MODEL_FILE).read_bytes()
    (path / MODEL_FILE).write_bytes(data[: len(data) // 2])


def _rmt_json_list(path, saved):
    (path / RMT_JSON).write_text("[]")


def _memory_size_in_words(path, saved):
    edit_json(path, RMT_JSON, lambda info: info["memory"].update(num_mem_tokens="eight"))


def _config_not_json(path, saved):
    (path / "config.json").write_text("{\n")


def _segment_too_long(path, saved):
    edit_json(path, RMT_JSON, lambda info: info["memory"].update(segment_size=1000))


@pytest.mark.parametrize("breaking, words", [
    (_no_tokenizer, "no tokenizer"),
    (_wide_weights, "does not fit config.json"),
    (_truncated_weights, "model.safetensors is unreadable"),
    (_rmt_json_list, "not a list"),
    (_memory_size_in_words, "memory.num_mem_tokens"),
    (_config_not_json, "config.json is not valid JSON"),
    (_segment_too_long, "memory.segment_size"),
])
def test_cli_reports_a_broken_checkpoint_in_one_line(tmp_path, saved, breaking, words):
    model = shutil.copytree(saved["gpt2"], tmp_path / "new\nmodel")  # and a folder name that could split a line
    breaking(model, saved)
    doc = tmp_path / "doc.txt"
    doc.write_text("Mary went to the kitchen. " * 50)
    result = CliRunner().invoke(app, ["ingest", str(doc), "-o", str(tmp_path / "m.st"), "--model", str(model), "-q"])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint ") and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout and result.stdout == ""
    assert not (tmp_path / "m.st").exists()


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_half_folder(tmp_path, checkpoint):
    """The tenth review's Y6: training's checkpoint write at a file size limit (or on a full disk) ended in a
    55-line safetensors traceback and left `step-N.tmp` behind. A process whose files may not exceed 20 kB (Python
    ignores SIGXFSZ, so the write fails with EFBIG) now gets one RMTError naming the checkpoint."""
    target = tmp_path / "ckpt"
    code = f"""
import resource, sys
from rmt_cli.errors import RMTError
from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
loaded = load_checkpoint({str(checkpoint)!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    save_checkpoint({str(target)!r}, loaded.cell, loaded.tokenizer, loaded.memory_settings, "test")
except RMTError as e:
    print(e)
    sys.exit(1)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1, done.stderr[-2000:]
    message = done.stdout.strip()
    assert message.startswith(f"{target}: cannot write the checkpoint: ") and "File too large" in message, message
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
