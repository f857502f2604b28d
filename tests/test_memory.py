"""The memory cell and the recurrence: shapes, information flow, padding, truncated BPTT, checkpointing, reset."""

import pytest
import torch
import torch.nn.functional as F

import rmt_cli.core.memory as memory_module
from rmt_cli.core.memory import IGNORE_INDEX, MemoryCell, RecurrentMemoryModel, answer_correct
from rmt_cli.core.segments import DocumentSample, collate

M = 3  # memory tokens
D = 32  # hidden size of the tiny models
PAD = 1  # any id: padded positions are masked


def cell_for(make_model, architecture, num_mem_tokens=M, seed=0, **overrides):
    return MemoryCell(make_model(architecture, seed, **overrides), num_mem_tokens).eval()


def ids(*values):
    return torch.tensor([list(values)], dtype=torch.long)


def seq(start, length):
    return list(range(start, start + length))


# --- shapes and information flow -----------------------------------------------------------------------------


def test_write_segment_shape_and_read_logits(make_model, architecture, tokenizer):
    cell = cell_for(make_model, architecture)
    tokens = torch.randint(2, len(tokenizer), (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        memory = cell.initial_memory(2)
        assert memory.shape == (2, M, D)
        new = cell.write_segment(memory, tokens)
        assert new.shape == (2, M, D)
        assert torch.isfinite(new).all()
        logits = cell.read_segment(new, tokens)
    assert logits.shape == (2, 10, len(tokenizer))
    # The new memory is the model's output, not a copy of the memory it read.
    assert not torch.allclose(new, memory)


def test_written_memory_depends_on_segment_tokens(make_model, architecture):
    cell = cell_for(make_model, architecture)
    a = ids(*seq(20, 12))
    b = a.clone()
    b[0, 0] = 99  # differ in the first token only: the write positions come after it and must see it
    with torch.no_grad():
        start = cell.initial_memory(1)
        mem_a = cell.write_segment(start, a)
        mem_a_again = cell.write_segment(start, a)
        mem_b = cell.write_segment(start, b)
    assert torch.equal(mem_a, mem_a_again)
    assert not torch.allclose(mem_a, mem_b, atol=1e-4)


def test_final_logits_depend_on_incoming_memory(make_model, architecture):
    cell = cell_for(make_model, architecture)
    final = ids(*seq(50, 8))
    with torch.no_grad():
        start = cell.initial_memory(1)
        mem_a = cell.write_segment(start, ids(*seq(20, 12)))
        mem_b = cell.write_segment(start, ids(*seq(100, 12)))
        logits_a = cell.read_segment(mem_a, final)
        logits_a_again = cell.read_segment(mem_a.clone(), final)
        logits_b = cell.read_segment(mem_b, final)
    assert torch.equal(logits_a, logits_a_again)
    # Every final position (the last one too) reads the memory.
    for pos in (0, final.shape[1] - 1):
        assert not torch.allclose(logits_a[:, pos], logits_b[:, pos], atol=1e-4)


def test_memory_chain_carries_first_segment_to_the_end(make_model, architecture):
    """Through two further writes, the final logits still depend on the first segment's tokens."""
    cell = cell_for(make_model, architecture)
    final = ids(*seq(50, 6))

    def run(first):
        memory = cell.initial_memory(1)
        for segment in (first, ids(*seq(200, 10)), ids(*seq(220, 10))):
            memory = cell.write_segment(memory, segment)
        return cell.read_segment(memory, final)

    with torch.no_grad():
        assert not torch.allclose(run(ids(*seq(20, 10))), run(ids(*seq(120, 10))), atol=1e-5)


def test_zero_memory_tokens_is_the_plain_language_model(make_model, architecture):
    model = make_model(architecture).eval()
    cell = MemoryCell(model, 0).eval()
    tokens = ids(*seq(30, 9))
    with torch.no_grad():
        memory = cell.write_segment(cell.initial_memory(1), tokens)
        assert memory.shape == (1, 0, D)
        logits = cell.read_segment(memory, tokens)
        plain = model(input_ids=tokens).logits
    assert torch.allclose(logits, plain, atol=1e-5)


def test_zero_memory_tokens_recurrent_model_trains(make_model, architecture):
    cell = MemoryCell(make_model(architecture), 0)
    rmt = RecurrentMemoryModel(cell, segment_size=8).train()
    samples = [DocumentSample([seq(20, 8), seq(40, 8)], seq(60, 6), [IGNORE_INDEX] * 4 + [61, 62],
                              write_labels=[seq(20, 8), seq(40, 8)]),
               DocumentSample([seq(80, 5)], seq(90, 4), [IGNORE_INDEX] * 2 + [92, 93], write_labels=[seq(80, 5)])]
    batch = collate(samples, PAD)
    out = rmt(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in cell.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # No memory: reset or not, the answer logits are the same.
    with torch.no_grad():
        rmt.eval()
        a = rmt(batch).final_logits
        b = rmt(batch, reset_memory=True).final_logits
    assert torch.allclose(a, b, atol=1e-6)


# --- padding ---------------------------------------------------------------------------------------------------


def _write_batch(short, long):
    samples = [DocumentSample([short], [5], [IGNORE_INDEX]), DocumentSample([long], [5], [IGNORE_INDEX])]
    return collate(samples, PAD)


def test_left_padded_write_gives_the_unpadded_memory(make_model, architecture):
    cell = cell_for(make_model, architecture)
    short, long = seq(20, 5), seq(60, 11)
    step = _write_batch(short, long).steps[0]
    assert step.attention_mask[0].tolist() == [0] * 6 + [1] * 5  # left padded
    with torch.no_grad():
        batched = cell.write_segment(cell.initial_memory(2), step.input_ids, step.attention_mask)
        alone_short = cell.write_segment(cell.initial_memory(1), torch.tensor([short]))
        alone_long = cell.write_segment(cell.initial_memory(1), torch.tensor([long]))
    assert torch.allclose(batched[0], alone_short[0], atol=1e-5)
    assert torch.allclose(batched[1], alone_long[0], atol=1e-5)


@pytest.mark.parametrize("num_mem_tokens", [0, M])
def test_left_padded_write_logits_match_unpadded(make_model, architecture, num_mem_tokens):
    """Language-modelling writes produce logits too; padding (even with no memory in front) must not leak."""
    cell = cell_for(make_model, architecture, num_mem_tokens)
    short, long = seq(20, 5), seq(60, 11)
    step = _write_batch(short, long).steps[0]
    with torch.no_grad():
        _, batched, _ = cell.forward_segment(cell.initial_memory(2), step.input_ids, step.attention_mask, True, True)
        _, alone, _ = cell.forward_segment(cell.initial_memory(1), torch.tensor([short]), None, True, True)
    assert torch.isfinite(batched[0, -5:]).all()
    assert torch.allclose(batched[0, -5:], alone[0], atol=1e-5)


@pytest.mark.parametrize("num_mem_tokens", [0, M])
def test_right_padded_final_gives_the_unpadded_logits(make_model, architecture, num_mem_tokens):
    cell = cell_for(make_model, architecture, num_mem_tokens)
    short, long = seq(30, 4), seq(70, 9)
    samples = [DocumentSample([], short, [IGNORE_INDEX] * 4), DocumentSample([], long, [IGNORE_INDEX] * 9)]
    batch = collate(samples, PAD)
    assert batch.final_mask[0].tolist() == [1] * 4 + [0] * 5  # right padded
    with torch.no_grad():
        # Different memories per row, so a mix-up between rows would show.
        start = cell.initial_memory(1)
        mem_short = cell.write_segment(start, ids(*seq(100, 6)))
        mem_long = cell.write_segment(start, ids(*seq(140, 6)))
        memory = torch.cat([mem_short, mem_long])
        batched = cell.read_segment(memory, batch.final_ids, batch.final_mask)
        alone_short = cell.read_segment(mem_short, torch.tensor([short]))
        alone_long = cell.read_segment(mem_long, torch.tensor([long]))
    assert torch.allclose(batched[0, :4], alone_short[0], atol=1e-5)
    assert torch.allclose(batched[1], alone_long[0], atol=1e-5)


def test_batched_recurrence_matches_streaming_each_document(make_model, architecture):
    """Documents with different numbers of segments in one batch: each row's answer logits are those of
    streaming that document alone with write_segment / read_segment (the ingest and ask path)."""
    cell = cell_for(make_model, architecture)
    rmt = RecurrentMemoryModel(cell, segment_size=8).eval()
    docs = [
        DocumentSample([seq(10, 8), seq(20, 8), seq(30, 3)], seq(40, 5), [IGNORE_INDEX] * 3 + [43, 44]),
        DocumentSample([seq(50, 8)], seq(60, 7), [IGNORE_INDEX] * 5 + [65, 66]),
        DocumentSample([], seq(70, 3), [IGNORE_INDEX, 71, 72]),
    ]
    batch, _ = assert_batch_equals_streaming(cell, rmt, docs, atol=1e-5)
    assert batch.writes_per_row.tolist() == [3, 1, 0]


def assert_batch_equals_streaming(cell, rmt, docs, atol):
    """Each row of `rmt` on the batch of `docs` has the answer logits and memory of streaming that document alone
    through write_segment / read_segment (the ingest and ask path). Returns the batch and the batched output."""
    batch = collate(docs, PAD)
    with torch.no_grad():
        out = rmt(batch)
        for row, doc in enumerate(docs):
            memory = cell.initial_memory(1)
            for segment in doc.writes:
                memory = cell.write_segment(memory, torch.tensor([segment]))
            alone = cell.read_segment(memory, torch.tensor([doc.final_ids]))
            # a causal LM's logits per final token (the row's own, not its padding); a classifier's per row
            batched = out.final_logits[row]
            if batched.dim() == 2:
                batched = batched[: len(doc.final_ids)]
            assert torch.allclose(batched, alone[0], atol=atol), row
            assert torch.allclose(out.memory[row], memory[0], atol=atol), row
    return batch, out


# --- loss and accuracy -----------------------------------------------------------------------------------------


def test_loss_is_the_mean_over_answer_tokens(make_model):
    cell = cell_for(make_model, "gpt2")
    rmt = RecurrentMemoryModel(cell, segment_size=8).eval()
    docs = [DocumentSample([seq(10, 8)], seq(40, 5), [IGNORE_INDEX] * 3 + [43, 44]),
            DocumentSample([], seq(60, 4), [IGNORE_INDEX] * 3 + [63])]
    batch = collate(docs, PAD)
    with torch.no_grad():
        out = rmt(batch)
    assert out.num_loss_tokens == 3
    logits = out.final_logits
    expected = torch.stack([F.cross_entropy(logits[0, 2], torch.tensor(43), reduction="sum"),
                            F.cross_entropy(logits[0, 3], torch.tensor(44), reduction="sum"),
                            F.cross_entropy(logits[1, 2], torch.tensor(63), reduction="sum")]).mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)


def test_answer_correct_requires_every_answer_token():
    vocab = 10
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4],
                           [IGNORE_INDEX] * 4])
    logits = torch.zeros(3, 4, vocab)
    logits[:, 1, 3] = 1  # position 1 predicts token 2
    logits[0, 2, 4] = 1
    logits[1, 2, 5] = 1  # second answer token wrong
    assert answer_correct(logits, labels).tolist() == [True, False, False]  # no answer: not correct


# --- truncated back-propagation through time ------------------------------------------------------------------

# Each of the 4 write segments, and the final segment, uses its own token ids, so the gradient of an input
# embedding row tells which segments the loss back-propagated into.
SEGMENT_IDS = [seq(10, 8), seq(30, 8), seq(50, 8), seq(70, 8)]
FINAL_IDS = seq(100, 6)


def _four_segment_batch():
    other = [[t + 8 for t in s[:6]] for s in SEGMENT_IDS]  # second row: other ids, same segments
    labels = [IGNORE_INDEX] * 3 + FINAL_IDS[3:]
    docs = [DocumentSample([list(s) for s in SEGMENT_IDS], FINAL_IDS, labels),
            DocumentSample(other, FINAL_IDS[:5], labels[:5])]
    return collate(docs, PAD), other


def _backprop(make_model, architecture, depth, batch):
    # Untied embeddings: with tied ones the LM head's softmax sends gradient to every embedding row.
    cell = MemoryCell(make_model(architecture, tie_word_embeddings=False), M)
    rmt = RecurrentMemoryModel(cell, segment_size=8, bptt_depth=depth).train()
    out = rmt(batch)
    out.loss.backward()
    embeddings = cell.model.get_input_embeddings().weight.grad
    return cell, embeddings


def _nonzero(grad, rows=None):
    if grad is None:
        return False
    if rows is not None:
        grad = grad[rows]
    return bool(grad.abs().sum() > 0)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, None])
def test_truncated_bptt_reaches_exactly_depth_segments(make_model, architecture, depth):
    batch, other = _four_segment_batch()
    cell, grad = _backprop(make_model, architecture, depth, batch)
    assert grad is not None
    assert _nonzero(grad, FINAL_IDS)
    reach = 4 if depth is None else depth
    for k, segment in enumerate(SEGMENT_IDS):
        only_here = sorted(set(segment) | set(other[k]))
        expected = k >= 4 - reach
        assert _nonzero(grad, only_here) == expected, f"segment {k}, depth {depth}"
    # The learned initial memory is read by the first segment only.
    assert _nonzero(cell.memory.grad) == (reach >= 4)


def test_truncated_bptt_counts_from_each_rows_own_last_segment(make_model, architecture):
    """A row with 2 writes in a batch of 4-write rows: depth 1 keeps its 2nd segment, cuts its 1st."""
    long_row = DocumentSample([list(s) for s in SEGMENT_IDS], FINAL_IDS, [IGNORE_INDEX] * 4 + FINAL_IDS[4:])
    short_first, short_last = seq(130, 5), seq(140, 5)
    short_row = DocumentSample([short_first, short_last], FINAL_IDS[:4], [IGNORE_INDEX] * 3 + FINAL_IDS[3:4])
    batch = collate([long_row, short_row], PAD)
    _, grad = _backprop(make_model, architecture, 1, batch)
    assert _nonzero(grad, short_last)
    assert not _nonzero(grad, short_first)
    assert _nonzero(grad, SEGMENT_IDS[3])
    assert not _nonzero(grad, SEGMENT_IDS[2])


# --- gradient checkpointing ------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(make_model, architecture, monkeypatch):
    calls = []
    real_checkpoint = memory_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(memory_module, "checkpoint", counting)
    docs = [DocumentSample([seq(10, 8), seq(20, 8), seq(30, 8)], seq(40, 6), [IGNORE_INDEX] * 3 + [43, 44, 45],
                           write_labels=[seq(10, 8), seq(20, 8), seq(30, 8)]),
            DocumentSample([seq(50, 8), seq(60, 5)], seq(70, 5), [IGNORE_INDEX] * 3 + [73, 74],
                           write_labels=[seq(50, 8), seq(60, 5)])]
    batch = collate(docs, PAD)
    results = []
    for checkpointing in (False, True):
        cell = MemoryCell(make_model(architecture), M)
        rmt = RecurrentMemoryModel(cell, segment_size=8, bptt_depth=2, gradient_checkpointing=checkpointing).train()
        out = rmt(batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in rmt.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), grads))
        assert bool(calls) == checkpointing  # the checkpointed path really ran
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and "cell.memory" in grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-4), name


# --- the no-memory baseline ------------------------------------------------------------------------------------


def test_reset_memory_ignores_the_earlier_segments(make_model, architecture):
    cell = cell_for(make_model, architecture)
    rmt = RecurrentMemoryModel(cell, segment_size=8).eval()
    finals = [(seq(40, 6), [IGNORE_INDEX] * 4 + [44, 45]), (seq(60, 4), [IGNORE_INDEX] * 3 + [63])]
    with_writes = collate([DocumentSample([seq(10, 8), seq(20, 8)], *finals[0]),
                           DocumentSample([seq(30, 8)], *finals[1])], PAD)
    without_writes = collate([DocumentSample([], *finals[0]), DocumentSample([], *finals[1])], PAD)
    with torch.no_grad():
        reset = rmt(with_writes, reset_memory=True)
        never_written = rmt(without_writes)
        remembered = rmt(with_writes)
    assert torch.allclose(reset.final_logits, never_written.final_logits, atol=1e-6)
    assert torch.allclose(reset.loss, never_written.loss, atol=1e-6)
    # ...and the memory run really is different, so the comparison above means something.
    assert not torch.allclose(remembered.final_logits, never_written.final_logits, atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2])
def test_truncated_bptt_cuts_the_graph_itself(make_model, architecture, depth):
    """Backward never reaches a cut segment's memory at all (not merely zero gradients through it)."""
    batch, _ = _four_segment_batch()
    cell = MemoryCell(make_model(architecture), M)
    rmt = RecurrentMemoryModel(cell, segment_size=8, bptt_depth=depth).train()
    reached: list[int] = []
    real = cell.forward_segment
    outputs = []

    def recording(*args, **kwargs):
        new_memory, logits, gate = real(*args, **kwargs)
        if new_memory is not None:
            step = len(outputs)
            if new_memory.requires_grad:
                new_memory.register_hook(lambda grad, step=step: reached.append(step))
            outputs.append(new_memory)
        return new_memory, logits, gate

    cell.forward_segment = recording
    rmt(batch).loss.backward()
    assert len(outputs) == 4
    assert sorted(reached) == list(range(4 - depth, 4))  # only the last `depth` writes are back-propagated into
    # ...and the segments before those (no loss of their own) built no graph at all, so none is kept in memory
    assert [bool(m.requires_grad) for m in outputs] == [k >= 4 - depth for k in range(4)]
