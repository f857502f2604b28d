"""The seventeenth review (untuned, session 14): each test holds a fault it found, reproduced as it was found."""

import re

import pytest
import yaml

from conftest import TINY_RECIPE, one_error_line, run_cli as run
from rmt_cli.errors import UsageError

TEXT = "Mary went to the kitchen. Daniel moved to the garden. " * 4


@pytest.mark.parametrize("kwargs, says", [
    ({"max_new_tokens": 2.5}, "max_new_tokens 2.5"),
    ({"max_new_tokens": "3"}, "max_new_tokens '3'"),
    ({"max_new_tokens": True}, "max_new_tokens True"),
    ({"temperature": "1"}, "temperature 1"),
    ({"temperature": 1.0, "top_p": None}, "top_p None"),
    ({"temperature": 1.0, "generator": "x"}, "generator: a torch.Generator"),
    ({"state": None}, "state: a MemoryState"),
])
def test_the_api_ask_refuses_arguments_of_the_wrong_type(memfile, checkpoint, kwargs, says):
    """Raw TypeErrors and AttributeErrors from deep inside (max_new_tokens=True was taken as 1)."""
    from rmt_cli import ask, load_checkpoint, load_memory

    state = kwargs.pop("state", load_memory(memfile))
    with pytest.raises(UsageError, match=says):
        ask(load_checkpoint(checkpoint), state, "Where is Mary?", **kwargs)


@pytest.mark.parametrize("call, says", [
    (lambda m, t: __import__("rmt_cli").ingest([t], m), "jobs: IngestJob"),
    (lambda m, t: __import__("rmt_cli").ingest([__import__("rmt_cli").IngestJob(t, t + ".st")], m, batch_size=2.5),
     "batch_size 2.5"),
    (lambda m, t: __import__("rmt_cli").IngestJob(t, None), "output: a path"),
    (lambda m, t: __import__("rmt_cli").IngestJob(5, "x.st"), "paths: a path or a list of paths"),
    (lambda m, t: __import__("rmt_cli").load_memory(None), "load_memory: a path"),
    (lambda m, t: __import__("rmt_cli").load_checkpoint(None), "load_checkpoint: a path"),
    (lambda m, t: __import__("rmt_cli").load_recipe(None), "load_recipe: a path"),
])
def test_the_api_refuses_paths_and_jobs_of_the_wrong_type(tmp_path, checkpoint, call, says):
    from rmt_cli import load_checkpoint

    (tmp_path / "s.txt").write_text(TEXT)
    with pytest.raises(UsageError, match=says):
        call(load_checkpoint(checkpoint), str(tmp_path / "s.txt"))


@pytest.mark.parametrize("override, says", [
    ("model.config.vocab_size=10", "model.config.vocab_size 10: the tokenizer has 300 tokens"),
    ("task.questions=8", "task.questions: 8 questions a story are asked of qa1's stories only"),
    ("model.gguf_file=x.gguf", "gguf_file: names a file inside name_or_path's folder"),
])
def test_recipe_settings_that_cannot_apply_are_refused_before_anything_is_written(tmp_path, override, says):
    """vocab_size below the tokenizer's: an IndexError at the first step, after recipe.yaml was written;
    task.questions for a task without more questions, gguf_file without name_or_path: ignored without a word."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run")}))
    one_error_line(run(["train", tmp_path / "r.yaml", override]), 2, says)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("variable, value, says", [
    ("LOCAL_RANK", "x", "accelerate refuses this environment: invalid literal"),
    ("ACCELERATE_USE_CPU", "maybe", "ACCELERATE_USE_CPU|accelerate refuses this environment"),
    ("ACCELERATE_DYNAMO_BACKEND", "bogus", "accelerate refuses this environment"),
    ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS=4: rmt train takes one"),
])
def test_accelerate_variables_it_refuses_or_that_change_the_run_are_one_line(tmp_path, variable, value, says):
    """A bad LOCAL_RANK or ACCELERATE_* value: accelerate's traceback; ACCELERATE_GRADIENT_ACCUMULATION_STEPS=4
    scaled every loss, unrecorded (the weights differed from a run without it)."""
    import os
    import subprocess
    import sys

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run")}))
    # A process of its own: accelerate reads its environment once per process (its state is shared)
    r = subprocess.run([sys.executable, "-m", "rmt_cli", "train", str(tmp_path / "r.yaml")], capture_output=True,
                       text=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1", variable: value})
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr
    assert re.search(says, r.stderr), r.stderr
    assert not (tmp_path / "run" / "final").exists()


def _run(out, **changes):
    import copy

    from rmt_cli.commands.train import train
    from rmt_cli.storage.recipe import validate_recipe
    from test_train import tiny_recipe

    data = tiny_recipe(out, **{"curriculum": [{"segments": 1, "steps": 3}], "eval": {"samples": 1, "batch_size": 1},
                               "checkpoint": {"every": 1, "keep": 1}, **changes})
    return train(validate_recipe(copy.deepcopy(data)), progress=False)


def test_pruning_never_removes_a_folder_rmt_did_not_write_and_a_squatter_is_refused_before_training(tmp_path):
    """checkpoint.keep pruning deleted a user's folder checkpoints/step-0000002 (a thesis inside); a user's file at
    a future step-0000010 stopped the run only when it got there, after pruning had counted it as a checkpoint
    kept and removed real ones."""
    out = tmp_path / "run"
    _run(out)
    ours = sorted(p.name for p in (out / "checkpoints").iterdir())
    thesis = out / "checkpoints" / "step-0000002" / "thesis.txt"
    thesis.parent.mkdir()
    thesis.write_text("precious")
    with pytest.raises(UsageError, match="step-0000002: is not a checkpoint rmt wrote"):
        _run(out, resume="auto", curriculum=[{"segments": 1, "steps": 5}])
    assert thesis.read_text() == "precious"
    thesis.unlink()
    (out / "checkpoints" / "step-0000010").write_text("my notes")
    with pytest.raises(UsageError, match="step-0000010: is not a checkpoint rmt wrote"):
        _run(out, resume="auto", curriculum=[{"segments": 1, "steps": 12}])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted([*ours, "step-0000002", "step-0000010"])
    # A prune leaves a user's folder of a step's name alone (here one added while the run trains)
    from rmt_cli.commands.train import _prune

    _prune(out / "checkpoints", keep=1)
    assert (out / "checkpoints" / "step-0000010").read_text() == "my notes"


def test_an_output_dir_with_a_newline_stays_one_line(tmp_path):
    """output_dir "f\\nerror: forged" (a file there) printed a forged second error line, as did three other messages
    of train and extend."""
    (tmp_path / "f\nerror: forged").write_text("x")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "f\nerror: forged")}))
    one_error_line(run(["train", tmp_path / "r.yaml"]), 2, "is a file, not a folder", "\\n")


def test_save_memory_refuses_tail_tokens_that_are_not_ints(tmp_path, memfile):
    """save_memory(…, tail_tokens=[1.5, 2.0]) wrote [1, 2] without a word."""
    from dataclasses import replace

    from rmt_cli import load_memory, save_memory

    with pytest.raises(UsageError, match="tail_tokens are token ids"):
        save_memory(tmp_path / "t.st", replace(load_memory(memfile), tail_tokens=[1.5, 2.0]))
    assert not (tmp_path / "t.st").exists()


@pytest.mark.parametrize("args, says", [
    (["ingest", "DOC", "-o", "OUT", "--force"], "--force accepts another model's memory file for --append"),
    (["eval", "--lengths", "200", "--samples", "1", "--babi-split", "valid", "--json"], "--babi-split valid: splits"),
])
def test_options_that_would_do_nothing_are_refused(tmp_path, args, says):
    """`rmt ingest s.txt -o z.st --force` (no --append) and `rmt eval --babi-split valid` (no --babi) ran, the
    option ignored without a word."""
    (tmp_path / "doc.txt").write_text(TEXT)
    args = [str(tmp_path / "doc.txt") if a == "DOC" else str(tmp_path / "z.st") if a == "OUT" else a for a in args]
    one_error_line(run(args), 2, says)
    assert not (tmp_path / "z.st").exists()


def test_weights_given_other_storage_stamp_the_file_as_another_models(tmp_path, checkpoint):
    """`w.data = w.data * 2` bumps no version counter and keeps the parameter: the file had the load's fingerprint."""
    from rmt_cli import IngestJob, ingest, load_checkpoint, load_memory

    (tmp_path / "s.txt").write_text(TEXT)
    model = load_checkpoint(checkpoint)
    [before] = ingest([IngestJob(str(tmp_path / "s.txt"), tmp_path / "a.st")], model)
    weight = model.cell.model.get_input_embeddings().weight
    weight.data = weight.data * 2
    [after] = ingest([IngestJob(str(tmp_path / "s.txt"), tmp_path / "b.st")], model)
    assert load_memory(tmp_path / "a.st").fingerprint != load_memory(tmp_path / "b.st").fingerprint


def test_an_optimizer_state_edited_past_its_checks_is_refused_by_its_digest(tmp_path):
    """One parameter's whole state removed, or a step count lowered, passed every check of the state and resumed a
    run unlike the uninterrupted one; training_state.json now holds the digest of optimizer.safetensors."""
    import torch
    from safetensors.torch import load_file, save_file

    from rmt_cli.commands.train import latest_checkpoint

    out = tmp_path / "run"
    _run(out, checkpoint={"every": 1, "keep": 3}, curriculum=[{"segments": 1, "steps": 3}])
    step = latest_checkpoint(out)
    for edit in (lambda t: [t.pop(k) for k in list(t) if k.startswith("state.5.")],
                 lambda t: t.update({"state.3.step": torch.tensor(1.0)})):
        tensors = load_file(str(step / "optimizer.safetensors"))
        edit(tensors)
        save_file(tensors, str(step / "optimizer.safetensors"))
        with pytest.raises(UsageError, match="does not match the digest training_state.json holds"):
            _run(tmp_path / "resumed", resume=str(step), curriculum=[{"segments": 1, "steps": 4}])


def test_a_stage_whose_facts_would_make_its_documents_far_longer_is_refused(tmp_path):
    """task qa1 with curriculum.0.facts [1000, 1000] in one segment of 32 tokens passed the step bound (it counts
    segments), and the first step grew to 15 GB."""
    from rmt_cli.storage.recipe import validate_recipe
    from test_train import tiny_recipe

    with pytest.raises(UsageError, match="curriculum.0.facts: 1000 facts take about 6,000 tokens"):
        validate_recipe(tiny_recipe(tmp_path, task={"name": "qa1"},
                                    curriculum=[{"segments": 1, "steps": 1, "facts": [1000, 1000]}]))
    validate_recipe(tiny_recipe(tmp_path, task={"name": "qa1"},
                                curriculum=[{"segments": 1, "steps": 1, "facts": [20, 20]}]))  # 120 tokens: fine


def test_a_stage_end_on_a_checkpoint_step_writes_its_checkpoint_once(tmp_path, monkeypatch):
    """A stage ending on a step of checkpoint.every wrote that step's checkpoint twice (before and after its
    evaluation): twice the writing, and on a nearly full disk a "cannot write" for a checkpoint whole on disk."""
    import rmt_cli.commands.train as train_module

    written = []
    real = train_module.save_checkpoint

    def counting(path, *args, **kwargs):
        written.append(str(path).split("/")[-1])
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", counting)
    _run(tmp_path / "run", checkpoint={"every": 1, "keep": 5}, curriculum=[{"segments": 1, "steps": 2}])
    steps = [name for name in written if name.startswith("step-")]
    assert steps == sorted(set(steps)) == ["step-0000001", "step-0000002"], written


def test_the_api_train_refuses_a_console_or_init_from_of_the_wrong_type_before_it_writes(tmp_path):
    """train(r, console="x") trained a stage and wrote it before an AttributeError; init_from=5 a TypeError."""
    import copy

    from rmt_cli.commands.train import train
    from rmt_cli.storage.recipe import load_recipe, validate_recipe
    from test_train import tiny_recipe

    recipe = validate_recipe(copy.deepcopy(tiny_recipe(tmp_path / "run")))
    with pytest.raises(UsageError, match="console: a rich Console"):
        train(recipe, console="x", progress=False)
    with pytest.raises(UsageError, match="init_from: a path"):
        train(recipe, init_from=5, progress=False)
    with pytest.raises(UsageError, match="train: a Recipe"):
        train({"batch_size": 1}, progress=False)
    assert not (tmp_path / "run").exists()
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(TINY_RECIPE))
    with pytest.raises(UsageError, match="not bytes"):
        load_recipe(tmp_path / "r.yaml", b"seed=1")


@pytest.mark.parametrize("task, says", [({"name": "memorize", "max_facts": 50}, "task.min_facts, task.max_facts"),
                                        ({"name": "qa1", "babi_split": "valid"}, "task.babi_split")])
def test_task_settings_for_other_tasks_are_refused(tmp_path, task, says):
    from rmt_cli.storage.recipe import validate_recipe
    from test_train import tiny_recipe

    with pytest.raises(UsageError, match=says):
        validate_recipe(tiny_recipe(tmp_path, task=task))
