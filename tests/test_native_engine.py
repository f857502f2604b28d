"""The native Llama engine (core/native_llama.py, storage/native_tokenizer.py, storage/engine.py) against
transformers: the same hidden states, logits, memories, answers and fingerprints; which checkpoints qualify and
which fall back; the same one-line errors for broken weights; and `rmt ask` without transformers' modeling code.

Tiny Llamas are built in code in three shapes: grouped-query attention with a tied head, multi-head attention with
an untied head, its own head_dim, rope base and norm epsilon, and the default conftest Llama (one key-value head)
with the gated update rule. The embedded default model is the end-to-end case.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import llama_model, run_cli
from rmt_cli.commands.ask import ask_many, generate
from rmt_cli.core.memory import MemoryCell
from rmt_cli.core.native_llama import DEFAULTS, LlamaSettings, NativeLlama, unsupported
from rmt_cli.errors import UsageError
from rmt_cli.storage.assets import DEFAULT_MODEL_DIR
from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.storage.fingerprint import architecture_settings
from rmt_cli.storage.memfile import load_memory
from rmt_cli.storage.recipe import MemorySpec

ATOL = 1e-5  # float32: native against transformers
BF16_ATOL = 0.05  # bfloat16 (8 bits of mantissa): close, not equal, were the kernels to differ
SEGMENT, MEM = 24, 2
VARIANTS = {
    "gqa-tied": (dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 50000}), "replace"),  # an int base
    "mha-untied": (dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                        tie_word_embeddings=False, rms_norm_eps=1e-5,
                        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), "replace"),
    "gqa-gated": ({}, "gated"),  # conftest's Llama: 2 heads sharing one key-value head, untied
}
TEXT = ("Mary moved to the bathroom. John went to the hallway. Daniel journeyed to the office. Sandra went back to "
        "the garden. Ünïcödé wörds — “quoted” and 日本語 too. ") * 30


@pytest.fixture(scope="module", params=list(VARIANTS))
def llama_checkpoint(request, tmp_path_factory, tokenizer):
    overrides, update = VARIANTS[request.param]
    cell = MemoryCell(llama_model(tokenizer, seed=3, **overrides), MEM, update)
    path = tmp_path_factory.mktemp("llama") / request.param
    save_checkpoint(path, cell, tokenizer, MemorySpec(num_mem_tokens=MEM, segment_size=SEGMENT, update=update),
                    "test")
    return path


@pytest.fixture(scope="module")
def engines(llama_checkpoint):
    """The checkpoint loaded by both engines (float32): (native, transformers)."""
    native = load_checkpoint(llama_checkpoint, engine="native")
    reference = load_checkpoint(llama_checkpoint)
    assert (native.engine, reference.engine) == ("native", "transformers")
    return native, reference


def _batch(vocab: int, rows: int = 3, length: int = SEGMENT, seed: int = 0):
    """Token ids, and a mask with no padding in row 0, left padding in row 1 and all but one token padded in row 2."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, : length // 3] = 0
    mask[2, : length - 1] = 0
    return ids, mask


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# --- exactness --------------------------------------------------------------------------------------------------

def test_defaults_are_transformers_llama_defaults():
    from transformers import LlamaConfig

    reference = LlamaConfig().to_dict()
    mine = LlamaSettings().to_dict()
    for key in DEFAULTS:
        assert mine[key] == reference[key], key


def test_hidden_states_and_logits_match_transformers(engines):
    native, reference = engines
    ids, mask = _batch(len(native.tokenizer))
    embeds = reference.cell.model.get_input_embeddings()(ids)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        for attention_mask in (None, mask):
            kwargs = dict(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False,
                          position_ids=None if attention_mask is None else positions)
            mine = native.cell.model.base_model(**kwargs).last_hidden_state
            theirs = reference.cell.model.base_model(**kwargs).last_hidden_state
            assert _max_diff(mine, theirs) <= ATOL
            assert _max_diff(native.cell.logits(mine), reference.cell.logits(theirs)) <= ATOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segments_match_transformers(llama_checkpoint, dtype):
    native = load_checkpoint(llama_checkpoint, dtype=dtype, engine="native")
    reference = load_checkpoint(llama_checkpoint, dtype=dtype)
    atol = ATOL if dtype == torch.float32 else BF16_ATOL
    ids, mask = _batch(len(native.tokenizer))
    with torch.no_grad():
        memory = native.cell.initial_memory(len(ids))
        assert torch.equal(memory, reference.cell.initial_memory(len(ids)))
        for attention_mask in (None, mask):
            mine = native.cell.write_segment(memory, ids, attention_mask)
            theirs = reference.cell.write_segment(memory, ids, attention_mask)
            assert mine.dtype == theirs.dtype == dtype
            assert _max_diff(mine, theirs) <= atol
            logits = native.cell.read_segment(mine, ids, attention_mask)
            assert _max_diff(logits, reference.cell.read_segment(mine, ids, attention_mask)) <= atol * 10


def test_last_rows_alone_equal_the_full_pass(engines):
    """A memory write asks the decoder for the write memory's rows only (`last`): its final layer then runs
    queries, attention output and MLP for those rows alone. They must be the full pass's rows, with and without
    padding, and the written memory the one a pass that also computes the token logits writes."""
    native, _ = engines
    ids, mask = _batch(len(native.tokenizer))
    embeds = native.cell.model.get_input_embeddings()(ids)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        for attention_mask in (None, mask):
            kwargs = dict(inputs_embeds=embeds, attention_mask=attention_mask,
                          position_ids=None if attention_mask is None else positions)
            full = native.cell.model.base_model(**kwargs).last_hidden_state
            for last in (1, MEM, 5):
                rows = native.cell.model.base_model(**kwargs, last=last).last_hidden_state
                assert rows.shape[1] == last
                assert _max_diff(rows, full[:, -last:]) <= ATOL
        memory = native.cell.initial_memory(len(ids))
        for attention_mask in (None, mask):
            alone = native.cell.write_segment(memory, ids, attention_mask)
            with_logits = native.cell.forward_segment(memory, ids, attention_mask, write=True, logits=True)[0]
            assert _max_diff(alone, with_logits) <= ATOL


def test_fingerprint_is_the_same_under_both_engines(engines, llama_checkpoint):
    native, reference = engines
    assert native.info["fingerprint"] == reference.info["fingerprint"]
    saved = json.loads((llama_checkpoint / "rmt.json").read_text())["fingerprint"]
    assert native.info["fingerprint"] == saved
    assert architecture_settings(native.cell.model.config) == architecture_settings(reference.cell.model.config)
    assert list(native.cell.state_dict()) == list(reference.cell.state_dict())


def test_tokenizer_matches_transformers(engines):
    native, reference = engines
    mine, theirs = native.tokenizer, reference.tokenizer
    texts = [TEXT[:300], "", "  spaces\tand\nlines ", "<|endoftext|> inside<|pad|>", "Ünïcödé 日本語 ✓"]
    for text in texts:
        for special in (True, False):
            ids = mine.encode(text, add_special_tokens=special)
            assert ids == theirs.encode(text, add_special_tokens=special)
            for skip in (True, False):
                assert mine.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert mine(texts, add_special_tokens=False)["input_ids"] == theirs(texts, add_special_tokens=False)["input_ids"]
    assert mine.get_vocab() == theirs.get_vocab() and len(mine) == len(theirs)
    assert (mine.eos_token_id, mine.pad_token_id) == (theirs.eos_token_id, theirs.pad_token_id)
    assert mine.backend_tokenizer.to_str() == theirs.backend_tokenizer.to_str()


def _generations(model, memory, prompts, **sampling):
    return generate(model, memory, prompts, 10, **sampling)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generate_matches_transformers_token_by_token(llama_checkpoint, dtype):
    native = load_checkpoint(llama_checkpoint, dtype=dtype, engine="native")
    reference = load_checkpoint(llama_checkpoint, dtype=dtype)
    ids, _ = _batch(len(native.tokenizer), rows=4, length=10, seed=1)
    prompts = [row.tolist() for row in ids] + [ids[0, :6].tolist()]  # two lengths: two batches
    memory = native.cell.initial_memory(len(prompts))
    greedy = [tokens for tokens, _ in _generations(native, memory, prompts)]
    # An end token that one row gives (the latest first appearance) and another row of its batch (the first four
    # rows) never does: that row stops early, the rows beside it go on, padded
    row, stop = max(((r, greedy[r].index(t)) for r in range(4) for t in greedy[r]
                     if any(t not in greedy[other] for other in range(4))), key=lambda pair: pair[1])
    for model in (native, reference):
        model.tokenizer.eos_token = model.tokenizer.backend_tokenizer.id_to_token(greedy[row][stop])
        assert model.tokenizer.eos_token_id == greedy[row][stop]
    for sampling in ({}, dict(temperature=0.9, top_p=0.8)):
        mine = _generations(native, memory, prompts, generator=torch.Generator().manual_seed(7), **sampling)
        theirs = _generations(reference, memory, prompts, generator=torch.Generator().manual_seed(7), **sampling)
        assert [tokens for tokens, _ in mine] == [tokens for tokens, _ in theirs]
        assert max(abs(a - b) for (_, a), (_, b) in zip(mine, theirs)) <= (1e-4 if dtype == torch.float32 else 0.1)
        if not sampling:
            assert len(mine[row][0]) == stop < max(len(tokens) for tokens, _ in mine[:4])


# --- which engine runs what -------------------------------------------------------------------------------------

def test_auto_runs_qualifying_checkpoints_natively(llama_checkpoint, monkeypatch):
    monkeypatch.delenv("RMT_ENGINE", raising=False)
    assert load_checkpoint(llama_checkpoint, engine="auto").engine == "native"
    assert load_checkpoint(llama_checkpoint).engine == "transformers"  # the Python API's default: trainable
    monkeypatch.setenv("RMT_ENGINE", "transformers")
    assert load_checkpoint(llama_checkpoint, engine="auto").engine == "transformers"
    monkeypatch.setenv("RMT_ENGINE", "native")
    assert load_checkpoint(llama_checkpoint, engine="auto").engine == "native"
    monkeypatch.setenv("RMT_ENGINE", "fast")
    with pytest.raises(UsageError, match="RMT_ENGINE=fast: choose native or transformers"):
        load_checkpoint(llama_checkpoint, engine="auto")


def test_other_families_fall_back_silently(checkpoint, monkeypatch):
    """conftest's checkpoint is a GPT-2."""
    monkeypatch.delenv("RMT_ENGINE", raising=False)
    assert load_checkpoint(checkpoint, engine="auto").engine == "transformers"
    monkeypatch.setenv("RMT_ENGINE", "native")
    with pytest.raises(UsageError, match="native engine was asked for, and cannot run it: config.json: model_type "
                                         "is 'gpt2'"):
        load_checkpoint(checkpoint, engine="auto")


def _copy(source, tmp_path):
    return shutil.copytree(source, tmp_path / "copy")


def _edit_json(path, name, **changes):
    data = json.loads((path / name).read_text())
    data.update(changes)
    (path / name).write_text(json.dumps(data))


# Edits transformers loads without complaint but the native engine does not reproduce, and the reason it gives.
FALLBACKS = {
    "activation": ("config.json", dict(hidden_act="gelu"), "hidden_act is 'gelu'"),
    "rope scaling": ("config.json", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
                     "rope_parameters is"),
    "sliding window": ("config.json", dict(sliding_window=8), "sliding_window is a setting the native engine does "
                                                               "not know"),
    "tensor parallel": ("config.json", dict(pretraining_tp=2), "pretraining_tp is 2"),
    "eager attention": ("config.json", dict(attn_implementation="eager"), "attn_implementation is a setting"),
    "bos added": ("tokenizer_config.json", dict(add_bos_token=True), "tokenizer_config.json sets add_bos_token"),
    "slow class": ("tokenizer_config.json", dict(tokenizer_class="GPT2Tokenizer"), "no plain fast tokenizer class"),
    "eos not special": ("tokenizer_config.json", dict(eos_token="e"), "eos_token 'e' is not a special token"),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_settings_the_native_engine_does_not_reproduce_fall_back(case, tmp_path, tokenizer, monkeypatch):
    monkeypatch.delenv("RMT_ENGINE", raising=False)
    path = _copy(_gqa_checkpoint(tmp_path, tokenizer), tmp_path)
    name, changes, reason = FALLBACKS[case]
    _edit_json(path, name, **changes)
    assert load_checkpoint(path, engine="auto").engine == "transformers"
    with pytest.raises(UsageError, match="native engine was asked for, and cannot run it") as e:
        load_checkpoint(path, engine="native")
    assert reason in str(e.value) and "\n" not in str(e.value)


def _gqa_checkpoint(tmp_path, tokenizer, update="replace"):
    cell = MemoryCell(llama_model(tokenizer, seed=4), MEM, update)
    return save_checkpoint(tmp_path / f"gqa-{update}", cell, tokenizer,
                           MemorySpec(num_mem_tokens=MEM, segment_size=SEGMENT, update=update), "test")


def test_the_associative_rule_and_slow_tokenizer_files_fall_back(tmp_path, tokenizer):
    associative = _gqa_checkpoint(tmp_path, tokenizer, "associative")
    assert load_checkpoint(associative, engine="auto").engine == "transformers"
    with pytest.raises(UsageError, match="associative update rule"):
        load_checkpoint(associative, engine="native")
    path = _gqa_checkpoint(tmp_path, tokenizer)
    (path / "special_tokens_map.json").write_text("{}")
    with pytest.raises(UsageError, match="special_tokens_map.json beside tokenizer.json"):
        load_checkpoint(path, engine="native")


def test_unsupported_names_every_reason():
    base = LlamaSettings(hidden_size=32, num_attention_heads=4).to_dict()
    assert unsupported(base) is None
    for changes, reason in [(dict(attention_bias=True), "attention_bias"), (dict(mlp_bias=True), "mlp_bias"),
                            (dict(model_type="mistral"), "model_type"), (dict(rms_norm_eps=1), "rms_norm_eps"),
                            (dict(num_key_value_heads=3), "key-value heads"), (dict(head_dim=7), "head_dim is odd"),
                            (dict(output_attentions=True), "output_attentions"),
                            (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "rope_parameters")]:
        assert reason in unsupported({**base, **changes}), changes


# --- broken weights: the same one-line errors ---------------------------------------------------------------------

def _error(path, engine):
    with pytest.raises(UsageError) as e:
        load_checkpoint(path, engine=engine)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("fault", ["mismatched", "not finite"])
def test_broken_weights_give_the_same_error_under_both_engines(fault, tmp_path, tokenizer):
    path = _copy(_gqa_checkpoint(tmp_path, tokenizer), tmp_path)
    weights = load_file(str(path / "model.safetensors"))
    if fault == "mismatched":
        weights["model.norm.weight"] = torch.ones(31)
    else:
        weights["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(path / "model.safetensors"))
    native = _error(path, "native")
    assert native == _error(path, "transformers")
    assert ("model.norm.weight is of shape (31,)" if fault == "mismatched" else "not finite numbers") in native


def test_missing_weights_are_transformers_to_report(tmp_path, tokenizer):
    path = _copy(_gqa_checkpoint(tmp_path, tokenizer), tmp_path)
    weights = load_file(str(path / "model.safetensors"))
    del weights["model.layers.0.mlp.down_proj.weight"]
    save_file(weights, str(path / "model.safetensors"))
    assert _error(path, "auto") == _error(path, "transformers")
    assert "model.layers.0.mlp.down_proj.weight is missing" in _error(path, "transformers")
    assert "differ in tensors model.layers.0.mlp.down_proj.weight" in _error(path, "native")


# --- the CLI on the embedded default model --------------------------------------------------------------------

QUESTIONS = ["Where is Mary?", "Where is Sandra?", "Where is Daniel?", "Where is John?"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ingest_and_ask_agree_across_engines(tmp_path, monkeypatch, dtype):
    assert load_checkpoint(DEFAULT_MODEL_DIR, engine="auto").engine == "native"
    (tmp_path / "book.txt").write_text(TEXT)
    answers, states = {}, {}
    for engine in ("native", "transformers"):
        monkeypatch.setenv("RMT_ENGINE", engine)
        out = tmp_path / f"{engine}.st"
        r = run_cli(["ingest", tmp_path / "book.txt", "-o", out, "-q", "--dtype", dtype])
        assert r.exit_code == 0, r.stderr
        r = run_cli(["ask", out, *QUESTIONS, "--json"])
        assert r.exit_code == 0, r.stderr
        answers[engine] = [json.loads(line) for line in r.stdout.splitlines()]
        states[engine] = load_memory(out)
    mine, theirs = states["native"], states["transformers"]
    # The files are the same but for their `created` time; the memories are equal to the last bit here (float32
    # and bf16 alike), asserted within float tolerance.
    assert mine.fingerprint == theirs.fingerprint
    assert mine.tail_tokens == theirs.tail_tokens and mine.tokens == theirs.tokens
    assert _max_diff(mine.memory, theirs.memory) <= (ATOL if dtype == "float32" else BF16_ATOL)
    assert [a["answer"] for a in answers["native"]] == [a["answer"] for a in answers["transformers"]]
    for a, b in zip(answers["native"], answers["transformers"]):
        assert abs(a["logprob"] - b["logprob"]) <= 1e-3


def test_eval_agrees_across_engines():
    from rmt_cli.commands.longeval import NoiseCorpus, StorySource, evaluate_length
    from rmt_cli.data.sources import read_texts
    from rmt_cli.data.tasks import split_sentences
    from rmt_cli.storage.assets import DEFAULT_NOISE_TEXT

    rows = []
    for engine in ("native", "transformers"):
        model = load_checkpoint(DEFAULT_MODEL_DIR, engine=engine)
        [(_, text)] = read_texts([str(DEFAULT_NOISE_TEXT)])
        noise = NoiseCorpus(model.tokenizer, split_sentences(text[:20_000]))
        # 5 segments of 128 and a tail of 115 tokens, which beside a question is written to memory first
        result = evaluate_length(model, noise, StorySource(), 755, 4, batch_size=2, keep_answers=True)
        rows.append((result.row(), result.answers))
    assert rows[0] == rows[1]


def test_ask_imports_no_transformers_modeling_code(tmp_path):
    """`rmt ask` in a fresh process on the native engine: transformers is never imported (nor, with it, its
    modeling code, torch._dynamo or sympy); forced onto transformers, its modeling code is."""
    (tmp_path / "book.txt").write_text(TEXT)
    assert run_cli(["ingest", tmp_path / "book.txt", "-o", tmp_path / "m.st", "-q"]).exit_code == 0
    probe = ("import json, sys\nfrom rmt_cli.cli import main\nsys.argv = ['rmt', 'ask', sys.argv[1], 'Where is Mary?']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "names = ('transformers', 'transformers.modeling_utils', 'torch._dynamo', 'sympy')\n"
             "print(json.dumps({name: name in sys.modules for name in names}))\n")
    seen = {}
    for engine in ("auto", "transformers"):
        env = {**os.environ, "RMT_ENGINE": engine, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "m.st")], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        answer, modules = proc.stdout.strip().splitlines()
        seen[engine] = (answer, json.loads(modules))
    assert seen["auto"][0] == seen["transformers"][0]
    assert not any(seen["auto"][1].values()), seen["auto"][1]
    assert seen["transformers"][1]["transformers.modeling_utils"]


def test_native_model_surface(engines):
    """What MemoryCell and ask use of a model: embeddings in and out (tied: one tensor), the config, the base."""
    native, reference = engines
    model = native.cell.model
    assert isinstance(model, NativeLlama) and model.base_model is model.model
    assert model.get_input_embeddings().num_embeddings == reference.cell.model.get_input_embeddings().num_embeddings
    tied = model.config.tie_word_embeddings
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
