"""The sixteenth review (untuned, session 14: training, resume and the API): each test holds a fault it found."""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rmt_cli.commands.train import latest_checkpoint, train
from rmt_cli.errors import UsageError
from rmt_cli.storage.recipe import validate_recipe
from test_train import tiny_recipe


def run(out, **changes):
    data = tiny_recipe(out, curriculum=[{"segments": 1, "steps": 3}], eval={"samples": 1, "batch_size": 1},
                       checkpoint={"every": 1, "keep": 5}, **changes)
    return train(validate_recipe(copy.deepcopy(data)), progress=False)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run of 3 steps whose checkpoints of steps 1 to 3 are kept; resumed copies start from step-0000001."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    run(out)
    return out


def resumable(stopped, tmp_path, name="run"):
    """A copy of the run as a kill after step 1 would leave it."""
    out = tmp_path / name
    shutil.copytree(stopped, out)
    for later in ("step-0000002", "step-0000003"):
        shutil.rmtree(out / "checkpoints" / later)
    shutil.rmtree(out / "final")
    return out


def test_a_resume_that_changes_the_optimizer_settings_trains_with_them(stopped, tmp_path):
    """resume=auto optim.weight_decay=0.5 was said and recorded, but the checkpoint's weight decay trained on: the
    weights came out bit for bit those of a resume without the change."""
    same, decayed = resumable(stopped, tmp_path, "same"), resumable(stopped, tmp_path, "decayed")
    run(same, resume="auto")
    run(decayed, resume="auto", optim={"lr": 0.003, "warmup_steps": 2, "weight_decay": 0.5})
    a, b = load_file(str(same / "final" / "model.safetensors")), load_file(str(decayed / "final" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # and a resume as the run was is still the uninterrupted run
    c = load_file(str(stopped / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_a_step_folder_whose_state_says_another_step_is_refused(stopped, tmp_path):
    """A step-0000001 whose training_state.json said step 0 resumed at step 0 on weights trained one step, and
    its metrics were dropped; a step folder named in other digits (step-٠٠٠٠٠٠٩) was taken as the latest."""
    out = resumable(stopped, tmp_path)
    state = out / "checkpoints" / "step-0000001" / "training_state.json"
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({**saved, "step": 0}))
    with pytest.raises(UsageError, match="training_state.json says step 0, the folder's name step 1"):
        run(out, resume="auto")
    state.write_text(json.dumps(saved))
    shutil.copytree(out / "checkpoints" / "step-0000001", out / "checkpoints" / "step-\u0660\u0660\u0669")
    assert latest_checkpoint(out) == out / "checkpoints" / "step-0000001"


def test_a_checkpoints_entry_that_is_no_folder_is_bad_input(stopped, tmp_path):
    """output_dir/checkpoints a dangling link or a file: "starting a new run", then a bare OSError line, exit 1."""
    for n, make in enumerate((lambda p: p.symlink_to("/nonexistent"), lambda p: p.write_text("x"))):
        out = resumable(stopped, tmp_path, f"run{n}")
        shutil.rmtree(out / "checkpoints")
        make(out / "checkpoints")
        with pytest.raises(UsageError, match="holds checkpoints, which is not a folder"):
            run(out, resume="auto")


@pytest.mark.parametrize("changes, says", [
    ({"curriculum": [{"segments": 1_000_000, "steps": 1}]}, "curriculum.0: a step of 1,000,000 segments"),
    ({"eval": {"segments": [1_000_000], "batch_size": 1}}, "eval.segments: documents of 1,000,000 segments"),
    ({"curriculum": [{"segments": 1, "steps": 1, "facts": [3, 3]}]}, "curriculum.0.facts: task memorize's stories"),
    ({"curriculum": [{"segments": 1, "steps": 1, "mix_shorter": 1.0}]}, "curriculum.0.mix_shorter: a stage of 1 "),
])
def test_recipe_settings_that_are_too_big_together_or_ignored_are_refused(tmp_path, changes, says):
    """curriculum.2.segments=1000000 passed (each limit alone), and its first step grew to 18 GB; facts for a
    memorize stage and mix_shorter on a 1-segment stage were ignored without a word."""
    with pytest.raises(UsageError, match=says):
        validate_recipe(tiny_recipe(tmp_path / "run", **changes))
    # the same settings where they fit and mean something
    validate_recipe(tiny_recipe(tmp_path / "run", task={"name": "qa1"},
                                curriculum=[{"segments": 2, "steps": 1, "facts": [3, 3], "mix_shorter": 0.5}]))


def test_a_model_changed_after_loading_stamps_its_memory_files_as_changed(tmp_path, checkpoint):
    """ingest() stamped every file with the fingerprint computed at load: a model trained or edited in Python
    wrote files that the unchanged model then read without --force."""
    from conftest import run_cli
    from rmt_cli import IngestJob, ingest, load_checkpoint, load_memory

    (tmp_path / "s.txt").write_text("Mary went to the kitchen. Daniel moved to the garden. " * 4)
    model = load_checkpoint(checkpoint)
    [same] = ingest([IngestJob([str(tmp_path / "s.txt")], tmp_path / "same.st")], model)
    with torch.no_grad():
        model.cell.memory.mul_(2)
    [changed] = ingest([IngestJob([str(tmp_path / "s.txt")], tmp_path / "changed.st")], model)
    assert same.error is None and changed.error is None
    assert load_memory(tmp_path / "same.st").fingerprint != load_memory(tmp_path / "changed.st").fingerprint
    r = run_cli(["ask", tmp_path / "changed.st", "Where is Mary?", "--model", checkpoint])
    assert r.exit_code == 2 and "made by another model or setting" in r.stderr
    assert run_cli(["ask", tmp_path / "same.st", "Where is Mary?", "--model", checkpoint]).exit_code == 0


@pytest.mark.parametrize("call, says", [
    (lambda m, s, p: __import__("rmt_cli").load_checkpoint(p, engine="bogus"), "engine 'bogus'"),
    (lambda m, s, p: __import__("rmt_cli").load_checkpoint(p, device="bogus"), "device 'bogus'"),
    (lambda m, s, p: __import__("rmt_cli").load_checkpoint(p, device="meta"), "device meta"),
    (lambda m, s, p: __import__("rmt_cli").load_checkpoint(p, dtype=torch.int8), "dtype torch.int8"),
    (lambda m, s, p: __import__("rmt_cli").load_checkpoint(p, dtype="float32"), "dtype 'float32'"),
    (lambda m, s, p: __import__("rmt_cli").perplexity([s], m, max_tokens=2.5), "max_tokens 2.5"),
    (lambda m, s, p: __import__("rmt_cli").perplexity([s], _with_segment(m, 100_000)), "needs 100004 positions"),
    (lambda m, s, p: __import__("rmt_cli").ingest([], "not a model"), "a LoadedModel"),
])
def test_the_api_refuses_wrong_values_in_one_usage_error(tmp_path, checkpoint, call, says):
    """Values of the documented types that no model runs with ended in raw errors from torch (RuntimeError,
    AssertionError, TypeError, IndexError) or a ValueError."""
    from rmt_cli import load_checkpoint

    (tmp_path / "s.txt").write_text("Mary went to the kitchen. " * 20)
    with pytest.raises(UsageError, match=says):
        call(load_checkpoint(checkpoint), str(tmp_path / "s.txt"), checkpoint)


def _with_segment(model, size):
    changed = copy.copy(model)
    changed.memory_settings = model.memory_settings.model_copy(update={"segment_size": size})
    return changed


def test_the_api_takes_one_override_as_a_string_and_jobs_as_any_iterable(tmp_path, checkpoint):
    """load_recipe(RECIPE, "seed=1") read the string character by character ("override 's' is not key=value");
    ingest() of a generator of jobs failed with KeyError: 0."""
    from conftest import TINY_RECIPE
    from rmt_cli import IngestJob, ingest, load_checkpoint, load_recipe
    import yaml

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(TINY_RECIPE))
    assert load_recipe(tmp_path / "r.yaml", "seed=7").seed == 7
    with pytest.raises(UsageError, match="overrides: key=value texts, not int 1"):
        load_recipe(tmp_path / "r.yaml", [1])
    (tmp_path / "s.txt").write_text("Mary went to the kitchen. " * 20)
    jobs = (job for job in [IngestJob([str(tmp_path / "s.txt")], tmp_path / "s.st")])
    assert [r.error for r in ingest(jobs, load_checkpoint(checkpoint))] == [None]


def test_a_run_resumed_at_its_end_reports_no_evaluation_row_it_did_not_write(stopped, tmp_path):
    """A run resumed at its last step reported the last "eval" line of metrics.jsonl as its own evaluation,
    unchecked: an accuracy of "abc", a terminal escape for its length."""
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    shutil.rmtree(out / "final")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [line for line in lines if line.get("event") == "eval"]
    assert rows and all(row["step"] == 3 for row in rows)
    crafted = {"step": 3, "stage": 0, "event": "eval", "segments": "\x1b[2Jx", "accuracy": "abc"}
    (out / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in [*lines, crafted]))
    result = run(out, resume="auto")
    assert result.evaluations == rows  # the rows the run wrote, not the crafted one
    assert "abc" not in (out / "metrics.jsonl").read_text()


def test_the_api_train_without_progress_writes_nothing_on_stderr(tmp_path, capfd):
    """train(recipe, progress=False) still printed transformers' "Loading weights" and "Writing model shards" bars
    (and, with the two-token check of a new model, its attention-mask advice)."""
    capfd.readouterr()
    run(tmp_path / "run")
    assert capfd.readouterr().err == ""


def test_a_run_resumed_from_elsewhere_into_a_folder_of_another_run_says_so(stopped, tmp_path):
    """resume= another run's checkpoint, into a folder holding a run of its own: refused (rightly), but said as
    "holds checkpoints, which holds what is not a checkpoint of a run"."""
    out = resumable(stopped, tmp_path)
    with pytest.raises(UsageError, match="holds checkpoints, which holds the checkpoints of another run"):
        run(out, resume=str(stopped / "checkpoints" / "step-0000002"))


def test_save_checkpoint_writes_nothing_load_checkpoint_would_refuse(tmp_path, checkpoint):
    """The API's save_checkpoint wrote a NaN memory, settings that did not fit the cell, an `extra` that replaced
    rmt.json's format_version, and put such a folder in place of a good checkpoint."""
    from rmt_cli import load_checkpoint, save_checkpoint

    model = load_checkpoint(checkpoint)
    good = save_checkpoint(tmp_path / "good", model.cell, model.tokenizer, model.memory_settings, "test")
    before = sorted((p.name, p.read_bytes()) for p in good.iterdir())
    for kwargs, says in [({"memory": model.memory_settings.model_copy(update={"num_mem_tokens": 9})}, "num_mem_tokens 9, the cell has 2"),
                         ({"memory": model.memory_settings.model_copy(update={"segment_size": 1000})}, "positions"),
                         ({"extra": {"format_version": 99}}, "rmt.json's own format_version"),
                         ({"recipe_yaml": "!!python/object:os.system [x]"}, "not valid YAML")]:
        args = {"memory": model.memory_settings, **kwargs}
        with pytest.raises(UsageError, match=f"not written: .*{says}"):
            save_checkpoint(good, model.cell, model.tokenizer, args.pop("memory"), "test", **args)
    with torch.no_grad():
        model.cell.memory.fill_(float("nan"))
    with pytest.raises(UsageError, match="not written: the cell's memory holds values that are not finite"):
        save_checkpoint(good, model.cell, model.tokenizer, model.memory_settings, "test")
    assert sorted((p.name, p.read_bytes()) for p in good.iterdir()) == before
