"""Reading ahead (`ingest(..., lookahead=N)`): a document read alone under a gated rule runs its next segments
side by side from the same memory, and the memory, the trace and an --append come out exactly as when the segments
run one at a time."""

import pytest
import torch

from conftest import TINY_SEGMENT
from rmt_cli.commands.ingest import IngestJob, ingest
from rmt_cli.core.memory import MemoryCell
from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.storage.memfile import load_memory
from rmt_cli.storage.recipe import MemorySpec

M = 3
FLOOR = 0.006  # some segments open a gate past it, most do not
TEXT = ("Mary moved to the bathroom. The old man saw a red boat near the river, and the wind was cold. "
        "Daniel went to the kitchen. Nothing happened for a long while; the clocks ticked on. ") * 30


def gated_checkpoint(folder, tokenizer, make_model, update, floor, engine="transformers", dtype=torch.float32):
    """A tiny model whose gates depend strongly on what was written (as after training), so that with `floor`
    some segments write and most leave the memory as it was."""
    cell = MemoryCell(make_model("llama", seed=2), M, update, floor)
    if cell.gate is not None:
        with torch.no_grad():
            cell.gate.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
            cell.gate.bias.fill_(-8.0)  # most open gate per segment: 0.002 to 0.007
            if cell.route_keep is not None:  # a slot's share then is about the gated rule's gate
                cell.route_keep.fill_(0.0)
    spec = MemorySpec(num_mem_tokens=M, segment_size=TINY_SEGMENT, update=update, gate_floor=floor)
    return load_checkpoint(save_checkpoint(folder, cell, tokenizer, spec, "test"), dtype=dtype, engine=engine)


def ingested(model, path, out, lookahead, append=None):
    trace = []
    [result] = ingest([IngestJob([str(path)], out, append_from=append)], model, lookahead=lookahead,
                      on_trace=trace.append)
    assert result.error is None, result.error
    return load_memory(out), trace


@pytest.mark.parametrize("update", ["gated", "routed", "replace", "gated-associative"])
def test_reading_ahead_gives_the_memory_and_trace_of_one_at_a_time(tmp_path, tokenizer, make_model, update):
    model = gated_checkpoint(tmp_path / "model", tokenizer, make_model, update, floor=FLOOR)
    (tmp_path / "doc.txt").write_text(TEXT)
    one, one_trace = ingested(model, tmp_path / "doc.txt", tmp_path / "one.st", lookahead=1)
    assert one.segments > 40
    for width in (2, 5, 32):
        ahead, ahead_trace = ingested(model, tmp_path / "doc.txt", tmp_path / f"ahead{width}.st", lookahead=width)
        assert torch.equal(ahead.memory, one.memory) and ahead.tail_tokens == one.tail_tokens
        assert [(r.segment, r.end_token, r.change) for r in ahead_trace] == \
            [(r.segment, r.end_token, r.change) for r in one_trace]
        if update != "replace":
            assert all(a.gate_max == pytest.approx(b.gate_max, rel=1e-4, abs=1e-9)
                       for a, b in zip(ahead_trace, one_trace))
    if update in ("gated", "routed"):  # both paths taken: writes and segments that leave the memory as it was
        writes = sum(r.change > 0 for r in one_trace)
        assert 0 < writes < len(one_trace) / 2, writes


@pytest.mark.parametrize("engine,dtype", [("transformers", torch.float32), ("native", torch.bfloat16)])
def test_an_append_after_reading_ahead_is_one_pass(tmp_path, tokenizer, make_model, engine, dtype):
    """Also on the native engine in bfloat16: the embedded model's default path (a write there runs only the
    write memory's rows through the final layer)."""
    model = gated_checkpoint(tmp_path / "model", tokenizer, make_model, "gated", floor=FLOOR, engine=engine,
                             dtype=dtype)
    assert (model.engine, model.cell.dtype) == (engine, dtype)
    cut = len(TEXT) // 3
    (tmp_path / "a.txt").write_text(TEXT[:cut])
    (tmp_path / "b.txt").write_text(TEXT[cut:])
    (tmp_path / "whole.txt").write_text(TEXT)
    whole, _ = ingested(model, tmp_path / "whole.txt", tmp_path / "whole.st", lookahead=32)
    ingested(model, tmp_path / "a.txt", tmp_path / "a.st", lookahead=32)
    appended, _ = ingested(model, tmp_path / "b.txt", tmp_path / "ab.st", lookahead=7, append=tmp_path / "a.st")
    assert torch.equal(appended.memory, whole.memory) and appended.segments == whole.segments
