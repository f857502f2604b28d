"""Memory update rules: the gated rule's exact pass-through, its supervision, and checkpoints that carry it."""

import pytest
import torch

from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.storage.fingerprint import fingerprint
from rmt_cli.errors import UsageError
from rmt_cli.core.memory import GATE_INIT_BIAS, MemoryCell, RecurrentMemoryModel
from rmt_cli.storage.recipe import MemorySpec
from rmt_cli.core.segments import DocumentSample, collate, qa_sample

M = 3


def gated(make_model, architecture="gpt2", floor=0.01, seed=0):
    return MemoryCell(make_model(architecture, seed), M, "gated", floor).eval()


def tokens(start, length=10):
    return torch.tensor([list(range(start, start + length))])


def test_a_fresh_gate_mostly_keeps_the_old_memory(make_model, architecture):
    cell = gated(make_model, architecture)
    with torch.no_grad():
        old = cell.initial_memory(1)
        hidden = cell._hidden_states(old, tokens(20), None, True)[:, M + 10:]
        new, gate = cell.update_memory(old, hidden)
    assert torch.allclose(gate, torch.sigmoid(torch.tensor(GATE_INIT_BIAS)).expand_as(gate))
    # old + g (written - old): a fresh gate moves the memory a twentieth of the way to what was written
    assert torch.allclose(new, old + gate.unsqueeze(-1) * (hidden - old), atol=1e-6)
    assert not torch.equal(new, old)


def test_a_shut_gate_passes_the_memory_through_bit_for_bit(make_model, architecture):
    cell = gated(make_model, architecture, floor=0.5)  # the fresh gate (0.05) is under this floor: shut
    with torch.no_grad():
        memory = start = cell.initial_memory(2) * 1.7
        for i in range(50):
            memory = cell.write_segment(memory, torch.randint(2, 300, (2, 12), generator=torch.Generator().manual_seed(i)))
    assert torch.equal(memory, start)
    replace = MemoryCell(cell.model, M).eval()  # the same weights with the replace rule forget the start
    with torch.no_grad():
        assert not torch.allclose(replace.write_segment(start, tokens(20, 12).expand(2, -1)), start)


def test_gates_can_open_one_slot_and_keep_the_others(make_model):
    cell = gated(make_model, floor=0.5)
    with torch.no_grad():
        old = cell.initial_memory(1)
        written = torch.randn(1, M, old.shape[-1])
        cell.gate.weight.zero_()
        cell.gate.bias.fill_(0.0)  # every gate 0.5: at the floor, so open
        new, gate = cell.update_memory(old, written)
        assert torch.allclose(new, (old + written) / 2, atol=1e-6)
        cell.gate.bias.fill_(-10.0)
        new, _ = cell.update_memory(old, written)
        assert torch.equal(new, old)


def test_gate_supervision_shuts_gates_on_noise_and_opens_them_on_facts(make_model, tokenizer):
    torch.manual_seed(0)
    cell = MemoryCell(make_model("gpt2"), M, "gated", 0.0)
    rmt = RecurrentMemoryModel(cell, 8, gate_supervision=1.0)
    docs = [DocumentSample([list(range(10, 18)), list(range(20, 28))], [5, 6], [-100, 6], write_has_fact=[True, False]),
            DocumentSample([list(range(30, 38)), list(range(40, 48))], [5, 7], [-100, 7], write_has_fact=[False, True])]
    batch = collate(docs, tokenizer.pad_token_id)
    assert batch.steps[0].has_fact.tolist() == [True, False]
    optimizer = torch.optim.Adam(rmt.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = rmt(batch)
        first = first if first is not None else float(out.gate_loss.detach())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(out.gate_loss.detach()) < first / 3
    with torch.no_grad():
        _, _, gate = cell.forward_segment(cell.initial_memory(2), batch.steps[0].input_ids, batch.steps[0].attention_mask)
    assert gate[0].max() > 0.5 and gate[1].max() < 0.2  # open on the fact segment, shut on the noise one
    plain = RecurrentMemoryModel(cell, 8)  # no supervision: no gate term in the loss
    assert plain(batch).gate_loss is None


def test_qa_sample_marks_the_segments_that_hold_facts():
    doc = list(range(100, 130))
    marks = [False] * 30
    marks[12] = True  # a fact token in the second segment of 10
    sample = qa_sample(doc, [1, 2], [3, 4], 10, marks)
    assert sample.write_has_fact == [False, True, False]


def test_more_questions_fill_the_final_segment_only_while_they_fit():
    q, a = [1, 2, 3], [4, 0]
    sample = qa_sample(list(range(100, 104)), q, a, 16, more=[([5, 6, 7], [8, 0]), ([9, 9, 9], [7, 0])])
    assert sample.final_ids == list(range(100, 104)) + q + a + [5, 6, 7, 8, 0]  # the third pair would not fit
    assert sample.final_labels == [-100] * 7 + a + [-100] * 3 + [8, 0]


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_gated_checkpoint_round_trip_and_fingerprint(tmp_path, tokenizer, make_model, architecture):
    cell = gated(make_model, architecture)
    with torch.no_grad():
        cell.gate.weight.normal_()
    spec = MemorySpec(num_mem_tokens=M, segment_size=16, update="gated", gate_floor=0.01)
    save_checkpoint(tmp_path / "ck", cell, tokenizer, spec, "test")
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.cell.update == "gated" and loaded.cell.gate_floor == 0.01
    assert torch.equal(loaded.cell.gate.weight, cell.gate.weight)
    assert loaded.info["fingerprint"] == fingerprint(cell, tokenizer, spec)
    replace_spec = MemorySpec(num_mem_tokens=M, segment_size=16)
    plain = MemoryCell(cell.model, M)
    plain.memory = cell.memory
    assert fingerprint(plain, tokenizer, replace_spec) != fingerprint(cell, tokenizer, spec)
    # A gated checkpoint whose memory file lost the gate says so.
    from safetensors.torch import save_file

    save_file({"memory": cell.memory.detach()}, str(tmp_path / "ck" / "memory.safetensors"))
    with pytest.raises(UsageError, match="gate"):
        load_checkpoint(tmp_path / "ck")


def test_ingest_trace_shows_where_the_memory_changed(tmp_path, tokenizer, make_model):
    import json

    from typer.testing import CliRunner

    from rmt_cli.cli import app

    book = tmp_path / "book.txt"
    book.write_text("Mary went to the kitchen. The old man saw a red boat near the river. " * 30)
    changes = {}
    for name, update, floor in (("shut", "gated", 0.5), ("replace", "replace", 0.0)):
        cell = MemoryCell(make_model("gpt2"), M, update, floor)
        spec = MemorySpec(num_mem_tokens=M, segment_size=16, update=update, gate_floor=floor)
        save_checkpoint(tmp_path / name, cell, tokenizer, spec, "test")
        trace = tmp_path / f"{name}.jsonl"
        r = CliRunner().invoke(app, ["ingest", str(book), "-o", str(tmp_path / f"{name}.st"), "--model",
                                     str(tmp_path / name), "--trace", str(trace), "-q"])
        assert r.exit_code == 0, r.stderr
        lines = [json.loads(line) for line in trace.read_text().splitlines()]
        assert [x["segment"] for x in lines] == list(range(len(lines))) and len(lines) > 10
        assert all(x["end_token"] == 16 * (x["segment"] + 1) for x in lines)
        assert ("gate_max" in lines[0]) == (update == "gated")
        changes[name] = [x["change"] for x in lines]
    assert all(c == 0 for c in changes["shut"])  # shut gates: the memory never moved
    assert all(c > 0 for c in changes["replace"])
    bad = CliRunner().invoke(app, ["ingest", str(book), "-o", str(tmp_path / "x.st"), "--model",
                                   str(tmp_path / "shut"), "--trace", str(book)])
    assert bad.exit_code == 2 and "--trace" in bad.stderr
