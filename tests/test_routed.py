"""The routed update rule: the gated rule with its slots competing in one softmax with "keep", and the balance loss
that spreads the writes of segments holding a fact over the slots."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_train import run as run_training
from test_train import tiny_recipe

from conftest import TINY_SEGMENT, one_error_line, run_cli
from rmt_cli.core.memory import (IGNORE_INDEX, ROUTE_KEEP_SHARE, MemoryCell, RecurrentMemoryModel,
                                 route_balance_loss)
from rmt_cli.core.rules import UPDATE_RULES, is_routed
from rmt_cli.core.segments import DocumentSample, collate
from rmt_cli.errors import UsageError
from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.storage.recipe import MemorySpec

M = 3
FLOOR = 0.1


def routed_cell(model, floor=FLOOR, trained=True):
    cell = MemoryCell(model, M, "routed", floor)
    if trained:  # scores that depend on what was written, as after training (fresh ones are equal for every slot)
        with torch.no_grad():
            cell.gate.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
            cell.route_keep.fill_(0.0)
    return cell.eval()


def segments(count=6, batch=2):
    return [torch.randint(2, 300, (batch, 9), generator=torch.Generator().manual_seed(i)) for i in range(count)]


def test_only_the_routed_rule_routes(make_model):
    assert [r for r in UPDATE_RULES if is_routed(r)] == ["routed"]
    model = make_model("gpt2")
    keeps = {rule: MemoryCell(model, M, rule).route_keep for rule in UPDATE_RULES}
    assert [rule for rule, keep in keeps.items() if keep is not None] == ["routed"]


def test_a_fresh_router_keeps_most_and_spreads_the_rest_evenly(make_model, architecture):
    cell = routed_cell(make_model(architecture), trained=False)
    written = torch.randn(4, M, cell.hidden_size)
    gates = cell.gate_probabilities(written)
    assert torch.allclose(gates.sum(-1), torch.full((4,), 1 - ROUTE_KEEP_SHARE), atol=1e-6)
    assert torch.allclose(gates, gates[:, :1].expand_as(gates))
    # The gated rule's fresh gates are independent sigmoids: they do not sum to the same share.
    gated = MemoryCell(cell.model, M, "gated", FLOOR)
    assert gated.route_keep is None and not torch.allclose(gated.gate_probabilities(written).sum(-1), gates.sum(-1))


def test_slots_compete_and_a_shut_slot_keeps_its_memory_bit_for_bit(make_model, architecture):
    """Every segment writes at most one slot's worth in all; a slot under the floor is exactly its old memory, one
    over it moves towards what was written."""
    cell = routed_cell(make_model(architecture))
    seen_shut = seen_open = 0
    with torch.no_grad():
        memory = cell.initial_memory(2)
        for segment in segments():
            new, _, gate = cell.forward_segment(memory, segment)
            assert gate.shape == (2, M) and (gate >= 0).all() and (gate.sum(-1) <= 1 + 1e-6).all()
            shut = gate < FLOOR
            assert torch.equal(new[shut], memory[shut])
            assert not torch.equal(new[~shut], memory[~shut]) or not (~shut).any()
            seen_shut, seen_open = seen_shut + int(shut.sum()), seen_open + int((~shut).sum())
            memory = new
    assert seen_shut and seen_open


def routes_of(scores):
    """Routed gates [rows, slots] from scores [rows, slots + 1] (the last is "keep")."""
    return torch.softmax(scores, -1)[:, :-1]


def test_the_balance_loss_counts_how_unevenly_the_slots_are_used():
    even = routes_of(torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]]))
    one = routes_of(torch.tensor([[5.0, 0.0, 0.0, 0.0]] * 3))
    assert route_balance_loss(even).item() == pytest.approx(1.0, abs=1e-5)
    assert route_balance_loss(one).item() > 2.5  # m = 3 when every write goes wholly to one slot
    # How much is written does not count, only where.
    assert route_balance_loss(routes_of(torch.tensor([[5.0, 0.0, 0.0, 9.0]] * 3))).item() == \
        pytest.approx(route_balance_loss(one).item(), rel=1e-5)


def test_the_balance_loss_moves_writes_towards_an_unused_slot():
    """All writes in slot 0: the loss's gradient lowers slot 0's score and raises the unused slots' scores (an
    independent gate per slot would give an unused slot no reason to open)."""
    scores = torch.tensor([[4.0, -4.0, -4.0, 0.0]] * 5, requires_grad=True)
    route_balance_loss(routes_of(scores)).backward()
    assert (scores.grad[:, 0] > 0).all() and (scores.grad[:, 1:3] < 0).all()
    assert scores.grad[:, 3].abs().max() < 1e-6  # "keep" is not the balance loss's business


def test_gate_supervision_trains_keep_on_noise_and_write_on_facts(make_model):
    """The routed rule's gate supervision: on a segment without a fact, "keep" is to win; on one with a fact,
    writing (to any slot) is. Its gradient on the keep score says so for each alone."""
    def keep_gradient(has_fact):
        cell = routed_cell(make_model("llama"), trained=False)  # not saturated: both ways are open
        cell.train()
        rmt = RecurrentMemoryModel(cell, segment_size=9, gate_supervision=1.0)
        document = DocumentSample([list(range(10, 19))], list(range(30, 35)), [IGNORE_INDEX] * 5,
                                  write_has_fact=[has_fact])
        batch = collate([document], 0)
        out = rmt(batch)
        assert out.gate_loss is not None
        out.gate_loss.backward()
        return float(cell.route_keep.grad)

    assert keep_gradient(has_fact=False) < 0 < keep_gradient(has_fact=True)


def test_a_routed_checkpoint_needs_its_keep_score(make_model, tokenizer, tmp_path):
    cell = routed_cell(make_model("gpt2"))
    spec = MemorySpec(num_mem_tokens=M, segment_size=TINY_SEGMENT, update="routed", gate_floor=FLOOR)
    folder = save_checkpoint(tmp_path / "routed", cell, tokenizer, spec, "test")
    loaded = load_checkpoint(folder)
    assert loaded.memory_settings.update == "routed" and torch.equal(loaded.cell.route_keep, cell.route_keep)
    stored = load_file(str(folder / "memory.safetensors"))
    del stored["route_keep"]
    save_file(stored, str(folder / "memory.safetensors"))
    with pytest.raises(UsageError, match="memory.safetensors lacks route_keep"):
        load_checkpoint(folder)


def test_route_balance_needs_the_routed_rule(tmp_path):
    recipe = tiny_recipe(tmp_path / "run", memory={"num_mem_tokens": 2, "segment_size": 40, "update": "gated",
                                                     "route_balance": 1.0})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    one_error_line(run_cli(["train", path]), 2, "memory:", "route_balance", "update: routed")


def test_write_supervision_needs_a_task_with_facts(tmp_path):
    """Gate supervision and the balance loss learn from where a task put its facts: with task lm (no facts) they
    would silently do nothing, so the recipe is refused."""
    from rmt_cli.storage.recipe import validate_recipe

    for memory in ({"update": "routed", "route_balance": 1.0}, {"update": "gated", "gate_supervision": 1.0}):
        recipe = tiny_recipe(tmp_path / "run", memory={"num_mem_tokens": 2, "segment_size": 40, **memory},
                             task={"name": "lm", "lm_paths": [str(tmp_path)]})
        with pytest.raises(UsageError, match="task lm has no facts"):
            validate_recipe(recipe)


def test_train_ingest_and_ask_with_the_routed_rule(tmp_path):
    """A tiny routed run with gate supervision and the balance loss trains, logs both terms, and its checkpoint
    ingests and answers through the CLI."""
    recipe = tiny_recipe(tmp_path / "run", memory={"num_mem_tokens": 2, "segment_size": 40, "update": "routed",
                                                     "gate_supervision": 1.0, "route_balance": 1.0})
    final = run_training(recipe).final_checkpoint
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "balance_loss" in r]
    assert steps and all(r["balance_loss"] >= 1 - 1e-4 and "gate_loss" in r for r in steps)
    text = tmp_path / "doc.txt"
    text.write_text("Mary went to the garden. " * 40)
    r = run_cli(["ingest", text, "-o", tmp_path / "m.st", "--model", final])
    assert r.exit_code == 0, r.stderr
    r = run_cli(["ask", tmp_path / "m.st", "Where is Mary?", "--model", final])
    assert r.exit_code == 0 and r.stdout.strip(), r.stderr
