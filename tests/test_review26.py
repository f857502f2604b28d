"""The twenty-sixth review (untuned, session 16: the Python API as an engineer building on it uses it, encoders,
state objects, extend): each test holds a fault it found, reproduced as it was found."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import MEMFILE_TEXT
from test_encoder import word_tokenizer  # noqa: F401 - the fixture
from rmt_cli.errors import UsageError


@pytest.mark.parametrize("where", ["checkpoint", "default"])
def test_text_spelling_a_special_token_is_read_as_text(checkpoint, tmp_path, where):
    """"<|endoftext|>" in a document (rmt's own source holds it) became the end token, and "[SEP]" an encoder's
    separator; a question spelling one changed the answer."""
    from rmt_cli import IngestJob, default_model, ingest, load_checkpoint, load_memory

    model = load_checkpoint(checkpoint) if where == "checkpoint" else default_model()
    eos = model.tokenizer.eos_token
    assert model.tokenizer.encode(f"a {eos} b", add_special_tokens=False).count(model.tokenizer.eos_token_id) == 0
    (tmp_path / "t.txt").write_text(f"Mary went to the kitchen. {eos} Daniel")
    [result] = ingest([IngestJob([str(tmp_path / "t.txt")], tmp_path / "t.st")], model)
    assert result.error is None
    state = load_memory(tmp_path / "t.st")
    assert model.tokenizer.eos_token_id not in state.tail_tokens
    assert model.tokenizer.eos_token in model.tokenizer.decode(state.tail_tokens) + state.carry_text


def test_an_encoders_tokenizer_reads_its_separator_in_text_as_text():
    from transformers import BertTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from rmt_cli.storage.modeling import with_needed_tokens

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[", "]", "sep", "cls", "a"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = with_needed_tokens(BertTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]",
                                               pad_token="[PAD]", unk_token="[UNK]"), "t", encoder=True)
    ids = tok.encode("a [SEP] [CLS] a", add_special_tokens=False)
    assert tok.sep_token_id not in ids and tok.cls_token_id not in ids


def test_a_model_left_in_training_mode_ingests_and_answers_as_in_eval_mode(checkpoint, tmp_path):
    """A cell left in training mode (dropout on) gave memory files that differed from call to call, under the
    fingerprint of the model; the mode it was in is kept after the call."""
    from rmt_cli import IngestJob, ask, ingest, load_checkpoint, load_memory

    model = load_checkpoint(checkpoint)
    (tmp_path / "t.txt").write_text(MEMFILE_TEXT * 3)
    [r] = ingest([IngestJob([str(tmp_path / "t.txt")], tmp_path / "eval.st")], model)
    assert r.error is None and not model.cell.training
    model.cell.model.config.resid_pdrop = 0.5
    for module in model.cell.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    model.cell.train()
    for name in ("train1.st", "train2.st"):
        [r] = ingest([IngestJob([str(tmp_path / "t.txt")], tmp_path / name)], model)
        assert r.error is None and model.cell.training
    files = [load_file(tmp_path / name) for name in ("eval.st", "train1.st", "train2.st")]
    assert all(torch.equal(files[0]["memory"], other["memory"]) for other in files[1:])
    state = load_memory(tmp_path / "eval.st")
    answers = {ask(model, state, "Where is Mary?").logprob for _ in range(3)}
    assert len(answers) == 1 and model.cell.training


def test_load_recipe_applies_overrides_given_as_a_generator():
    """`load_recipe(path, (o for o in ["seed=3"]))` applied none: the type check used the generator up."""
    from conftest import TINY_RECIPE
    from rmt_cli import load_recipe

    assert load_recipe("recipes/memorize-tiny.yaml", (o for o in ["seed=3"])).seed == 3
    with pytest.raises(UsageError, match="overrides: a list of key=value texts, not int"):
        load_recipe("recipes/memorize-tiny.yaml", 5)
    assert TINY_RECIPE  # the recipe the other tests use is untouched


@pytest.fixture
def gated(tmp_path, tokenizer, make_model):
    """A gated causal checkpoint's parts: (cell, tokenizer, settings)."""
    from rmt_cli.core.memory import MemoryCell
    from rmt_cli.storage.recipe import MemorySpec

    cell = MemoryCell(make_model("gpt2"), num_mem_tokens=2, update="gated", gate_floor=0.001)
    return cell, tokenizer, MemorySpec(num_mem_tokens=2, segment_size=24, update="gated", gate_floor=0.001)


@pytest.mark.parametrize("change, says", [
    ("nan weight", "the model's weight transformer.wte.weight holds values that are not finite numbers"),
    ("huge weight", "beyond ±65504"),
    ("rule", "the memory settings say update 'replace', the cell has 'gated'"),
    ("gate floor", "the memory settings say gate_floor 0.5, the cell has 0.001"),
    ("segment size", "memory settings: segment_size"),
    ("native model", "the native engine's model is for inference"),
    ("no tokenizer", "tokenizer: the model's transformers tokenizer, not NoneType"),
    ("extra nan", "extra: Out of range float values are not JSON compliant"),
    ("extra object", "extra: Object of type object is not JSON serializable"),
    ("inside a checkpoint", "is inside the checkpoint folder"),
    ("huge memory", "the cell's memory holds values that are not finite numbers or beyond ±65504"),
    ("source", "source: a text saying where the model came from, not int"),
])
def test_save_checkpoint_writes_nothing_its_loader_refuses(gated, tmp_path, change, says):
    """save_checkpoint wrote NaN weights, a rule or gate floor other than the cell's, a segment size of -3, an
    rmt.json holding NaN; raised AttributeError or TypeError for a native model, no tokenizer or an `extra` that is
    no JSON; and nested a checkpoint in another, which then could no longer be replaced."""
    from rmt_cli import default_model, save_checkpoint

    cell, tokenizer, memory = gated
    target, extra = tmp_path / "ck", None
    if change == "nan weight":
        with torch.no_grad():
            cell.model.transformer.wte.weight[0, 0] = float("nan")
    elif change == "huge weight":
        with torch.no_grad():
            cell.model.transformer.wte.weight[0, 0] = 1e30
    elif change == "rule":
        memory = memory.model_copy(update={"update": "replace"})
    elif change == "gate floor":
        memory = memory.model_copy(update={"gate_floor": 0.5})
    elif change == "segment size":
        memory = memory.model_copy(update={"segment_size": -3})
    elif change == "native model":
        native = default_model()
        cell, tokenizer, memory = native.cell, native.tokenizer, native.memory_settings
    elif change == "no tokenizer":
        tokenizer = None
    elif change == "extra nan":
        extra = {"a": float("nan")}
    elif change == "extra object":
        extra = {"a": object()}
    elif change == "huge memory":  # the twenty-seventh review: 1e30 or 70000 in the initial memory was written
        with torch.no_grad():
            cell.memory.view(-1)[0] = 70000.0
    else:
        save_checkpoint(tmp_path / "outer", cell, tokenizer, memory, "test")
        target = tmp_path / "outer" / "sub"
    source = 5 if change == "source" else "test"
    with pytest.raises(UsageError, match=f"not written: .*{says}" if change != "inside a checkpoint" else says):
        save_checkpoint(target, cell, tokenizer, memory, source, extra=extra)
    assert not target.exists() and not target.with_name("ck.tmp").exists()


def test_save_checkpoint_shows_no_library_bar(gated, tmp_path, capfd):
    from rmt_cli import save_checkpoint

    cell, tokenizer, memory = gated
    capfd.readouterr()
    save_checkpoint(tmp_path / "ck", cell, tokenizer, memory, "test")
    assert "Writing model shards" not in capfd.readouterr().err


def test_load_checkpoint_for_inference_loads_the_dtype_the_commands_load(tmp_path):
    """`load_checkpoint(path, engine="auto")` of the bf16 embedded model loaded float32: its memory files and
    perplexities were not the commands', and each refused the other's memory files."""
    from conftest import run_cli
    from rmt_cli import IngestJob, ask, ingest, load_checkpoint, load_memory
    from rmt_cli.storage.assets import DEFAULT_MODEL_DIR

    assert load_checkpoint(DEFAULT_MODEL_DIR).cell.dtype == torch.float32  # for training
    model = load_checkpoint(DEFAULT_MODEL_DIR, engine="auto")
    assert model.cell.dtype == torch.bfloat16
    (tmp_path / "t.txt").write_text(MEMFILE_TEXT * 5)
    assert run_cli(["ingest", tmp_path / "t.txt", "-o", tmp_path / "cli.st", "-q"]).exit_code == 0
    ingest([IngestJob([str(tmp_path / "t.txt")], tmp_path / "api.st")], model)
    assert load_memory(tmp_path / "api.st").fingerprint == load_memory(tmp_path / "cli.st").fingerprint
    assert ask(model, load_memory(tmp_path / "cli.st"), "Where is Mary?").tokens > 0


def test_a_missing_append_from_stops_the_plan_before_anything_is_written(checkpoint, tmp_path):
    """A typo in one job's `append_from` let the other documents be written and failed that one alone, where a
    typo in an input stops the batch first."""
    from rmt_cli import IngestJob, ingest, load_checkpoint

    (tmp_path / "t.txt").write_text(MEMFILE_TEXT)
    jobs = [IngestJob([str(tmp_path / "t.txt")], tmp_path / "g1.st"),
            IngestJob([str(tmp_path / "t.txt")], tmp_path / "g2.st", append_from=tmp_path / "typo.st")]
    with pytest.raises(UsageError, match="typo.st"):
        ingest(jobs, load_checkpoint(checkpoint))
    assert not (tmp_path / "g1.st").exists()


def test_an_encoders_answers_edited_after_loading_change_its_fingerprint(tmp_path, word_tokenizer):
    """Reversing a loaded encoder's answers kept its fingerprint: its old memories were read with the labels
    swapped; fewer answers than the classifier scores were taken too."""
    from test_encoder import M, SEGMENT, encoder_cell

    from rmt_cli import IngestJob, ask, ingest, load_checkpoint, load_memory, save_checkpoint
    from rmt_cli.storage.recipe import MemorySpec

    cell = encoder_cell(word_tokenizer)
    save_checkpoint(tmp_path / "enc", cell, word_tokenizer, MemorySpec(num_mem_tokens=M, segment_size=SEGMENT), "t")
    model = load_checkpoint(tmp_path / "enc")
    (tmp_path / "t.txt").write_text("daniel went back to the hallway . " * 4)
    ingest([IngestJob([str(tmp_path / "t.txt")], tmp_path / "m.st")], model)
    state = load_memory(tmp_path / "m.st")
    assert ask(model, state, "where is daniel ?").answer in model.cell.answers
    model.cell.answers.reverse()
    with pytest.raises(UsageError, match="made by another model or setting"):
        ask(model, state, "where is daniel ?")
    del model.cell.answers[1:]
    with pytest.raises(UsageError, match="the encoder's answers: 1 names for the"):
        ask(model, state, "where is daniel ?", force=True)


@pytest.mark.parametrize("field, value", [("segment_size", "24"), ("num_mem_tokens", "2")])
def test_a_state_field_of_another_type_is_named(memfile, checkpoint, field, value):
    """`dataclasses.replace(state, segment_size="128")`: "made for segments of 128 tokens; this model reads 128"."""
    import dataclasses

    from rmt_cli import ask, load_checkpoint, load_memory

    state = dataclasses.replace(load_memory(memfile), **{field: value})
    with pytest.raises(UsageError, match=f"{field} is .*, not of its type"):
        ask(load_checkpoint(checkpoint), state, "Where is Mary?")


def test_force_is_a_bool_and_a_memory_file_is_no_folder(memfile, checkpoint, tmp_path):
    """`ask(..., force="no")` and `ingest(..., force="x")` forced; `save_memory("dir/", s)` wrote a file named dir."""
    from rmt_cli import IngestJob, ask, ingest, load_checkpoint, load_memory, save_memory

    model, state = load_checkpoint(checkpoint), load_memory(memfile)
    with pytest.raises(UsageError, match="force: True or False, not str"):
        ask(model, state, "Where is Mary?", force="no")
    with pytest.raises(UsageError, match="force: True or False, not str"):
        ingest([IngestJob([str(memfile)], tmp_path / "x.st")], model, force="x")
    with pytest.raises(UsageError, match="names a folder"):
        save_memory(f"{tmp_path}/dir/", state)
    assert not (tmp_path / "dir").exists()


def test_the_api_documents_what_it_exports():
    import rmt_cli

    for name in ("ask", "load_recipe", "IngestJob", "LoadedModel", "MemoryState", "Recipe"):
        doc = getattr(rmt_cli, name).__doc__ or ""
        assert doc and not doc.startswith(("A base class", f"{name}(")), name


def test_no_false_warning_of_a_text_longer_than_the_model_reads(tokenizer, capfd, caplog):
    """The API's ingest on an encoder printed transformers' "Token indices sequence length is longer than the
    specified maximum sequence length" for a book, which rmt cuts into segments itself."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from rmt_cli.storage.modeling import reading_plain_text

    fresh = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, model_max_length=16)
    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # as a library user's program has it (the tests quiet transformers)
    try:
        capfd.readouterr()
        reading_plain_text(fresh).encode(MEMFILE_TEXT * 5, add_special_tokens=False)
        assert "Token indices sequence length" not in capfd.readouterr().err + caplog.text
    finally:
        hf_logging.set_verbosity(was)


@pytest.mark.parametrize("arguments, says", [
    ({"num_mem_tokens": -1}, "num_mem_tokens: a whole number from 0 to 4096, not -1"),
    ({"num_mem_tokens": 2.5}, "num_mem_tokens: a whole number"),
    ({"gate_floor": 2.0, "update": "gated"}, "gate_floor: a number from 0 up to"),
    ({"gate_floor": float("nan"), "update": "gated"}, "gate_floor: a number from 0 up to"),
    ({"associative_key_size": 0, "update": "associative"}, "associative_key_size: a whole number of at least 1"),
    ({"update": "bogus"}, "unknown memory update rule 'bogus'"),
    ({"model": None}, "model: a transformers model"),
    ({"model": __import__("torch").nn.Linear(2, 2)}, "model: a transformers model"),
])
def test_the_exported_cell_checks_its_arguments(make_model, arguments, says):
    """`MemoryCell(hf, -1)`: RuntimeError "negative dimension"; `gate_floor=2.0` (a memory frozen for ever) and NaN
    were taken; `update="bogus"` a ValueError; `MemoryCell(None, 2)` an AttributeError."""
    from rmt_cli import MemoryCell

    given = {"model": make_model("gpt2"), "num_mem_tokens": 2, **arguments}
    with pytest.raises(UsageError, match=says):
        MemoryCell(**given)


@pytest.mark.parametrize("arguments, says", [({"segment_size": 0}, "segment_size: a whole number of at least 1"),
                                             ({"bptt_depth": -1}, "bptt_depth: a whole number of at least 0"),
                                             ({"binding_count": -1}, "binding_count: a whole number"),
                                             ({"gate_supervision": float("nan")}, "gate_supervision: a weight"),
                                             ({"route_balance": -1}, "route_balance: a weight of 0 or more"),
                                             ({"cell": "cell"}, "cell: a MemoryCell")])
def test_the_exported_recurrence_checks_its_arguments(make_model, arguments, says):
    from rmt_cli import MemoryCell, RecurrentMemoryModel

    given = {"cell": MemoryCell(make_model("gpt2"), 2), "segment_size": 16, **arguments}
    with pytest.raises(UsageError, match=says):
        RecurrentMemoryModel(**given)
