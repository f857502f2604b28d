"""memory.binding_supervision: a head on an encoder's memory, trained to name the reasoning story's bindings (the
place east or north of the other, and the one west or south). The stories name the right places, samples keep them
only when every fact is written, the head's gradient reaches the memory's writes, a run with the head resumes
exactly, a run may add the head to another's checkpoint, and recipes that have nothing to bind are refused."""

import json
import random
import re

import pytest
import torch
from test_train import assert_same_tensors, interrupt_after, run, step_losses

from rmt_cli.core.segments import collate, qa_sample
from rmt_cli.data.tasks import reasoning_story
from rmt_cli.errors import UsageError
from rmt_cli.storage.recipe import validate_recipe

FACT = re.compile(r"^The (\w+) is (\w+) of the (\w+)\.$")


def test_reasoning_stories_name_the_place_east_or_north_of_the_other_first():
    for seed in range(200):
        story = reasoning_story(random.Random(seed))
        (a, d, _), (c, e, _) = (FACT.match(f).groups() for f in story.facts)
        # "a is east of b" and "c is west of b": a lies east of c.
        first = a if d in ("east", "north") else c
        assert story.bindings == [first, c if first == a else a], story
        assert {d, e} in ({"east", "west"}, {"north", "south"})


def test_a_sample_keeps_its_bindings_only_when_every_fact_is_written():
    S = 16  # a question of 2 tokens, a tail of 4 and the answer room of 8 fit one segment
    doc = list(range(1, 37))  # two write segments and a tail of 4
    in_writes = [i < 3 or 18 <= i < 21 for i in range(36)]
    in_tail = [i < 3 or i >= 33 for i in range(36)]
    kept = qa_sample(doc, [90, 91], [], S, in_writes, answer_index=1, bindings=[2, 3])
    dropped = qa_sample(doc, [90, 91], [], S, in_tail, answer_index=1, bindings=[2, 3])
    assert kept.bindings == [2, 3] and dropped.bindings is None
    # A tail flushed into the memory (tail + question fill the segment) is written: its facts count.
    flushed = qa_sample(doc, [90] * 6, [], S, in_tail, answer_index=1, bindings=[2, 3])
    assert len(flushed.writes) == 3 and flushed.bindings == [2, 3]
    batch = collate([kept, dropped], 0)
    assert batch.bindings.tolist() == [[2, 3], [-100, -100]]
    assert collate([dropped], 0).bindings is None


def bert_recipe(out, **memory) -> dict:
    return {"seed": 1, "output_dir": str(out),
            "model": {"architecture": "bert", "kind": "encoder",
                      "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 64}},
            "tokenizer": {"kind": "bpe", "vocab_size": 300, "training_texts": 20},
            "memory": {"num_mem_tokens": 2, "segment_size": 64, **memory},
            "task": {"name": "reasoning", "noise": {"kind": "synthetic"}},
            "optim": {"lr": 0.003, "warmup_steps": 1}, "batch_size": 4,
            "curriculum": [{"segments": 1, "steps": 2, "task": "qa4"}, {"segments": 3, "steps": 4}],
            "eval": {"samples": 4, "batch_size": 4}, "checkpoint": {"every": 2, "keep": 5}, "threads": 2}


@pytest.fixture(scope="module")
def bound(tmp_path_factory):
    out = tmp_path_factory.mktemp("bound") / "run"
    return out, run(bert_recipe(out, binding_supervision=1.0))


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_head_trains_the_writes_and_is_logged_where_there_is_something_to_bind(bound, tmp_path):
    out, _ = bound
    rows = [r for r in metrics(out) if "event" not in r]
    # The qa4 stage has no bindings: nothing reported; the reasoning stage reports the head's loss.
    assert [("binding_loss" in r) for r in rows] == [False, False, True, True, True, True]
    assert all(r["binding_loss"] > 0 for r in rows[2:])
    plain = tmp_path / "plain"
    run(bert_recipe(plain))
    # The same seed and data: the qa4 steps are the same, and the head's gradient changes the model after them.
    assert [r["loss"] for r in rows[:2]] == [step_losses(plain)[s] for s in (1, 2)]
    assert_same_tensors(out / "checkpoints" / "step-0000002", plain / "checkpoints" / "step-0000002")
    with pytest.raises(AssertionError, match="differ"):
        assert_same_tensors(out / "final", plain / "final")


def test_a_run_with_the_head_resumes_exactly(bound, tmp_path, monkeypatch):
    out, straight = bound
    resumed_out = tmp_path / "run"
    interrupt_after(monkeypatch, 4)  # inside the reasoning stage: the head has trained and has Adam state
    first = run(bert_recipe(resumed_out, binding_supervision=1.0))
    assert first.interrupted
    monkeypatch.undo()
    resumed = run({**bert_recipe(resumed_out, binding_supervision=1.0), "resume": "auto"})
    assert_same_tensors(out / "final", resumed_out / "final")
    assert step_losses(out) == step_losses(resumed_out)
    assert resumed.evaluations == straight.evaluations


def test_a_run_may_add_the_head_when_it_resumes_anothers_checkpoint(bound, tmp_path, caplog):
    out, _ = bound
    plain = tmp_path / "plain"
    run(bert_recipe(plain))
    branch = tmp_path / "branch"
    result = run({**bert_recipe(branch, binding_supervision=1.0),
                  "resume": str(plain / "checkpoints" / "step-0000002")})
    assert not result.interrupted
    changes = [r for r in metrics(branch) if r.get("event") == "resume"]
    assert changes and changes[0]["changed"] == {"memory.binding_supervision": [0.0, 1.0]}
    assert any("binding_loss" in r for r in metrics(branch))


@pytest.mark.parametrize("changes, words", [
    ({"model": {"architecture": "gpt2"}, "task": {"name": "reasoning"}}, "model.kind: encoder"),
    ({"model": {"architecture": "bert", "kind": "encoder"}, "task": {"name": "qa1"}}, "task.name: reasoning"),
])
def test_recipes_with_nothing_to_bind_are_refused(changes, words):
    data = {"tokenizer": {"kind": "bpe"}, "memory": {"binding_supervision": 1.0},
            "curriculum": [{"segments": 1, "steps": 1}], **changes}
    with pytest.raises(UsageError, match=f"memory.binding_supervision.*{re.escape(words)}"):
        validate_recipe(data, "r.yaml")


def test_a_checkpoint_trained_with_the_head_extends(bound, tmp_path):
    """rmt extend validates the checkpoint's locked settings as a recipe of their own: the head's setting, which
    needs the task reasoning, must not make that recipe invalid."""
    import yaml

    from rmt_cli.commands.extend import extend_recipe

    out, _ = bound
    path = tmp_path / "extend.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "ext"), "task": {"name": "reasoning"},
                                    "memory": {"binding_supervision": 2.0},
                                    "curriculum": [{"segments": 4, "steps": 1}]}))
    recipe = extend_recipe(out / "final", path, [])
    assert recipe.memory.binding_supervision == 2.0 and recipe.memory.num_mem_tokens == 2
    assert extend_recipe(out / "final", path, ["memory.binding_supervision=0"]).memory.binding_supervision == 0
