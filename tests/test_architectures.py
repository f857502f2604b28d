"""The memory cell on every model family the README lists as supported, and the refusal of families whose own
forward changes the logits in a way the cell does not reproduce.

Each family is a tiny model built from its transformers config (tests/conftest.py), in the family's own settings:
GPT-2 and OPT (learned positions; OPT's are offset by 2), Llama, Qwen2, Mistral and Phi-3 (rotary), Gemma-2
(embeddings scaled by sqrt(hidden), alternating sliding and full attention, attention and final-logit
soft-capping). The matrix checks the core of the RMT on each: the cell's logits are the model's own, batched
equals streamed, positions restart every segment, padding changes nothing, gradients cross segments, under every
update rule (associative: its matrices hooked into each family's decoder layers), and a checkpoint loads back to
the same outputs.
"""

import pytest
import torch
from conftest import FAMILIES
from test_memory import PAD, _write_batch, assert_batch_equals_streaming, ids, seq
from typer.testing import CliRunner

from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.cli import app
from rmt_cli.errors import UsageError
from rmt_cli.core.memory import (IGNORE_INDEX, LOGIT_TRANSFORMS, MemoryCell, RecurrentMemoryModel, UnsupportedModelError,
                            answer_correct, final_logit_softcap)
from rmt_cli.storage.recipe import MemorySpec
from rmt_cli.core.segments import DocumentSample, collate

M = 3
ATOL = 1e-5
KEY_SIZE = 4  # the associative rule's keys: 24 features, so the tiny matrices stay small
# The seven families, and OPT as opt-350m is built: embeddings (16) narrower than the model (32), projected in and
# out, and the layer norm after each block.
VARIANTS = {name: (name, {}) for name in FAMILIES}
VARIANTS["opt-projected"] = ("opt", dict(word_embed_proj_dim=16, do_layer_norm_before=False))


@pytest.fixture(params=list(VARIANTS))
def family(request):
    return request.param


@pytest.fixture()
def build(make_model, family):
    """build(seed=0, **overrides) -> a tiny model of the family under test."""
    name, settings = VARIANTS[family]
    return lambda seed=0, **overrides: make_model(name, seed, **{**settings, **overrides})


def _cell(model, update="replace", num_mem_tokens=M, gate_floor=0.0):
    cell = MemoryCell(model, num_mem_tokens, update, gate_floor, associative_key_size=KEY_SIZE)
    if cell.gate is not None:  # a gate that depends on what was written, as after training (a fresh one does not)
        with torch.no_grad():
            cell.gate.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
            cell.gate.bias.fill_(0.0)
    if cell.associative is not None:  # writes and reads that count, as after training (fresh reads are scaled by 0)
        with torch.no_grad():
            for layer in cell.associative.layers:
                layer.value.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
                layer.beta.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
                layer.read_scale.fill_(1.0)
    return cell


def _own_logits(model, memory, tokens):
    """The model's own forward (its LM head and whatever it does after it) on [memory, tokens], positions 0.."""
    embeds = torch.cat([memory.to(torch.float32), model.get_input_embeddings()(tokens)], dim=1)
    return model(inputs_embeds=embeds, use_cache=False).logits[:, memory.shape[1]:]


# --- the cell's logits are the model's own ---------------------------------------------------------------------


@pytest.mark.parametrize("num_mem_tokens", [0, M])
def test_cell_logits_are_the_models_own_forward(build, num_mem_tokens):
    """Catches a family whose forward transforms the logits after the output embeddings (soft-capping, scaling):
    the cell runs the base model and the LM head itself."""
    model = build().eval()
    cell = _cell(model, num_mem_tokens=num_mem_tokens).eval()
    tokens = torch.randint(2, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # Two different memories (one per row), as read after a segment.
        memory = cell.write_segment(cell.initial_memory(2), tokens[:, :7])
        _, read_logits, _ = cell.forward_segment(memory, tokens, write=False, logits=True)
        _, write_logits, _ = cell.forward_segment(memory, tokens, write=True, logits=True)
        own = _own_logits(model, memory, tokens)
    assert read_logits.shape == own.shape == (2, 12, model.config.vocab_size)
    assert torch.allclose(read_logits, own, atol=ATOL)
    assert torch.allclose(write_logits, own, atol=ATOL)  # the write slots come after every token: causally unseen


def test_initial_memory_is_at_the_scale_of_the_token_embeddings(build):
    """Gemma-2 scales its embeddings by sqrt(hidden) inside the embedding module: the memory starts at the scale
    of the token embeddings the model really sees, not that of the raw weight."""
    model = build()
    cell = _cell(model, num_mem_tokens=64)
    tokens = model.get_input_embeddings()(torch.arange(model.config.vocab_size))
    ratio = float(cell.initial_memory(1).detach().std() / tokens.detach().std())
    assert 0.8 < ratio < 1.25, ratio


# --- batched equals streamed --------------------------------------------------------------------------------------


def _documents():
    """Three documents with 3, 1 and 0 write segments of different lengths (so writes are left-padded and final
    segments right-padded in the batch), write logits included."""
    writes = [[seq(10, 8), seq(20, 8), seq(30, 3)], [seq(50, 8)], []]
    finals = [(seq(40, 5), [IGNORE_INDEX] * 3 + [43, 44]), (seq(60, 7), [IGNORE_INDEX] * 5 + [65, 66]),
              (seq(70, 3), [IGNORE_INDEX, 71, 72])]
    return [DocumentSample(w, f, labels, write_labels=w) for w, (f, labels) in zip(writes, finals)]


@pytest.mark.parametrize("update", ["replace", "gated", "associative", "gated-associative", "routed"])
def test_batched_recurrence_equals_streaming(build, update):
    """RecurrentMemoryModel on a batch gives each document the memory and logits of streaming it alone through
    initial_memory / write_segment / read_segment (the ingest and ask path)."""
    cell = _cell(build(), update).eval()
    rmt = RecurrentMemoryModel(cell, segment_size=8).eval()
    batch, out = assert_batch_equals_streaming(cell, rmt, _documents(), atol=ATOL)
    assert batch.writes_per_row.tolist() == [3, 1, 0]
    # ...and the memory matters: reset every segment, the first document's answer logits change.
    with torch.no_grad():
        reset = rmt(batch, reset_memory=True)
    assert not torch.allclose(reset.final_logits[0, :5], out.final_logits[0, :5], atol=1e-6)


def test_positions_restart_every_segment(build):
    """The same segment read from the same memory writes the same memory and predicts the same tokens wherever it
    stands in a document (1st, 2nd or 3rd segment, padded or not): no position leaks from one segment to the next.
    Reset every segment, each write reads the initial memory."""
    cell = _cell(build()).eval()
    rmt = RecurrentMemoryModel(cell, segment_size=8).eval()
    a, x, y = seq(20, 6), seq(100, 8), seq(140, 7)
    orders = ([a, x, y], [x, a, y], [y, x, a])
    docs = [DocumentSample(w, seq(60, 3), [IGNORE_INDEX] * 3, write_labels=w) for w in orders]
    written, logits = [], []
    real = cell.forward_segment

    def recording(memory, input_ids, attention_mask=None, write=True, want_logits=False):
        new, out, gate = real(memory, input_ids, attention_mask, write, want_logits)
        if write:
            written.append(new)
            logits.append(out)
        return new, out, gate

    cell.forward_segment = recording
    # What the base model is given: rotary families cannot tell a shifted position from the right one above.
    given = []
    hook = cell.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: given.append((kwargs["position_ids"], kwargs["attention_mask"])), with_kwargs=True)
    with torch.no_grad():
        rmt(collate(docs, PAD), reset_memory=True)
        alone_memory, alone_logits, _ = real(cell.initial_memory(1), torch.tensor([a]), None, True, True)
    hook.remove()
    assert len(written) == 3
    for row, step in enumerate([0, 1, 2]):  # where `a` stands in each row
        assert torch.allclose(written[step][row], alone_memory[0], atol=ATOL), row
        assert torch.allclose(logits[step][row, -len(a):], alone_logits[0], atol=ATOL), row  # writes are left-padded
    assert len(given) == 5  # 3 writes, the final segment, and the segment alone
    for positions, mask in given:
        real_entries = torch.ones_like(positions, dtype=torch.bool) if mask is None else mask.bool()
        for row in range(positions.shape[0]):
            assert positions[row][real_entries[row]].tolist() == list(range(int(real_entries[row].sum())))


# --- padding -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update", ["replace", "associative"])
def test_padded_short_document_equals_it_alone(build, update):
    """Left-padded writes and right-padded finals: the short document's memory and logits are its own."""
    cell = _cell(build(), update).eval()
    short, long = seq(20, 5), seq(60, 11)
    step = _write_batch(short, long).steps[0]
    assert step.attention_mask[0].tolist() == [0] * 6 + [1] * 5
    final_short, final_long = seq(30, 4), seq(70, 9)
    finals = collate([DocumentSample([], final_short, [IGNORE_INDEX] * 4),
                      DocumentSample([], final_long, [IGNORE_INDEX] * 9)], PAD)
    assert finals.final_mask[0].tolist() == [1] * 4 + [0] * 5
    with torch.no_grad():
        written, write_logits, _ = cell.forward_segment(cell.initial_memory(2), step.input_ids, step.attention_mask,
                                                        True, True)
        read = cell.read_segment(written, finals.final_ids, finals.final_mask)
        for row, (segment, final) in enumerate([(short, final_short), (long, final_long)]):
            memory, logits, _ = cell.forward_segment(cell.initial_memory(1), torch.tensor([segment]), None, True, True)
            assert torch.allclose(written[row], memory[0], atol=ATOL), row
            assert torch.allclose(write_logits[row, -len(segment):], logits[0], atol=ATOL), row
            alone = cell.read_segment(memory, torch.tensor([final]))
            assert torch.allclose(read[row, :len(final)], alone[0], atol=ATOL), row


# --- gradients -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update", ["replace", "gated", "associative", "gated-associative", "routed"])
def test_gradients_reach_the_memory_and_the_model_through_segments(build, update):
    """The answer's loss back-propagates through two write segments into the first one's tokens, the learned
    initial memory, the gate, the associative projections and every layer of the model."""
    # Untied embeddings: with tied ones the LM head sends gradient to every embedding row.
    cell = _cell(build(tie_word_embeddings=False), update)
    rmt = RecurrentMemoryModel(cell, segment_size=8).train()
    first, second, final = seq(10, 8), seq(30, 8), seq(100, 6)
    batch = collate([DocumentSample([first, second], final, [IGNORE_INDEX] * 3 + final[3:])], PAD)
    out = rmt(batch)
    out.loss.backward()
    embedding_grad = cell.model.get_input_embeddings().weight.grad
    assert embedding_grad[first].abs().sum() > 0  # two memory hops back
    assert embedding_grad[second].abs().sum() > 0
    assert cell.memory.grad is not None and cell.memory.grad.abs().sum() > 0
    if cell.gate is not None:
        assert cell.gate.weight.grad.abs().sum() > 0
    if cell.associative is not None:  # the keys, values and write strengths only through the earlier segments' writes
        for name, param in cell.associative.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    for name, param in cell.model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    layers = [n for n, p in cell.model.named_parameters() if ".layers.0." in n or ".h.0." in n]
    assert layers and any(cell.model.get_parameter(n).grad.abs().sum() > 0 for n in layers)


# --- checkpoints ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("update", ["gated", "associative", "gated-associative", "routed"])
def test_checkpoint_loads_back_to_the_same_outputs(build, tokenizer, tmp_path, update):
    cell = _cell(build(), update, gate_floor=0.001).eval()
    save_checkpoint(tmp_path / "ckpt", cell, tokenizer, MemorySpec(num_mem_tokens=M, segment_size=24, update=update,
                                                                    gate_floor=0.001, associative_key_size=KEY_SIZE),
                    "test")
    loaded = load_checkpoint(tmp_path / "ckpt").cell
    tokens = ids(*seq(20, 10))
    with torch.no_grad():
        a = cell.read_segment(cell.write_segment(cell.initial_memory(1), tokens), tokens)
        b = loaded.read_segment(loaded.write_segment(loaded.initial_memory(1), tokens), tokens)
    assert torch.equal(a, b)
    assert loaded.logit_softcap == cell.logit_softcap


# --- logit transforms: applied, or refused by name -----------------------------------------------------------------


@pytest.mark.parametrize("cap", [0.5, 30.0, None])
def test_gemma2_final_logit_softcapping_is_applied_as_gemma2_applies_it(make_model, cap):
    model = make_model("gemma2", final_logit_softcapping=cap).eval()
    cell = _cell(model).eval()
    assert cell.logit_softcap == cap
    tokens = ids(*seq(20, 12))
    with torch.no_grad():
        memory = cell.write_segment(cell.initial_memory(1), tokens)
        logits = cell.read_segment(memory, tokens)
        own = _own_logits(model, memory, tokens)
        hidden = cell._hidden_states(memory, tokens, None, write=False)[:, M:]
        raw = model.get_output_embeddings()(hidden)
    assert torch.allclose(logits, own, atol=1e-6)
    if cap == 0.5:  # a cap this low bends every logit: the equality above is not the raw head's by accident
        assert not torch.allclose(raw, own, atol=1e-2)
    if cap is None:
        assert torch.equal(logits, raw)
    # The answer (argmax) and the accuracy the memory is trained for are those of the capped logits.
    assert torch.equal(answer_correct(logits, tokens), answer_correct(own, tokens))


@pytest.mark.parametrize("family, overrides, refused", [
    ("cohere", {}, "cohere with logit_scale=0.0625"),
    ("cohere", {"logit_scale": 2.0}, "cohere with logit_scale=2.0"),
    ("granite", {"logits_scaling": 4.0}, "granite with logits_scaling=4.0"),
    ("cohere", {"logit_scale": 1.0}, None),  # neutral: the model's own logits are the cell's (checked below)
    ("granite", {}, None),  # logits_scaling 1.0
    ("granite", {"embedding_multiplier": 12.0}, None),  # scales inputs_embeds in the base model: memory too
])
def test_families_that_scale_their_logits_are_refused_by_name(make_model, family, overrides, refused):
    model = make_model(family, **overrides).eval()
    if refused:
        with pytest.raises(UnsupportedModelError) as caught:
            MemoryCell(model, M)
        message = str(caught.value)
        assert message.startswith(refused + ": ")
        assert "\n" not in message
        assert isinstance(caught.value, UsageError) and isinstance(caught.value, ValueError)
        assert caught.value.exit_code == 2
        return
    cell = _cell(model).eval()
    tokens = ids(*seq(20, 12))
    with torch.no_grad():
        memory = cell.write_segment(cell.initial_memory(1), tokens)
        assert torch.allclose(cell.read_segment(memory, tokens), _own_logits(model, memory, tokens), atol=ATOL)


@pytest.mark.parametrize("setting", sorted(LOGIT_TRANSFORMS))
def test_every_known_logit_transform_is_refused(make_model, setting):
    model = make_model("llama")
    setattr(model.config, setting, 2.0)
    with pytest.raises(UnsupportedModelError, match=f"^llama with {setting}=2.0: "):
        MemoryCell(model, M)
    setattr(model.config, setting, 1.0)  # the value that changes nothing
    MemoryCell(model, M)


def test_a_config_is_checked_before_any_weights_are_loaded():
    from transformers import CohereConfig, Gemma2Config, GraniteConfig, LlamaConfig

    with pytest.raises(UnsupportedModelError, match="^cohere with logit_scale=0.0625: "):
        final_logit_softcap(CohereConfig())
    with pytest.raises(UnsupportedModelError, match="^granite with logits_scaling=8.0: "):
        final_logit_softcap(GraniteConfig(logits_scaling=8.0))
    assert final_logit_softcap(Gemma2Config()) == 30.0
    assert final_logit_softcap(Gemma2Config(final_logit_softcapping=None)) is None
    assert final_logit_softcap(LlamaConfig()) is None
    for bad in (0.0, -1.0, float("inf"), float("nan")):  # (transformers 5 refuses a string itself)
        config = Gemma2Config()
        config.final_logit_softcapping = bad
        with pytest.raises(UnsupportedModelError, match="^gemma2 with final_logit_softcapping="):
            final_logit_softcap(config)


def test_a_model_without_an_lm_head_is_refused(make_model):
    model = make_model("llama").model  # the base model alone
    with pytest.raises(UnsupportedModelError, match="no output embeddings"):
        MemoryCell(model, M)


def test_a_refused_checkpoint_is_one_error_line(make_model, tokenizer, tmp_path):
    """A checkpoint whose config.json asks for a logit scaling: `rmt ingest` says so in one line, exit 2."""
    import json

    path = tmp_path / "ckpt"
    save_checkpoint(path, MemoryCell(make_model("cohere", logit_scale=1.0), 2), tokenizer,
                    MemorySpec(num_mem_tokens=2, segment_size=24), "test")
    config = json.loads((path / "config.json").read_text())
    config["logit_scale"] = 0.0625
    (path / "config.json").write_text(json.dumps(config))
    book = tmp_path / "book.txt"
    book.write_text("Mary went to the kitchen. " * 20)
    result = CliRunner().invoke(app, ["ingest", str(book), "-o", str(tmp_path / "mem.st"), "--model", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cohere with logit_scale=0.0625: " in lines[0], lines
    assert "Traceback" not in result.output
    assert not (tmp_path / "mem.st").exists()


def _greedy_without_cache(cell, memory, prompt, steps, eos):
    """The reference for `ask.generate`: each answer token from a whole read of the growing final segment."""
    row, out, logprob = list(prompt), [], 0.0
    for _ in range(steps):
        logits = cell.read_segment(memory, torch.tensor([row]))[0, -1].float()
        token = int(logits.argmax())
        logprob += float(torch.log_softmax(logits, -1)[token])
        if token == eos:
            break
        out.append(token)
        row.append(token)
    return out, logprob


@torch.inference_mode()
@pytest.mark.parametrize("update", ["gated", "associative", "gated-associative", "routed"])
def test_cached_generation_equals_reading_the_whole_segment_every_token(build, tokenizer, update):
    """`rmt ask` generates with the model's KV cache; each token must be the one a full read of the final segment
    gives, with the same log-probability, for rows of different prompt lengths batched together (and the
    associative matrices read by every layer, as in a read)."""
    from types import SimpleNamespace

    from rmt_cli.commands.ask import generate

    cell = _cell(build(), update).eval()
    loaded = SimpleNamespace(cell=cell, tokenizer=tokenizer, segment_size=16)
    memory = torch.randn(3, M, cell.hidden_size, generator=torch.Generator().manual_seed(2))
    if cell.associative is not None:  # matrices that hold something, written by a segment
        written = cell.write_segment(cell.initial_memory(3), torch.tensor([seq(20, 8), seq(40, 8), seq(60, 8)]))
        memory = torch.cat([memory, written[:, M:]], dim=1)
    prompts = [[5, 9, 13], [7, 8, 21, 30, 2], [11, 4, 6]]
    got = generate(loaded, memory, prompts, max_new_tokens=6)
    for r, prompt in enumerate(prompts):
        room = min(6, loaded.segment_size - len(prompt))
        tokens, logprob = _greedy_without_cache(cell, memory[r : r + 1], prompt, room, tokenizer.eos_token_id)
        assert got[r][0] == tokens
        assert got[r][1] == pytest.approx(logprob, abs=1e-4)
    # a row stops where its final segment would outgrow a segment's positions
    [(long_answer, _)] = generate(loaded, memory[:1], [list(range(3, 14))], max_new_tokens=16)
    assert len(long_answer) <= 16 - 11


@torch.inference_mode()
def test_generation_through_the_library_prints_no_transformers_warning(build, tokenizer, monkeypatch):
    """Library users (and `rmt eval` through the Python API) see no deprecation notice from generate(): every
    generation setting travels in one GenerationConfig."""
    from types import SimpleNamespace

    import transformers.generation.utils as generation_utils
    from rmt_cli.commands.ask import generate

    said = []
    monkeypatch.setattr(generation_utils.logger, "warning_once", lambda *a, **k: said.append(a))
    monkeypatch.setattr(generation_utils.logger, "warning", lambda *a, **k: said.append(a))
    cell = _cell(build(), "gated").eval()
    loaded = SimpleNamespace(cell=cell, tokenizer=tokenizer, segment_size=16)
    memory = torch.randn(2, M, cell.hidden_size, generator=torch.Generator().manual_seed(3))
    generate(loaded, memory, [[5, 9, 13], [7, 8, 21]], max_new_tokens=3)
    assert said == []
