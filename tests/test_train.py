"""Checkpoints, exact resume, `rmt extend`, and training on two CPU processes."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import rmt_cli.commands.train as train_module
from rmt_cli.storage.checkpoint import load_checkpoint, read_info, save_checkpoint
from rmt_cli.storage.fingerprint import fingerprint
from rmt_cli.storage.training_state import load_optimizer_state
from rmt_cli.errors import UsageError
from rmt_cli.commands.extend import extend_recipe
from rmt_cli.core.memory import MemoryCell, RecurrentMemoryModel
from rmt_cli.storage.recipe import MemorySpec, dump_recipe, validate_recipe
from rmt_cli.core.segments import DocumentSample, collate
from rmt_cli.commands.train import latest_checkpoint, learning_rate, stage_at, train
from conftest import ctrl_c_as_under_a_terminal

STEPS = (6, 6)
TOTAL = sum(STEPS)


def tiny_recipe(output_dir, **changes) -> dict:
    data = {
        "seed": 0,
        "output_dir": str(output_dir),
        "model": {"architecture": "gpt2", "config": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
        "tokenizer": {"kind": "bpe", "vocab_size": 300, "training_texts": 50},
        "memory": {"num_mem_tokens": 2, "segment_size": 40},  # the question prompt takes ~30 tokens
        "task": {"name": "memorize"},
        "optim": {"lr": 0.003, "warmup_steps": 2},
        "batch_size": 4,
        "curriculum": [{"segments": 1, "steps": STEPS[0]}, {"segments": 2, "steps": STEPS[1]}],
        "eval": {"samples": 4, "batch_size": 4},
        "checkpoint": {"every": 3, "keep": 2},
        "threads": 2,
    }
    data.update(changes)
    return data


def run(data, **kwargs):
    return train(validate_recipe(copy.deepcopy(data)), progress=False, **kwargs)


def tensors(path):
    return {**load_file(str(Path(path) / "model.safetensors")),
            **{"rmt." + k: v for k, v in load_file(str(Path(path) / "memory.safetensors")).items()}}


def assert_same_tensors(a, b):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [name for name in ta if not torch.equal(ta[name], tb[name])]
    assert not different, f"differ: {different}"


def step_losses(output_dir):
    rows = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "event" not in r}  # a replayed step keeps its last value


def logged_steps(output_dir):
    return [json.loads(line)["step"] for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Run A: the whole curriculum without interruption."""
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("straight") / "run"
    result = run(tiny_recipe(out))
    return out, result


# --- checkpoints -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture, num_mem_tokens", [("gpt2", 3), ("llama", 3), ("gpt2", 0)])
def test_checkpoint_round_trip(tmp_path, tokenizer, make_model, architecture, num_mem_tokens):
    cell = MemoryCell(make_model(architecture, seed=5), num_mem_tokens)
    with torch.no_grad():
        cell.memory.add_(1.5)  # not the initial value a fresh cell would get
    memory = MemorySpec(num_mem_tokens=num_mem_tokens, segment_size=16)
    path = save_checkpoint(tmp_path / "ckpt", cell, tokenizer, memory, "test-source", recipe_yaml="seed: 0\n")
    assert not (tmp_path / "ckpt.tmp").exists()
    loaded = load_checkpoint(path)
    original, restored = cell.state_dict(), loaded.cell.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    stored = read_info(path)["fingerprint"]
    assert stored == fingerprint(cell, tokenizer, memory) == loaded.info["fingerprint"]
    assert loaded.memory_settings == memory and loaded.info["source"] == "test-source"
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded.tokenizer.eos_token_id == tokenizer.eos_token_id
    assert loaded.tokenizer.pad_token_id == tokenizer.pad_token_id
    text = " Mary went to the kitchen.\nQuestion: Where is Mary?"
    assert loaded.tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    # Same weights, same outputs.
    batch = collate([DocumentSample([list(range(10, 26))], list(range(30, 40)), [-100] * 10)], 1)
    with torch.no_grad():
        a = RecurrentMemoryModel(cell.eval(), 16)(batch).final_logits
        b = RecurrentMemoryModel(loaded.cell, 16)(batch).final_logits
    assert torch.equal(a, b)


def test_fingerprint_tracks_weights_memory_and_settings(tokenizer, make_model):
    cell = MemoryCell(make_model("gpt2"), 2)
    memory = MemorySpec(num_mem_tokens=2, segment_size=16)
    base = fingerprint(cell, tokenizer, memory)
    assert fingerprint(cell, tokenizer, memory) == base
    assert fingerprint(cell, tokenizer, MemorySpec(num_mem_tokens=2, segment_size=32)) != base
    with torch.no_grad():
        cell.memory[0, 0] += 1e-3
    assert fingerprint(cell, tokenizer, memory) != base
    with torch.no_grad():
        cell.memory[0, 0] -= 1e-3
        next(cell.model.parameters()).view(-1)[0] += 1e-3
    assert fingerprint(cell, tokenizer, memory) != base


def test_optimizer_state_round_trip(tmp_path, tokenizer, make_model):
    cell = MemoryCell(make_model("gpt2"), 2)
    rmt = RecurrentMemoryModel(cell, 16).train()
    optimizer = torch.optim.AdamW(rmt.parameters(), lr=1e-3, betas=(0.9, 0.99))
    batch = collate([DocumentSample([list(range(10, 26))], list(range(30, 40)), [-100] * 8 + [38, 39])], 1)
    for _ in range(2):
        rmt(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = save_checkpoint(tmp_path / "c", cell, tokenizer, MemorySpec(num_mem_tokens=2, segment_size=16), "t",
                           training_state={"step": 2, "stage": 0}, optimizer=optimizer)
    rng_then = torch.get_rng_state()
    torch.rand(5)  # move the RNG on: loading must bring it back
    loaded = load_checkpoint(path)
    rmt2 = RecurrentMemoryModel(loaded.cell, 16).train()
    optimizer2 = torch.optim.AdamW(rmt2.parameters(), lr=5.0)
    load_optimizer_state(path, optimizer2)
    assert torch.equal(torch.get_rng_state(), rng_then)
    assert optimizer2.param_groups[0]["lr"] == 1e-3
    assert tuple(optimizer2.param_groups[0]["betas"]) == (0.9, 0.99)
    s1, s2 = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for pid in s1:
        for key in s1[pid]:
            assert torch.equal(torch.as_tensor(s1[pid][key]), torch.as_tensor(s2[pid][key])), (pid, key)
    # One more identical step on both: identical weights.
    for model, opt in ((rmt, optimizer), (rmt2, optimizer2)):
        model(batch).loss.backward()
        opt.step()
    for (n, p1), (_, p2) in zip(rmt.named_parameters(), rmt2.named_parameters()):
        assert torch.equal(p1, p2), n


def test_broken_checkpoints_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "rmt.json").write_text("{}")
    with pytest.raises(UsageError, match="missing memory.safetensors, config.json, model.safetensors"):
        load_checkpoint(tmp_path / "half")


# --- schedule --------------------------------------------------------------------------------------------------


def test_stage_at_and_learning_rate():
    recipe = validate_recipe(tiny_recipe("x", curriculum=[{"segments": 1, "steps": 6}, {"segments": 2, "steps": 40}]))
    stages, lr = recipe.curriculum, recipe.optim.lr
    assert [stage_at(stages, s) for s in (0, 5, 6, 45)] == [(0, 0), (0, 5), (1, 0), (1, 39)]
    assert stage_at(stages, 46) == (1, 40)
    # Stage 0 (6 steps): warm-up capped at a quarter of the stage (1 step), then cosine decay.
    short = [learning_rate(recipe, stages[0], s) for s in range(6)]
    assert short[0] == pytest.approx(lr)
    assert short == sorted(short, reverse=True) and short[-1] > lr * recipe.optim.min_lr_ratio
    # Stage 1 (40 steps): the full 2-step warm-up, restarted; the decay ends at min_lr_ratio.
    long = [learning_rate(recipe, stages[1], s) for s in range(41)]
    assert long[0] == pytest.approx(lr / 2) and long[1] == pytest.approx(lr)
    assert long[1:] == sorted(long[1:], reverse=True)
    assert long[40] == pytest.approx(lr * recipe.optim.min_lr_ratio)


# --- training, interruption and exact resume -------------------------------------------------------------------


def test_straight_run_writes_checkpoints_metrics_and_evaluation(straight):
    out, result = straight
    assert not result.interrupted and result.final_checkpoint == out / "final"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000009", "step-0000012"]  # keep: 2
    assert (out / "stage-0" / "rmt.json").is_file() and (out / "stage-1" / "rmt.json").is_file()
    assert sorted(step_losses(out)) == list(range(1, TOTAL + 1))
    assert [r["segments"] for r in result.evaluations] == [1, 2]
    assert all(0 <= r["accuracy"] <= 1 and r["samples"] == 4 for r in result.evaluations)
    info = read_info(out / "final")
    assert info["source"] == "scratch:gpt2" and info["memory"]["segment_size"] == 40
    saved = validate_recipe(yaml.safe_load((out / "final" / "recipe.yaml").read_text()))
    assert saved == validate_recipe(tiny_recipe(out))
    losses = step_losses(out)
    assert losses[1] != losses[2]  # it trains


class StopAfter(train_module._StopFlag):
    """A Ctrl-C that arrives while step `steps` runs: train() finishes that step, saves and returns."""

    steps = 0

    def __init__(self, on_first=None):
        super().__init__(on_first)
        self.checks = 0

    @property
    def stop(self):
        self.checks += 1
        return self.checks > type(self).steps

    @stop.setter
    def stop(self, value):
        pass


def interrupt_after(monkeypatch, steps):
    monkeypatch.setattr(StopAfter, "steps", steps)
    monkeypatch.setattr(train_module, "_StopFlag", StopAfter)


def test_interrupted_then_resumed_equals_uninterrupted(straight, tmp_path, monkeypatch):
    a_out, a_result = straight
    out = tmp_path / "run"
    interrupt_after(monkeypatch, 5)
    first = run(tiny_recipe(out))
    assert first.interrupted
    assert first.final_checkpoint == out / "checkpoints" / "step-0000005"
    assert json.loads((first.final_checkpoint / "training_state.json").read_text())["step"] == 5
    assert not (out / "final").exists()
    assert max(step_losses(out)) == 5

    monkeypatch.undo()
    with pytest.raises(UsageError, match="resume=auto"):
        run(tiny_recipe(out))  # a fresh run must not overwrite it
    resumed = run(tiny_recipe(out, resume="auto"))
    assert not resumed.interrupted
    assert_same_tensors(a_out / "final", out / "final")
    assert step_losses(out) == step_losses(a_out)
    assert resumed.evaluations == a_result.evaluations


def test_batches_built_by_data_workers_train_the_same_weights(straight, tmp_path):
    a_out, a_result = straight
    out = tmp_path / "run"
    result = run(tiny_recipe(out, data_workers=2))
    assert_same_tensors(a_out / "final", out / "final")
    assert step_losses(out) == step_losses(a_out)
    assert result.evaluations == a_result.evaluations


def test_ctrl_c_during_the_last_evaluation_saves_and_exits_as_interrupted(straight, tmp_path, monkeypatch):
    """The tenth review's Y7: a Ctrl-C during the last stage's evaluation was ignored (final/ saved, exit 0). Now
    the run saves a checkpoint and reports itself interrupted; resume=auto then writes the same final/ as a run
    that was never stopped."""
    import signal

    a_out, _ = straight
    out = tmp_path / "run"
    real_evaluate = train_module.evaluate
    calls = []

    def evaluate_then_ctrl_c(*args, **kwargs):
        rows = real_evaluate(*args, **kwargs)
        calls.append(1)
        if len(calls) == len(STEPS):  # the last stage's evaluation
            os.kill(os.getpid(), signal.SIGINT)
        return rows

    monkeypatch.setattr(train_module, "evaluate", evaluate_then_ctrl_c)
    first = run(tiny_recipe(out))
    assert first.interrupted and not (out / "final").exists()
    assert latest_checkpoint(out).name == f"step-{TOTAL:07d}"
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    resumed = run(tiny_recipe(out, resume="auto"))
    assert_same_tensors(a_out / "final", out / "final")
    assert [r["segments"] for r in resumed.evaluations] == [r["segments"] for r in first.evaluations] == [1, 2]


def test_killed_between_checkpoints_resumes_from_the_last_one(straight, tmp_path, monkeypatch):
    """A kill after step 7 (after the stage boundary): the last checkpoint is step 6, steps 7.. are redone."""
    a_out, _ = straight
    out = tmp_path / "run"
    interrupt_after(monkeypatch, 7)
    run(tiny_recipe(out))
    shutil.rmtree(out / "checkpoints" / "step-0000007")  # as if killed before it could save
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # and in the middle of a metrics line
    assert latest_checkpoint(out).name == "step-0000006"
    monkeypatch.undo()
    run(tiny_recipe(out, resume="auto"))
    assert_same_tensors(a_out / "final", out / "final")
    assert_same_tensors(a_out / "stage-1", out / "stage-1")
    # Each step logged once, in order: the redone step 7 and the cut line are not repeated.
    assert logged_steps(out) == logged_steps(a_out)


KILLED_IN_A_CHECKPOINT_WRITE = """
import os, signal, sys
import rmt_cli.storage.checkpoint as checkpoint
import rmt_cli.commands.train as train

real_save = train.save_checkpoint

def save_then_die_halfway(path, *args, **kwargs):
    if str(path).endswith("step-0000009"):  # weights written, then SIGKILL before memory.safetensors
        checkpoint.save_file = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    return real_save(path, *args, **kwargs)

train.save_checkpoint = save_then_die_halfway
from rmt_cli.cli import main
sys.argv = ["rmt", "train", sys.argv[1], "-q"]
main()
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_last_whole_one(straight, tmp_path):
    """A real SIGKILL halfway through writing step 9's checkpoint: no half checkpoint is taken for a whole one,
    and resume=auto continues from step 6 to the same weights as the uninterrupted run."""
    a_out, _ = straight
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(out)))
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_A_CHECKPOINT_WRITE, str(recipe)], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (out / "checkpoints" / "step-0000009.tmp" / "model.safetensors").is_file()  # killed mid-write
    assert not (out / "checkpoints" / "step-0000009").exists()
    assert latest_checkpoint(out).name == "step-0000006"
    run(tiny_recipe(out, resume="auto"))
    assert_same_tensors(a_out / "final", out / "final")
    assert logged_steps(out) == logged_steps(a_out)


# Settings edited in training_state.json (the fourteenth review): tracebacks at the first step (betas, eps,
# amsgrad, capturable), or accepted without a word (maximize: the run would climb the loss; a step of `true`).
EDITED_SETTINGS = {"betas text": ("betas", "xy"), "eps text": ("eps", "nan"), "amsgrad on": ("amsgrad", True),
                   "capturable on": ("capturable", True), "maximize on": ("maximize", True)}


@pytest.mark.parametrize("damage", ["state not json", "state without step", "optimizer cut", "optimizer of another model",
                                    "step true", *EDITED_SETTINGS])
def test_a_damaged_training_state_is_one_line_on_resume(straight, tmp_path, damage):
    a_out, _ = straight
    out = tmp_path / "run"
    shutil.copytree(a_out, out)
    last = latest_checkpoint(out)
    state = json.loads((last / "training_state.json").read_text())
    if damage in EDITED_SETTINGS:
        key, value = EDITED_SETTINGS[damage]
        state["optimizer"]["param_groups"][0][key] = value
        (last / "training_state.json").write_text(json.dumps(state))
    elif damage == "step true":
        (last / "training_state.json").write_text(json.dumps({**state, "step": True}))
    elif damage == "state not json":
        (last / "training_state.json").write_text("{not json")
    elif damage == "state without step":
        (last / "training_state.json").write_text('{"optimizer": {}}')
    elif damage == "optimizer cut":
        data = (last / "optimizer.safetensors").read_bytes()
        (last / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
    else:
        from safetensors.torch import save_file

        save_file({"state.0.exp_avg": torch.zeros(3), "torch_rng": torch.get_rng_state()},
                  str(last / "optimizer.safetensors"))
    with pytest.raises(UsageError, match="resume: ") as caught:
        run(tiny_recipe(out, resume="auto", curriculum=[{"segments": 1, "steps": 20}]))
    assert "\n" not in str(caught.value), str(caught.value)
    assert damage != "optimizer of another model" or "does not fit" in str(caught.value), str(caught.value)


def test_second_run_into_the_same_output_dir_is_refused(straight):
    out, _ = straight
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(UsageError, match="already holds checkpoints"):
        run(tiny_recipe(out))
    assert (out / "metrics.jsonl").read_text() == before


def test_resume_from_a_folder_that_is_not_a_training_checkpoint(straight, tmp_path):
    out, _ = straight
    with pytest.raises(UsageError, match="not a training checkpoint"):
        run(tiny_recipe(tmp_path / "r", resume=str(out / "final")))


@pytest.mark.parametrize("changes, words", [
    ({"memory": {"num_mem_tokens": 3, "segment_size": 40}}, ["memory.num_mem_tokens", "2", "3"]),
    ({"model": {"architecture": "gpt2", "config": {"n_layer": 2, "n_embd": 32, "n_head": 2}}},
     ["model.config.n_layer"]),
    ({"task": {"name": "qa1"}}, ["task.name", "memorize", "qa1"]),
    ({"curriculum": [{"segments": 1, "steps": 1}]}, ["curriculum", "has 1 step in all"]),
])
def test_resume_refuses_another_model_or_a_curriculum_that_ended(straight, tmp_path, changes, words):
    """The fourth review's Y1/Y2: a resumed run with other memory or model settings had trained the checkpoint's
    model and saved it described as the recipe's (nothing could load it); a curriculum shorter than the checkpoint's
    step ended in a traceback. Both are one error before anything in output_dir is rewritten."""
    a_out, _ = straight
    out = tmp_path / "run"
    shutil.copytree(a_out, out)
    shutil.rmtree(out / "final")
    before = (out / "recipe.yaml").read_text()
    with pytest.raises(UsageError) as caught:
        run(tiny_recipe(out, resume="auto", **changes))
    message = str(caught.value)
    assert message.startswith("resume: ") and all(w in message for w in words), message
    assert (out / "recipe.yaml").read_text() == before and not (out / "final").exists()


def test_a_resumed_run_may_change_how_the_memory_is_trained(straight, tmp_path):
    a_out, _ = straight
    out = tmp_path / "run"
    shutil.copytree(a_out, out)
    shutil.rmtree(out / "final")
    run(tiny_recipe(out, resume="auto", memory={"num_mem_tokens": 2, "segment_size": 40, "bptt_depth": 1}))
    assert (out / "final").is_dir()


def test_resume_from_another_folder_keeps_the_users_files(straight, tmp_path):
    """Y3: resume=PATH writes into output_dir as a new run does, so a user's recipe.yaml there is refused."""
    a_out, _ = straight
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("# my notes\nseed: 1\n")
    with pytest.raises(UsageError, match="rmt did not write it"):
        run(tiny_recipe(folder, resume=str(latest_checkpoint(a_out))))
    assert (folder / "recipe.yaml").read_text() == "# my notes\nseed: 1\n"


def test_a_run_of_an_earlier_rmt_resumes_from_its_own_recipe(straight, tmp_path):
    """A resolved recipe written before a key was added (a stage's task) is still the run's own: `rmt train
    runs/x/recipe.yaml resume=auto` continues it (the review of session 10: it was refused as another recipe)."""
    a_out, _ = straight
    out = tmp_path / "run"
    shutil.copytree(a_out, out)
    shutil.rmtree(out / "final")
    data = {**yaml.safe_load((out / "recipe.yaml").read_text()), "output_dir": str(out)}
    for stage in data["curriculum"]:
        del stage["task"]  # as the rmt before stage tasks wrote it
    (out / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert train_module._resolved_recipe(out / "recipe.yaml") is not None
    recipe = validate_recipe({**data, "resume": "auto"})
    train_module.check_run_inputs(recipe, [out / "recipe.yaml"])
    train(recipe, progress=False)
    assert_same_tensors(a_out / "final", out / "final")


def test_resume_no_and_a_missing_folder(tmp_path):
    assert validate_recipe(yaml.safe_load(f"resume: no\n" + yaml.safe_dump(tiny_recipe(tmp_path / "r")))).resume == "no"
    with pytest.raises(UsageError, match="no such folder"):
        run(tiny_recipe(tmp_path / "r", resume=str(tmp_path / "nosuch")))


# --- rmt extend ------------------------------------------------------------------------------------------------


def extend_file(tmp_path, **changes):
    data = {"output_dir": str(tmp_path / "extended"), "task": {"name": "memorize"}, "batch_size": 4,
            "optim": {"lr": 0.001, "warmup_steps": 1}, "curriculum": [{"segments": 3, "steps": 2}],
            "eval": {"samples": 4, "segments": [3, 4]}, "threads": 2}
    data.update(changes)
    path = tmp_path / "extend.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, field", [
    ({"memory": {"segment_size": 32}}, "memory.segment_size"),
    ({"memory": {"num_mem_tokens": 8}}, "memory.num_mem_tokens"),
    ({"tokenizer": {"kind": "bpe", "vocab_size": 512}}, "tokenizer"),
    ({"model": {"architecture": "llama"}}, "model"),
])
def test_extend_refuses_a_recipe_that_contradicts_the_checkpoint(straight, tmp_path, changes, field):
    out, _ = straight
    with pytest.raises(UsageError) as info:
        extend_recipe(out / "final", extend_file(tmp_path, **changes), [])
    (line,) = str(info.value).splitlines()
    assert f": {field}: the checkpoint has" in line


def test_extend_refuses_an_override_that_contradicts_the_checkpoint(straight, tmp_path):
    out, _ = straight
    with pytest.raises(UsageError, match="memory.segment_size: the checkpoint has 40") as caught:
        extend_recipe(out / "final", extend_file(tmp_path), ["memory.segment_size=64", "seed=x", "novalue"])
    # The override is named (the file has no such key), and the other bad overrides are reported with it.
    lines = str(caught.value).splitlines()
    assert len(lines) == 3 and "(override memory.segment_size=64)" in lines[1] and "remove the override" in lines[1]
    assert "'novalue' is not key=value" in lines[0] and "seed" in lines[2], lines
    # A refused value that is also invalid is one line: the refusal, not a second line on its validity.
    with pytest.raises(UsageError) as caught:
        extend_recipe(out / "final", extend_file(tmp_path), ["memory.segment_size=-5"])
    assert len(str(caught.value).splitlines()) == 1, str(caught.value)


@pytest.mark.parametrize("edit, said", [
    (("segment_size: 40", "segment_size: 24"), "memory.segment_size 24, rmt.json 40"),
    (("n_layer: 1", "n_layer: 3"), "model.config.n_layer 3, config.json 1"),
    (("architecture: gpt2", "architecture: llama"), "model.architecture 'llama', config.json model_type 'gpt2'"),
])
def test_a_checkpoint_whose_recipe_yaml_was_edited_is_neither_extended_nor_resumed(straight, tmp_path, edit, said):
    """The fourteenth review: extend took the model and memory settings from an edited recipe.yaml (a model of
    32-token segments went on with 24, and was saved so), and resume compared the run with a false record."""
    out, _ = straight
    edited = tmp_path / "edited"
    shutil.copytree(latest_checkpoint(out), edited)  # a training checkpoint: one to extend or to resume
    text = (edited / "recipe.yaml").read_text()
    assert edit[0] in text
    (edited / "recipe.yaml").write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(UsageError) as caught:
        extend_recipe(edited, extend_file(tmp_path), [])
    (line,) = str(caught.value).splitlines()
    assert said in line and "the folder's files disagree" in line, line
    with pytest.raises(UsageError, match=f"{said}.*the folder's files disagree"):
        run(tiny_recipe(tmp_path / "resumed", resume=str(edited)))
    assert not (tmp_path / "extended").exists() and not (tmp_path / "resumed" / "final").exists()
    # The same folder with its recipe.yaml as written extends.
    assert extend_recipe(out / "final", extend_file(tmp_path), []).memory.segment_size == 40


def test_extend_refuses_to_write_into_the_checkpoints_run(straight, tmp_path):
    out, _ = straight
    with pytest.raises(UsageError, match="output_dir"):
        extend_recipe(out / "final", extend_file(tmp_path, output_dir=str(out)), [])


def test_extend_trains_from_the_checkpoint_on_longer_inputs(straight, tmp_path):
    out, _ = straight
    # Restating the checkpoint's own settings is fine, and so are memory settings that are not locked.
    recipe = extend_recipe(out / "final", extend_file(tmp_path, memory={"segment_size": 40, "bptt_depth": 2}), [])
    assert recipe.memory.segment_size == 40 and recipe.memory.num_mem_tokens == 2 and recipe.memory.bptt_depth == 2
    assert recipe.model == validate_recipe(tiny_recipe("x")).model
    assert recipe.curriculum[0].segments == 3
    result = train(recipe, init_from=out / "final", progress=False)
    assert [r["segments"] for r in result.evaluations] == [3, 4]
    assert all(r["samples"] == 4 and 0 <= r["accuracy"] <= 1 for r in result.evaluations)
    new = Path(recipe.output_dir)
    assert read_info(new / "final")["source"] == "scratch:gpt2"
    assert (new / "final" / "tokenizer.json").read_text() == (out / "final" / "tokenizer.json").read_text()
    assert sorted(step_losses(new)) == [1, 2]
    # It started from the trained weights: its first loss is the trained model's, not a fresh model's.
    fresh = run(tiny_recipe(tmp_path / "fresh", curriculum=[{"segments": 3, "steps": 1}], eval={"samples": 1},
                            optim={"lr": 0.001, "warmup_steps": 1}))
    assert step_losses(new)[1] < step_losses(fresh.output_dir)[1]


def test_extend_recipe_with_an_empty_memory_section(straight, tmp_path):
    out, _ = straight
    path = extend_file(tmp_path)
    path.write_text(path.read_text() + "memory:\n  # bptt_depth: 2\n")  # a section with everything commented out
    assert yaml.safe_load(path.read_text())["memory"] is None  # the case under test: the section reads as None
    recipe = extend_recipe(out / "final", path, [])  # the checkpoint's memory settings fill the empty section
    assert recipe.memory.segment_size == 40 and recipe.memory.num_mem_tokens == 2


# --- two CPU processes -----------------------------------------------------------------------------------------


def torchrun(tmp_path, recipe, extra_env):
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_recipe(validate_recipe(recipe)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra_env}
    env = {k: v for k, v in env.items() if v is not None}
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun_bin), "--standalone", "--nproc_per_node", "2", "-m", "rmt_cli.cli", "train", str(path),
           "-q", "--json", "threads=1"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def two_process_recipe(out, steps=(3, 3)):
    return tiny_recipe(out, curriculum=[{"segments": 1, "steps": steps[0]}, {"segments": 2, "steps": steps[1]}])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2`: gloo, each process takes half of every batch."""
    tmp_path = tmp_path_factory.mktemp("torchrun")
    out = tmp_path / "run"
    return out, torchrun(tmp_path, two_process_recipe(out), {"ACCELERATE_USE_CPU": "1"})


def test_torchrun_two_cpu_processes(two_processes):
    out, proc = two_processes
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert read_info(out / "final")["memory"]["segment_size"] == 40
    load_checkpoint(out / "final")
    # One process wrote the metrics: one line per step, not one per process.
    assert sorted(step_losses(out)) == list(range(1, 7))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert sum("event" not in json.loads(line) for line in lines) == 6
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert summaries and all(s["checkpoint"] == str(out / "final") for s in summaries)
    assert any([r["segments"] for r in s["evaluation"]] == [1, 2] for s in summaries)


def test_torchrun_prints_one_json_summary(two_processes):
    _, proc = two_processes
    assert proc.returncode == 0
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1


def test_plain_torchrun_on_a_cpu_machine(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the bug is specific to machines without CUDA")
    out = tmp_path / "run"
    proc = torchrun(tmp_path, two_process_recipe(out, steps=(1, 1)), {"ACCELERATE_USE_CPU": None})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert sum("event" not in json.loads(line) for line in lines) == 2


@pytest.mark.parametrize("data_workers, stop_signal", [(0, "SIGINT"), (1, "SIGINT"), (1, "SIGTERM")])
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, data_workers, stop_signal):
    """A real SIGINT to `rmt train`'s process group, as a terminal's Ctrl-C sends it (data workers included):
    the step finishes, a checkpoint is saved, exit code 130; resume continues."""
    import signal
    import time

    out = tmp_path / "run"
    data = tiny_recipe(out, curriculum=[{"segments": 1, "steps": 100000}], checkpoint={"every": 100000, "keep": 2},
                       data_workers=data_workers)
    recipe = tmp_path / "long.yaml"
    recipe.write_text(yaml.safe_dump(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rmt_cli.cli", "train", str(recipe), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=ctrl_c_as_under_a_terminal)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    os.killpg(proc.pid, getattr(signal, stop_signal))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "resume=auto" in stderr
    saved = latest_checkpoint(out)
    state = json.loads((saved / "training_state.json").read_text())
    assert state["step"] == max(step_losses(out)) >= 3  # nothing after the saved step was lost or invented
    resumed = run({**data, "resume": "auto", "curriculum": [{"segments": 1, "steps": state["step"] + 2}]})
    assert max(step_losses(out)) == state["step"] + 2 and not resumed.interrupted


def test_ctrl_c_during_extend_saves_a_checkpoint_and_resumes(straight, tmp_path):
    """`rmt extend` runs the same loop: a SIGINT to its process group saves a checkpoint and exits 130, and
    `rmt extend ... resume=auto` continues that run."""
    import signal
    import time

    out, _ = straight
    long_stage = [{"segments": 3, "steps": 100000}]
    path = extend_file(tmp_path, curriculum=long_stage, checkpoint={"every": 100000, "keep": 2})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "rmt_cli.cli", "extend", str(out / "final"), str(path), "-q"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=ctrl_c_as_under_a_terminal)
    new = tmp_path / "extended"
    deadline = time.time() + 120
    while time.time() < deadline and (not (new / "metrics.jsonl").exists() or
                                      len((new / "metrics.jsonl").read_text().splitlines()) < 2):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    step = json.loads((latest_checkpoint(new) / "training_state.json").read_text())["step"]
    assert step == max(step_losses(new)) >= 2
    more = [f"curriculum=[{{segments: 3, steps: {step + 1}}}]", "resume=auto", "eval.samples=1"]
    proc = subprocess.run(command[:-1] + more + ["-q"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert max(step_losses(new)) == step + 1 and (new / "final").is_dir()


def test_export_to_bfloat16_keeps_the_model(tmp_path, tokenizer, make_model):
    from rmt_cli.storage.export import export_checkpoint

    cell = MemoryCell(make_model("gpt2", seed=4), num_mem_tokens=2)
    src = save_checkpoint(tmp_path / "src", cell, tokenizer, MemorySpec(num_mem_tokens=2, segment_size=24), "t")
    dst = export_checkpoint(src, tmp_path / "ship")
    assert load_file(str(dst / "model.safetensors"))["transformer.h.0.attn.c_attn.weight"].dtype == torch.bfloat16
    assert not (dst / "optimizer.safetensors").exists()
    a, b = load_checkpoint(src), load_checkpoint(dst)
    assert read_info(dst)["fingerprint"] == b.info["fingerprint"] != a.info["fingerprint"]
    for name, tensor in a.cell.state_dict().items():  # bf16 rounding only
        assert torch.allclose(tensor, b.cell.state_dict()[name], atol=0.02, rtol=0.01), name


def test_a_pretrained_model_from_a_local_folder_trains_with_its_own_tokenizer(tmp_path, tokenizer, make_model):
    """name_or_path: a folder written by save_pretrained (the same code path as a hub id, without a download)."""
    pretrained = tmp_path / "pretrained"
    make_model("gpt2", seed=5, n_positions=64).save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    data = tiny_recipe(tmp_path / "run", model={"name_or_path": str(pretrained)}, tokenizer={"kind": "model"},
                       curriculum=[{"segments": 1, "steps": 2}], eval={"samples": 2, "segments": [1]})
    result = run(data)
    trained = load_checkpoint(result.final_checkpoint)
    assert read_info(result.final_checkpoint)["source"] == str(pretrained)
    assert trained.tokenizer.get_vocab() == tokenizer.get_vocab()
    original = load_file(str(pretrained / "model.safetensors"))
    after = trained.cell.model.state_dict()
    assert any(not torch.equal(original[k], after[k]) for k in original if k in after)  # it did train
    too_small = tiny_recipe(tmp_path / "run2", model={"name_or_path": str(pretrained)}, tokenizer={"kind": "model"},
                            memory={"num_mem_tokens": 2, "segment_size": 62})
    with pytest.raises(UsageError, match="memory.segment_size"):
        run(too_small)


def test_a_bfloat16_pretrained_checkpoint_is_loaded_in_float32_for_training(tmp_path, tokenizer, make_model):
    from rmt_cli.storage.modeling import build_model
    from rmt_cli.storage.recipe import ModelSpec

    pretrained = tmp_path / "bf16"
    make_model("gpt2", seed=5, n_positions=64).to(torch.bfloat16).save_pretrained(pretrained)
    model = build_model(ModelSpec(name_or_path=str(pretrained)), MemorySpec(num_mem_tokens=2, segment_size=40),
                        tokenizer)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
