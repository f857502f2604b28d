"""The associative update rule (ARMT): a fresh cell is the replace rule, the delta rule erases before it writes,
the state's layout, gradients and truncated BPTT through the matrices, exact appends, batched ingest, memory files
(strict, and refused by other rules), recipes and fingerprints, and a short training run whose loss falls."""

import copy
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_memory import PAD, SEGMENT_IDS, _four_segment_batch, _nonzero, seq
from test_train import run as run_training
from test_train import step_losses, tiny_recipe

from conftest import TINY_SEGMENT, batched_and_single_ingests, one_error_line, run_cli
from rmt_cli.commands.ask import ask
from rmt_cli.commands.ingest import IngestJob, ingest
from rmt_cli.core.associative import (KEY_SIZE, AssociativeLayer, AssociativeMemory, delta_write, feature_count,
                                      feature_map, join_state, rows_per_layer, split_state)
from rmt_cli.core.memory import IGNORE_INDEX, MemoryCell, RecurrentMemoryModel
from rmt_cli.core.segments import DocumentSample, collate
from rmt_cli.errors import UsageError
from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.storage.fingerprint import fingerprint
from rmt_cli.storage.memfile import check_compatible, load_memory, save_memory
from rmt_cli.storage.recipe import MemorySpec, validate_recipe

M = 2
KEY = 4  # 24 features: small matrices for tiny models
TEXT = ("Mary moved to the bathroom. The old man saw a red boat near the river. Daniel went to the kitchen. "
        "Ünïcödé wörds — “quoted” and 日本語 too.   Several   spaces,\ttabs\n\nand blank lines. ") * 8


def associative(model, key_size=KEY, trained=True, memory_tokens=M):
    """An associative cell; `trained`: values, write strengths and read scales that write and read something (a
    fresh cell's reads are scaled by 0)."""
    cell = MemoryCell(model, memory_tokens, "associative", associative_key_size=key_size)
    return writing(cell) if trained else cell


def writing(cell):
    """Values, write strengths and read scales that write and read something (a fresh cell reads at scale 0)."""
    with torch.no_grad():
        for i, layer in enumerate(cell.associative.layers):
            layer.value.normal_(0, 0.3, generator=torch.Generator().manual_seed(i))
            layer.beta.normal_(0, 0.3, generator=torch.Generator().manual_seed(100 + i))
            layer.read_scale.fill_(1.0)
    return cell


def spec(**changes):
    return MemorySpec(**{"num_mem_tokens": M, "segment_size": TINY_SEGMENT, "update": "associative",
                         "associative_key_size": KEY, **changes})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer, make_model):
    """A gpt2 checkpoint of the associative rule whose matrices really hold something."""
    path = tmp_path_factory.mktemp("assoc") / "model"
    return save_checkpoint(path, associative(make_model("gpt2")), tokenizer, spec(), "test")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_checkpoint(checkpoint)


# --- a fresh cell changes nothing --------------------------------------------------------------------------------


def test_a_fresh_associative_cell_is_the_replace_rule_bit_for_bit(make_model, architecture):
    """The read scale starts at zero: the matrices are written, but every read adds exactly 0, so a fresh cell
    gives the replace rule's memory vectors and logits on every segment (and the plain model's on the first)."""
    model = make_model(architecture).eval()
    fresh, replace = associative(model, trained=False).eval(), MemoryCell(model, M).eval()
    assert torch.equal(fresh.memory, replace.memory)
    segments = [torch.randint(2, 300, (2, 9), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        a, b = fresh.initial_memory(2), replace.initial_memory(2)
        assert a.shape == (2, M + fresh.associative.rows, b.shape[-1])
        for segment in segments:
            a, logits_a, _ = fresh.forward_segment(a, segment, logits=True)
            b, logits_b, _ = replace.forward_segment(b, segment, logits=True)
            assert torch.equal(logits_a, logits_b) and torch.equal(a[:, :M], b)
        assert torch.equal(fresh.read_segment(a, segments[0]), replace.read_segment(b, segments[0]))
        matrices, norms = split_state(a[:, M:], *fresh.associative_shape)
    assert matrices.any() and norms.any()  # written, and read at scale 0


def test_a_model_whose_decoder_layers_cannot_be_found_is_refused(make_model):
    model = make_model("llama")
    model.config.num_hidden_layers = 5  # no list of 5 layers in it
    with pytest.raises(UsageError, match="^llama: the associative update rule cannot find the model's decoder layers"):
        MemoryCell(model, M, "associative")
    MemoryCell(model, M)  # the other rules do not need them


def test_reads_and_writes_happen_only_inside_the_cell(make_model):
    """The hooks act inside a segment only: the wrapped model run on its own is unchanged."""
    model = make_model("llama").eval()
    tokens = torch.tensor([seq(20, 10)])
    with torch.no_grad():
        before = model(input_ids=tokens).logits
        cell = associative(model).eval()
        cell.write_segment(cell.write_segment(cell.initial_memory(1), tokens), tokens)
        assert torch.equal(model(input_ids=tokens).logits, before)
        assert cell.associative._pass is None


# --- the delta rule ----------------------------------------------------------------------------------------------


def _layer_keyed_on_the_first_half(hidden=8, key_size=2):
    """A layer whose key (and query) reads the first half of a hidden state and whose value is the second half."""
    layer = AssociativeLayer(hidden, key_size, torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.key[:, hidden // 2:] = 0
        layer.query.copy_(layer.key)
        layer.value.zero_()
        layer.value[hidden // 2:, hidden // 2:] = torch.eye(hidden // 2)
        layer.beta_bias.fill_(30.0)  # beta = 1: a full write
        layer.read_scale.fill_(1.0)  # read what is stored, unscaled
    return layer


def test_the_delta_rule_erases_the_old_value_before_writing_the_new_one():
    hidden = 8
    layer = _layer_keyed_on_the_first_half(hidden)
    key_half = torch.tensor([1.0, -2.0, 0.5, 3.0])
    first = torch.cat([key_half, torch.tensor([1.0, 2.0, 3.0, 4.0])]).view(1, 1, hidden)
    second = torch.cat([key_half, torch.tensor([-5.0, 0.0, 7.0, 1.0])]).view(1, 1, hidden)
    features = feature_count(2)
    matrix, norm = torch.zeros(1, features, hidden), torch.zeros(1, features)
    with torch.no_grad():
        matrix, norm = layer.write(matrix, norm, first)
        assert torch.allclose(layer.read(first, matrix, norm), layer.value @ first[0, 0], atol=1e-5)
        matrix, norm = layer.write(matrix, norm, second)
        # The same key: its old value is gone, the new one is read back whole (not a sum, not an average).
        read = layer.read(first, matrix, norm)[0, 0]
        assert torch.allclose(read[hidden // 2:], second[0, 0, hidden // 2:], atol=1e-5)
        k = feature_map(second @ layer.key.T)
        assert torch.allclose(k @ norm.unsqueeze(-1), torch.ones(1), atol=1e-6)  # the normaliser stays 1 under k
        layer.beta_bias.fill_(-30.0)  # beta = 0: writes nothing
        unchanged = layer.write(matrix, norm, first)
    assert torch.allclose(unchanged[0], matrix, atol=1e-9) and torch.allclose(unchanged[1], norm, atol=1e-9)


def test_the_memory_tokens_write_one_after_another():
    """Writing one key twice at full strength in one segment leaves the second value alone: the second token's
    error is measured against the matrix as the first left it (written in parallel, both errors were measured
    against the empty matrix and the key held their sum)."""
    hidden = 8
    layer = _layer_keyed_on_the_first_half(hidden)
    key_half = torch.tensor([1.0, -2.0, 0.5, 3.0])
    first = torch.cat([key_half, torch.tensor([1.0, 2.0, 3.0, 4.0])])
    second = torch.cat([key_half, torch.tensor([-5.0, 0.0, 7.0, 1.0])])
    features = feature_count(2)
    with torch.no_grad():
        matrix, norm = layer.write(torch.zeros(1, features, hidden), torch.zeros(1, features),
                                   torch.stack([first, second]).unsqueeze(0))
        read = layer.read(first.view(1, 1, hidden), matrix, norm)[0, 0]
        assert torch.allclose(read[hidden // 2:], second[hidden // 2:], atol=1e-5)
        k = feature_map(second @ layer.key.T)
        assert torch.allclose(k @ norm[0], torch.tensor(1.0), atol=1e-6)  # the normaliser is 1 under k, not 2


def test_delta_write_is_the_rank_one_updates_token_by_token():
    """The forward substitution over the tokens gives the numbers of m rank-one delta-rule updates, each against
    the matrix the previous one left, over any leading dimensions (batch, layers)."""
    g = torch.Generator().manual_seed(0)
    matrix, norm = torch.randn(2, 3, 24, 5, generator=g), torch.randn(2, 3, 24, generator=g)
    keys = feature_map(torch.randn(2, 3, 6, 4, generator=g))
    values, beta = torch.randn(2, 3, 6, 5, generator=g), torch.rand(2, 3, 6, 1, generator=g)
    a, z = matrix, norm
    for i in range(6):
        k, v, b = keys[..., i : i + 1, :], values[..., i : i + 1, :], beta[..., i : i + 1, :]
        a = a + (b * k).transpose(-1, -2) @ (v - k @ a)
        z = z + (b * k * (1 - k @ z.unsqueeze(-1))).squeeze(-2)
    new_a, new_z = delta_write(matrix, norm, keys, values, beta)
    assert torch.allclose(new_a, a, atol=1e-5) and torch.allclose(new_z, z, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_normalisers_and_matrices_stay_bounded_over_200_segments(make_model, family):
    """Eight memory tokens with random values and write strengths, 200 segments of random tokens: the normalisers
    stay near 1 and the matrices finite and small (written in parallel, z doubled per segment with alternating
    sign and overflowed float32 within 30 segments). Each write moves k . z towards 1 for its key; z's entries
    pass 1 a little where keys that differ share features."""
    cell = associative(make_model(family), memory_tokens=8).eval()
    g = torch.Generator().manual_seed(0)
    memory, largest_z, largest_a = cell.initial_memory(2), 0.0, 0.0
    with torch.no_grad():
        for _ in range(200):
            memory = cell.write_segment(memory, torch.randint(2, 300, (2, 12), generator=g))
            matrices, norms = split_state(memory[:, 8:], *cell.associative_shape)
            largest_z = max(largest_z, float(norms.abs().max()))
            largest_a = max(largest_a, float(matrices.abs().max()))
    assert torch.isfinite(memory).all()
    assert 0.5 < largest_z < 2, largest_z  # seen: 0.96 (gpt2), 1.06 (llama)
    assert 0 < largest_a < 1000, largest_a  # seen: 101, 23


def test_the_gradient_of_w_v_stays_the_size_of_the_others_whatever_the_normaliser(make_model):
    """A normaliser of either sign near 0 (as the parallel writes left it): reads divide by max(q . z, 1), so W_V's
    gradient stays the size of the rest of the model's (divided by q . z clamped at 1e-5, it was ~1000 times it
    here, and ~1e6 times on a real model)."""
    cell = associative(make_model("llama"), trained=False, memory_tokens=8)  # fresh projections: an upgraded model
    with torch.no_grad():
        for layer in cell.associative.layers:
            layer.beta_bias.fill_(-1.0)
            layer.read_scale.fill_(1.0)  # read at full scale, so that W_V has a gradient
    g = torch.Generator().manual_seed(2)
    memory = cell.initial_memory(2)
    matrices, norms = split_state(memory[:, 8:], *cell.associative_shape)
    norms = torch.randn(norms.shape, generator=g)
    memory = torch.cat([memory[:, :8], join_state(matrices, norms, memory.shape[-1])], dim=1)
    tokens = torch.randint(2, 300, (2, 2, 8), generator=g)
    logits = cell.read_segment(cell.write_segment(memory, tokens[:, 0]), tokens[:, 1])
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                      tokens[:, 1, 1:].reshape(-1)).backward()
    values = torch.stack([layer.value.grad.norm() for layer in cell.associative.layers]).norm()
    rest = torch.stack([p.grad.norm() for name, p in cell.named_parameters()
                        if p.grad is not None and not name.endswith(".value")]).norm()
    assert 0 < values < 100 * rest, (float(values), float(rest))  # seen: 0.02 times


def test_the_feature_map_is_dpfp_of_unit_length():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    phi = feature_map(x)
    assert phi.shape == (5, feature_count(3)) == (5, 18)
    assert (phi >= 0).all() and torch.allclose(phi.norm(dim=-1), torch.ones(5), atol=1e-6)
    assert torch.equal(feature_map(torch.zeros(2, 3)), torch.zeros(2, 18))  # no key: no features, no NaN


# --- the state's layout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, hidden, count", [(32, 32, 24), (16, 32, 24), (32, 32, 96), (7, 5, 3)])
def test_the_state_is_rows_of_the_memory_width_and_splits_back(width, hidden, count):
    matrices, norms = torch.randn(2, 3, count, hidden), torch.randn(2, 3, count)
    state = join_state(matrices, norms, width)
    assert state.shape == (2, 3 * rows_per_layer(count, hidden, width), width)
    again = split_state(state, 3, count, hidden)
    assert torch.equal(again[0], matrices) and torch.equal(again[1], norms)
    unbatched = split_state(state[1], 3, count, hidden)  # the memory file's, without a batch
    assert torch.equal(unbatched[0], matrices[1]) and torch.equal(unbatched[1], norms[1])


def test_the_memory_tensor_holds_the_vectors_then_the_matrices(make_model):
    cell = associative(make_model("opt", word_embed_proj_dim=16))  # memory vectors narrower than the layers
    assert cell.associative_shape == (2, feature_count(KEY), 32) and cell.hidden_size == 16
    memory = cell.initial_memory(3)
    assert memory.shape == (3, M + cell.associative.rows, 16)
    assert torch.equal(memory[:, :M], cell.memory.expand(3, -1, -1)) and not memory[:, M:].any()
    assert isinstance(cell.associative, AssociativeMemory) and len(cell.associative.layers) == 2


# --- gradients and truncated BPTT ----------------------------------------------------------------------------------


def test_gradients_reach_the_projections_across_segments(make_model):
    """The loss is on the final segment, which writes nothing: the gradients of W_K, W_V and W_beta come from what
    the earlier segments wrote, through the matrices."""
    batch = collate([DocumentSample([seq(10, 8), seq(30, 8)], seq(100, 6), [IGNORE_INDEX] * 3 + seq(103, 3))], PAD)
    cell = associative(make_model("gpt2"))
    RecurrentMemoryModel(cell, segment_size=8).train()(batch).loss.backward()
    for name, param in cell.associative.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # A fresh cell reads at scale 0, where training starts: the scale has a gradient (and nothing behind it yet).
    fresh = associative(make_model("gpt2"), trained=False)
    RecurrentMemoryModel(fresh, segment_size=8).train()(batch).loss.backward()
    assert all(layer.read_scale.grad.abs().sum() > 0 for layer in fresh.associative.layers)
    assert all(not layer.value.grad.any() for layer in fresh.associative.layers)


def test_gradient_checkpointing_recomputes_the_reads_and_writes(make_model):
    """Under checkpointing each segment runs again in backward: its reads and writes must be redone the same."""
    docs = [DocumentSample([seq(10, 8), seq(20, 8), seq(30, 8)], seq(40, 6), [IGNORE_INDEX] * 3 + [43, 44, 45]),
            DocumentSample([seq(50, 8), seq(60, 5)], seq(70, 5), [IGNORE_INDEX] * 3 + [73, 74])]
    batch = collate(docs, PAD)
    results = []
    for checkpointing in (False, True):
        cell = associative(make_model("llama"))
        rmt = RecurrentMemoryModel(cell, segment_size=8, bptt_depth=2, gradient_checkpointing=checkpointing).train()
        out = rmt(batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in rmt.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6) and grads_a.keys() == grads_b.keys()
    assert "cell.associative.layers.0.key" in grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("depth", [1, 2])
def test_truncated_bptt_cuts_the_graph_through_the_matrices(make_model, architecture, depth):
    batch, other = _four_segment_batch()
    cell = associative(make_model(architecture, tie_word_embeddings=False))
    rmt = RecurrentMemoryModel(cell, segment_size=8, bptt_depth=depth).train()
    reached, real = [], cell.forward_segment

    def recording(*args, **kwargs):
        new_memory, logits, gate = real(*args, **kwargs)
        if new_memory is not None:
            step = recording.writes
            recording.writes += 1
            if new_memory.requires_grad:  # segments beyond the depth run without a graph
                new_memory.register_hook(lambda grad, step=step: reached.append(step))
        return new_memory, logits, gate

    recording.writes = 0
    cell.forward_segment = recording
    rmt(batch).loss.backward()
    assert recording.writes == 4 and sorted(reached) == list(range(4 - depth, 4))
    grad = cell.model.get_input_embeddings().weight.grad
    for k, segment in enumerate(SEGMENT_IDS):
        assert _nonzero(grad, sorted(set(segment) | set(other[k]))) == (k >= 4 - depth), k


# --- ingest and ask ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [57, 305])
def test_append_equals_one_pass_through_the_cli(tmp_path, checkpoint, cut):
    data = TEXT.encode()
    (tmp_path / "a.txt").write_bytes(data[:cut])
    (tmp_path / "b.txt").write_bytes(data[cut:])
    (tmp_path / "ab.txt").write_bytes(data)
    for args in (["ab.txt", "-o", "one.st"], ["a.txt", "-o", "two.st"], ["--append", "two.st", "b.txt"]):
        r = run_cli(["ingest", *[tmp_path / a if a.endswith((".txt", ".st")) else a for a in args], "--model",
                     checkpoint, "-q"])
        assert r.exit_code == 0, r.stderr
    one, two = load_memory(tmp_path / "one.st"), load_memory(tmp_path / "two.st")
    assert one.segments == two.segments > 4 and one.tail_tokens == two.tail_tokens
    assert torch.equal(one.memory, two.memory)  # the vectors and every layer's matrix, bit for bit
    assert one.associative_shape == two.associative_shape == (2, feature_count(KEY), 32)
    with safe_open(str(tmp_path / "one.st"), framework="pt") as f:
        assert set(f.keys()) == {"memory", "tail_tokens", "associative_matrices", "associative_norms"}
        assert f.get_tensor("memory").shape == (M, 32) and f.get_tensor("associative_matrices").abs().sum() > 0
    answers = [run_cli(["ask", tmp_path / name, "Where is Mary?", "--model", checkpoint, "--max-new-tokens", "3"])
               for name in ("one.st", "two.st")]
    assert answers[0].exit_code == 0 and answers[0].stdout == answers[1].stdout


def test_batched_ingest_matches_streamed_within_tolerance(tmp_path, model):
    for batched, single in batched_and_single_ingests(tmp_path, model, [TEXT[: 300 + 250 * i] for i in range(3)]):
        assert batched.segments == single.segments > 1
        # Rounding relative to the matrices' scale (entries up to ~16 here), compounded over the segments: the
        # reads of the matrices feed the next segment's writes (seen: 1.5e-5 of the scale).
        assert torch.allclose(batched.memory, single.memory, atol=5e-5 * float(single.memory.abs().max()))


def test_bfloat16_ingest_agrees_with_float32_within_tolerance(tmp_path, checkpoint, memory_file):
    (tmp_path / "book.txt").write_text(TEXT)
    r = run_cli(["ingest", tmp_path / "book.txt", "-o", tmp_path / "bf16.st", "--model", checkpoint, "--dtype",
                 "bfloat16", "-q"])
    assert r.exit_code == 0, r.stderr
    bf16, fp32 = load_memory(tmp_path / "bf16.st"), load_memory(memory_file)
    assert bf16.memory.dtype == torch.bfloat16 and bf16.associative_shape == fp32.associative_shape
    # bf16 rounding compounds over the segments, in the matrices as in the vectors (this random model's reads
    # and writes are strong, W_V ~ N(0, 0.3): seen 0.37 of the vectors' norm, 0.32 of the matrices')
    difference = bf16.memory.float() - fp32.memory
    assert difference[:M].norm() / fp32.memory[:M].norm() < 0.5
    assert difference[M:].norm() / fp32.memory[M:].norm() < 0.5
    answer = run_cli(["ask", tmp_path / "bf16.st", "Where is Mary?", "--model", checkpoint, "--max-new-tokens", "2"])
    assert answer.exit_code == 0, answer.stderr  # asked in the file's dtype


def test_the_trace_counts_the_matrices_too(tmp_path, checkpoint):
    (tmp_path / "book.txt").write_text(TEXT)
    r = run_cli(["ingest", tmp_path / "book.txt", "-o", tmp_path / "m.st", "--model", checkpoint, "--trace",
                 tmp_path / "t.jsonl", "-q"])
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert lines and all(x["change"] > 0 and "gate_max" not in x for x in lines)


# --- memory files ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_file(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("memfile")
    (folder / "book.txt").write_text(TEXT)
    [result] = ingest([IngestJob([str(folder / "book.txt")], folder / "m.st")], model)
    assert result.error is None
    return folder / "m.st"


def test_other_rules_refuse_an_associative_memory_file_and_it_refuses_theirs(tmp_path, tokenizer, make_model,
                                                                            memory_file, model):
    """Same base weights, memory tokens, segment size and tokenizer: the fingerprint tells the rules apart, and
    even --force cannot make one rule read the other's memory."""
    gated_cell = MemoryCell(make_model("gpt2"), M, "gated", 0.001)
    gated_cell.memory = model.cell.memory
    gated = save_checkpoint(tmp_path / "gated", gated_cell, tokenizer,
                            MemorySpec(num_mem_tokens=M, segment_size=TINY_SEGMENT, update="gated"), "test")
    r = run_cli(["ask", memory_file, "Where is Mary?", "--model", gated])
    one_error_line(r, 2, "made by another model or setting")
    r = run_cli(["ask", memory_file, "Where is Mary?", "--model", gated, "--force"])
    one_error_line(r, 2, f"associative matrices (layers x features x hidden) 2 x {feature_count(KEY)} x 32; this "
                         f"model's: none", "even with --force")
    (tmp_path / "book.txt").write_text(TEXT)
    assert run_cli(["ingest", tmp_path / "book.txt", "-o", tmp_path / "g.st", "--model", gated, "-q"]).exit_code == 0
    with pytest.raises(UsageError, match=f"matrices .* none; this model's: 2 x {feature_count(KEY)} x 32"):
        check_compatible(load_memory(tmp_path / "g.st"), model, force=True, name="g.st")
    other_key = associative(make_model("gpt2"), key_size=KEY + 1)
    other = load_checkpoint(save_checkpoint(tmp_path / "k5", other_key, tokenizer,
                                            spec(associative_key_size=KEY + 1), "test"))
    with pytest.raises(UsageError, match="matrices .* 2 x 24 x 32; this model's: 2 x 30 x 32"):
        check_compatible(load_memory(memory_file), other, force=True, name="m.st")


def _tensors(path):
    """A memory file's tensors and metadata, without its checksum: files crafted from them reach every check."""
    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "tensors_sha256"}
        return {name: f.get_tensor(name) for name in f.keys()}, meta


@pytest.mark.parametrize("change, words", [
    (lambda t: t.pop("associative_norms"), "holds associative_matrices but lacks associative_norms"),
    (lambda t: t.pop("associative_matrices"), "holds associative_norms but lacks associative_matrices"),
    (lambda t: t.update(associative_norms=t["associative_norms"].double()), "associative_norms is float64"),
    (lambda t: t.update(associative_matrices=t["associative_matrices"].half()), "associative_matrices is float16"),
    (lambda t: t.update(associative_norms=t["associative_norms"][:, :-1].contiguous()), "expected [layers, features"),
    (lambda t: t.update(associative_matrices=t["associative_matrices"][0].contiguous()), "expected [layers, features"),
    (lambda t: t.update(associative_matrices=t["associative_matrices"][:0].contiguous(),
                        associative_norms=t["associative_norms"][:0].contiguous()), "expected [layers, features"),
    (lambda t: t["associative_matrices"].view(-1).__setitem__(5, float("nan")), "associative_matrices holds NaN"),
    (lambda t: t["associative_norms"].view(-1).__setitem__(0, float("inf")), "associative_norms holds NaN, infinite"),
    (lambda t: t["associative_norms"].view(-1).__setitem__(0, 1e6), "beyond"),
    (lambda t: t.update(associative_matrices=torch.zeros(3, 24, 32), associative_norms=torch.zeros(3, 24)),
     "2 x 24 x 32"),  # well formed, but for a model of 3 layers
])
def test_a_crafted_associative_memory_file_is_one_error_line(tmp_path, model, memory_file, change, words):
    tensors, meta = _tensors(memory_file)
    tensors = {name: t.clone() for name, t in tensors.items()}
    change(tensors)
    save_file(tensors, str(tmp_path / "bad.st"), metadata=meta)
    with pytest.raises(UsageError) as caught:
        check_compatible(load_memory(tmp_path / "bad.st"), model, force=True, name=str(tmp_path / "bad.st"))
    assert len(str(caught.value).splitlines()) == 1 and words in str(caught.value), str(caught.value)


def test_matrices_at_the_value_cap_answer_finitely(tmp_path, model, memory_file):
    """The most a file can hold: matrices at ±65,504 and normalisers at zero or negative (a read divides by the
    smallest normaliser allowed)."""
    tensors, meta = _tensors(memory_file)
    signs = torch.randint(0, 2, tensors["associative_matrices"].shape, generator=torch.Generator().manual_seed(0))
    tensors["associative_matrices"] = (signs * 2 - 1).float() * 65504
    tensors["associative_norms"] = -torch.ones_like(tensors["associative_norms"]) * 65504
    save_file(tensors, str(tmp_path / "cap.st"), metadata=meta)
    state = load_memory(tmp_path / "cap.st")
    check_compatible(state, model, force=False, name="cap.st")
    assert torch.isfinite(torch.tensor(ask(model, state, "Where is Mary?", 2).logprob))


def test_a_memory_file_saves_and_loads_unchanged(tmp_path, memory_file):
    state = load_memory(memory_file)
    save_memory(tmp_path / "again.st", state)
    again = load_memory(tmp_path / "again.st")
    assert torch.equal(again.memory, state.memory) and again.associative_shape == state.associative_shape
    assert _tensors(tmp_path / "again.st")[0].keys() == _tensors(memory_file)[0].keys()


# --- recipes, checkpoints, fingerprints --------------------------------------------------------------------------


def test_recipe_settings_of_the_associative_rule():
    assert MemorySpec().associative_key_size == KEY_SIZE  # the recipe's default is the cell's
    base = {"curriculum": [{"segments": 1, "steps": 1}], "model": {"architecture": "gpt2"},
            "tokenizer": {"kind": "bpe"}}
    recipe = validate_recipe({**base, "memory": {"update": "associative", "associative_key_size": 8}})
    assert recipe.memory.update == "associative" and recipe.memory.associative_key_size == 8
    for memory, words in (({"update": "associative", "num_mem_tokens": 0}, "num_mem_tokens >= 1"),
                          ({"update": "associative", "associative_key_size": 0}, "associative_key_size"),
                          ({"update": "asociative"}, "memory.update")):
        with pytest.raises(UsageError, match=words):
            validate_recipe({**base, "memory": memory})
    with pytest.raises(UsageError, match="num_mem_tokens >= 1"):
        MemoryCell(torch.nn.Module(), 0, "associative")


def test_fingerprint_tells_the_rule_and_key_size_apart(tokenizer, make_model):
    cell = associative(make_model("gpt2"))
    base = fingerprint(cell, tokenizer, spec())
    assert fingerprint(cell, tokenizer, spec()) == base
    assert fingerprint(cell, tokenizer, spec(associative_key_size=KEY + 1)) != base
    with torch.no_grad():
        cell.associative.layers[1].key[0, 0] += 1e-3  # the projections are weights of the model
    assert fingerprint(cell, tokenizer, spec()) != base
    replace = MemoryCell(cell.model, M)
    replace.memory = cell.memory
    plain = MemorySpec(num_mem_tokens=M, segment_size=TINY_SEGMENT)
    assert fingerprint(replace, tokenizer, plain) != base
    # The replace rule's fingerprint is unchanged by the new setting (old memory files stay valid).
    assert fingerprint(replace, tokenizer, plain) == fingerprint(replace, tokenizer, MemorySpec(
        num_mem_tokens=M, segment_size=TINY_SEGMENT, associative_key_size=KEY + 1))


def test_checkpoint_keeps_the_projections(tmp_path, checkpoint, model):
    stored = load_file(str(checkpoint / "memory.safetensors"))
    assert "associative.layers.1.value" in stored and torch.equal(
        stored["associative.layers.1.value"], model.cell.associative.layers[1].value)
    assert model.memory_settings.update == "associative" and model.cell.associative_shape == (2, 24, 32)
    # rmt.json read as the replace rule: the projections are a tensor it does not use.
    info = json.loads((checkpoint / "rmt.json").read_text())
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    info["memory"]["update"] = "replace"
    (broken / "rmt.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="which the memory update rule 'replace' does not use"):
        load_checkpoint(broken)


# --- training --------------------------------------------------------------------------------------------------


def test_a_short_training_run_with_the_associative_rule_lowers_the_loss(tmp_path):
    data = tiny_recipe(tmp_path / "run", curriculum=[{"segments": 2, "steps": 24}], threads=1)
    data["memory"] = {**data["memory"], "update": "associative", "associative_key_size": KEY}
    run_training(copy.deepcopy(data))
    losses = step_losses(tmp_path / "run")
    assert len(losses) == 24 and all(loss == loss for loss in losses.values())
    first, last = [losses[s] for s in sorted(losses)[:4]], [losses[s] for s in sorted(losses)[-4:]]
    assert sum(last) / 4 < 0.85 * sum(first) / 4, losses  # from ~5.5 to ~4.0 in 24 steps
    loaded = load_checkpoint(tmp_path / "run" / "final")
    assert loaded.memory_settings.update == "associative"
    assert any(layer.value.abs().sum() > 0 for layer in loaded.cell.associative.layers)  # it learned to write
