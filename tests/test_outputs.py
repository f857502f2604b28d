"""Outputs (memory files, --trace, --plot, a run's own files): only a regular file or a new path is written; a
symbolic link is followed (the file it names is written, the link stays); a plan is checked whole first."""

import copy
import json
import os

import pytest

from rmt_cli.atomic import atomic_path, output_target, save_figure
from rmt_cli.errors import UsageError
from rmt_cli.storage.assets import DEFAULT_LM_DIR
from conftest import one_error_line, run_cli as run

TEXT = "Mary went to the garden. Daniel moved to the kitchen. " * 20


@pytest.fixture
def doc(tmp_path):
    (tmp_path / "doc.txt").write_text(TEXT)
    return tmp_path / "doc.txt"


def ingest(*args):
    return run(["ingest", *args, "--model", DEFAULT_LM_DIR, "-q"])


# 1. --trace: the rule of -o


def test_trace_onto_a_fifo_is_refused_before_reading(tmp_path, doc):
    os.mkfifo(tmp_path / "fifo")
    one_error_line(ingest(doc, "-o", tmp_path / "m.st", "--trace", tmp_path / "fifo"), 2, "--trace",
                   "not a regular file")
    assert (tmp_path / "fifo").is_fifo() and not (tmp_path / "m.st").exists()


def test_trace_through_a_symlink_writes_the_file_it_names(tmp_path, doc):
    (tmp_path / "real.jsonl").write_text('{"segment": 0, "end_token": 8, "change": 0.5}\n')  # an older trace
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "real.jsonl")
    r = ingest(doc, "-o", tmp_path / "m.st", "--trace", tmp_path / "link.jsonl")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "link.jsonl").is_symlink()
    lines = (tmp_path / "real.jsonl").read_text().splitlines()
    assert lines and all("change" in json.loads(line) for line in lines)


def test_trace_through_a_symlink_onto_the_output_is_refused(tmp_path, doc):
    (tmp_path / "t.jsonl").symlink_to(tmp_path / "m.st")
    one_error_line(ingest(doc, "-o", tmp_path / "m.st", "--trace", tmp_path / "t.jsonl"), 2, "input or output")


# 2. --plot


@pytest.mark.parametrize("command", ["perplexity", "eval"])
def test_a_plot_onto_a_fifo_is_refused_before_scoring(tmp_path, doc, command):
    pytest.importorskip("matplotlib")
    os.mkfifo(tmp_path / "fifo.png")
    args = ["perplexity", doc] if command == "perplexity" else ["eval", "--model", tmp_path / "no-model-needed"]
    one_error_line(run([*args, "--plot", tmp_path / "fifo.png", "-q"]), 2, "--plot", "not a regular file")
    assert (tmp_path / "fifo.png").is_fifo()


def test_a_plot_link_onto_another_kind_of_file_is_refused(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "victim.txt").write_text("precious")
    (tmp_path / "evil.png").symlink_to(tmp_path / "victim.txt")
    one_error_line(run(["eval", "--plot", tmp_path / "evil.png", "-q"]), 2, "not a PNG")
    assert (tmp_path / "victim.txt").read_text() == "precious"


def test_plots_are_written_whole_through_links_and_never_onto_a_fifo(tmp_path):
    pytest.importorskip("matplotlib")
    from rmt_cli.commands.longeval import plot_results

    row = {"length": 100, **{k: 0.5 for k in ("accuracy", "accuracy_reset", "constant_guess")},
           **{k + "_ci95": (0.4, 0.6) for k in ("accuracy", "accuracy_reset", "constant_guess")}}
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(UsageError, match="not a regular file"):
        plot_results([row], str(tmp_path / "fifo.png"))
    assert (tmp_path / "fifo.png").is_fifo()
    (tmp_path / "real.png").write_text("")  # an empty file (mktemp's), which a plot may fill
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    plot_results([row], str(tmp_path / "link.png"))
    assert (tmp_path / "link.png").is_symlink()
    assert (tmp_path / "real.png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_a_plot_replaces_only_a_plot_rmt_wrote(tmp_path):
    """The tenth review's Y5: --plot replaced any existing PNG (a photo, a figure). A plot rmt wrote (its PNG says
    so) or an empty file is replaced; any other file is kept and refused, before the scoring, by the CLI too."""
    pytest.importorskip("matplotlib")
    from rmt_cli.atomic import is_rmt_plot
    from rmt_cli.commands.longeval import plot_results

    row = {"length": 100, **{k: 0.5 for k in ("accuracy", "accuracy_reset", "constant_guess")},
           **{k + "_ci95": (0.4, 0.6) for k in ("accuracy", "accuracy_reset", "constant_guess")}}
    ours = tmp_path / "ours.png"
    plot_results([row], str(ours))
    assert is_rmt_plot(ours)
    plot_results([row], str(ours))  # replaced again
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + bytes(17) + b"a photo")
    with pytest.raises(UsageError, match="not a plot rmt wrote"):
        plot_results([row], str(photo))
    doc = tmp_path / "d.txt"
    doc.write_text("Daniel went to the kitchen. " * 20)
    one_error_line(run(["perplexity", doc, "--plot", photo]), 2, "not a plot rmt wrote")
    assert photo.read_bytes().endswith(b"a photo") and not is_rmt_plot(photo)


def test_a_plot_that_cannot_be_written_names_its_target_not_the_temporary(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    from rmt_cli.errors import RMTError

    fig = plt.figure()
    try:
        with pytest.raises(RMTError) as e:  # no such folder: the temporary cannot be made
            save_figure(fig, tmp_path / "gone" / "p.png")
    finally:
        plt.close(fig)
    assert str(tmp_path / "gone" / "p.png") in str(e.value) and ".tmp" not in str(e.value)


# 3. memory files through symlinks


def test_append_through_a_symlink_updates_the_file_it_names(tmp_path, doc):
    assert ingest(doc, "-o", tmp_path / "real.st").exit_code == 0
    before = (tmp_path / "real.st").read_bytes()
    (tmp_path / "link.st").symlink_to(tmp_path / "real.st")
    (tmp_path / "more.txt").write_text(TEXT)
    r = ingest("--append", tmp_path / "link.st", tmp_path / "more.txt")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "link.st").is_symlink()
    assert (tmp_path / "real.st").read_bytes() != before


def test_output_target_follows_links_and_refuses_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to_fifo").symlink_to(tmp_path / "fifo")
    (tmp_path / "to_folder").symlink_to(tmp_path)
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    for bad in ("fifo", "to_fifo", "to_folder", "loop_a"):
        with pytest.raises(UsageError):
            output_target(tmp_path / bad)
    with pytest.raises(UsageError):
        output_target("/dev/null")
    (tmp_path / "dangling").symlink_to(tmp_path / "new.st")
    assert output_target(tmp_path / "dangling") == tmp_path / "new.st"


# 4. rmt train's own files


def _tiny_recipe(output_dir):
    return {"tokenizer": {"kind": "bpe", "vocab_size": 300, "training_texts": 20},
            "model": {"architecture": "gpt2", "config": {"n_layer": 1, "n_embd": 32, "n_head": 2}},
            "memory": {"num_mem_tokens": 2, "segment_size": 48}, "output_dir": str(output_dir),
            "curriculum": [{"segments": 1, "steps": 1}], "eval": {"samples": 1}, "threads": 1}


@pytest.mark.parametrize("name, kind", [("recipe.yaml", "link"), ("metrics.jsonl", "fifo"),
                                        ("recipe.yaml", "folder")])
def test_train_refuses_an_output_dir_whose_own_files_are_not_regular(tmp_path, name, kind):
    from rmt_cli.commands.train import train
    from rmt_cli.storage.recipe import validate_recipe

    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "victim.txt").write_text("precious")
    if kind == "link":
        (out / name).symlink_to(tmp_path / "victim.txt")
    elif kind == "fifo":
        os.mkfifo(out / name)
    else:
        (out / name).mkdir()
    with pytest.raises(UsageError, match=name):
        train(validate_recipe(copy.deepcopy(_tiny_recipe(out))), progress=False)
    assert (tmp_path / "victim.txt").read_text() == "precious"


# 5. an empty -o


@pytest.mark.parametrize("extra", [[], ["--append"]])
def test_an_empty_output_is_no_output(tmp_path, doc, extra, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if extra:
        assert ingest(doc, "-o", tmp_path / "m.st").exit_code == 0
        extra = ["--append", tmp_path / "m.st"]
    one_error_line(ingest(*extra, doc, "-o", ""), 2, "no output given")
    assert not (tmp_path / "doc.st").exists()


# 6. long names


def test_the_longest_legal_output_name_is_written(tmp_path, doc):
    name = "m" * 251 + ".st"  # 254 bytes
    r = ingest(doc, "-o", tmp_path / name)
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / name).is_file()
    with atomic_path(tmp_path / ("é" * 125 + ".png")) as tmp:  # 254 bytes, mostly two-byte characters
        assert len(os.path.basename(tmp).encode()) <= 255 and tmp.endswith(".png")
        open(tmp, "w").close()


# 7. a manifest's plan is checked whole


def test_a_manifest_with_a_bad_line_writes_nothing_and_names_the_line(tmp_path, doc):
    manifest = tmp_path / "jobs.tsv"
    manifest.write_text(f"{doc}\t{tmp_path / 'm1.st'}\n{tmp_path / 'nope.txt'}\t{tmp_path / 'm2.st'}\n")
    one_error_line(ingest("--manifest", manifest), 2, "jobs.tsv:2", "nope.txt")
    assert not (tmp_path / "m1.st").exists() and not (tmp_path / "m2.st").exists()
    os.mkfifo(tmp_path / "fifo.st")
    manifest.write_text(f"{doc}\t{tmp_path / 'm1.st'}\n{doc}\t{tmp_path / 'fifo.st'}\n")
    one_error_line(ingest("--manifest", manifest), 2, "jobs.tsv:2", "not a regular file")
    assert not (tmp_path / "m1.st").exists()


# 8. where rmt may not write (third review): found before reading, and what guards a replaced file kept


@pytest.fixture
def no_write(tmp_path, monkeypatch):
    """A folder `ro` (0555) and a file `ro.st` (0444) rmt may not write, also where the tests run as root (who
    may write anywhere): os.access answers for them as for any other user."""
    from pathlib import Path

    ro, read_only = tmp_path / "ro", tmp_path / "ro.st"
    ro.mkdir(mode=0o555)
    read_only.write_bytes(b"a read-only file")
    read_only.chmod(0o444)
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (mode & os.W_OK and Path(path) in (ro, read_only))
                        and real(path, mode, **kw))
    return ro


def test_an_output_rmt_may_not_write_is_refused_before_reading(tmp_path, doc, no_write):
    """A folder without write permission (or on a read-only file system) was found only when the memory file was
    written, after the whole input was read (exit 1), and a --trace there was named by its temporary."""
    from rmt_cli.commands.train import train
    from rmt_cli.storage.recipe import validate_recipe

    one_error_line(ingest(doc, "-o", no_write / "m.st"), 2, "ro/m.st", "cannot write in the folder")
    one_error_line(ingest(doc, "-o", tmp_path / "m.st", "--trace", no_write / "t.jsonl"), 2, "--trace",
                   "ro/t.jsonl", "cannot write in the folder")
    assert not (tmp_path / "m.st").exists() and list(no_write.iterdir()) == []
    one_error_line(ingest(doc, "-o", tmp_path / "ro.st"), 2, "is read-only")
    assert (tmp_path / "ro.st").read_bytes() == b"a read-only file"
    with pytest.raises(UsageError, match="output_dir .*cannot write in the folder"):  # before building the model
        train(validate_recipe(_tiny_recipe(no_write / "run")), progress=False)


def test_a_file_no_one_may_write_is_refused_whoever_runs_rmt(tmp_path, doc):
    """O21 held only for users os.access says no to: root (as in most containers) replaced a 0444 file."""
    memory = tmp_path / "m.st"
    assert ingest(doc, "-o", memory).exit_code == 0
    memory.chmod(0o444)
    before = memory.read_bytes()
    one_error_line(ingest(doc, "-o", memory), 2, "is read-only")
    one_error_line(ingest("--append", memory, doc), 2, "is read-only")
    assert memory.read_bytes() == before


def test_a_replaced_file_keeps_its_permissions(tmp_path, doc):
    """A private memory file (0600) became world-readable (0644) after an --append or a new -o onto it."""
    memory = tmp_path / "m.st"
    assert ingest(doc, "-o", memory).exit_code == 0
    memory.chmod(0o600)
    assert ingest("--append", memory, doc).exit_code == 0
    assert memory.stat().st_mode & 0o777 == 0o600
    memory.chmod(0o640)
    assert ingest(doc, "-o", memory).exit_code == 0
    assert memory.stat().st_mode & 0o777 == 0o640


def test_a_trace_onto_the_append_source_is_refused(tmp_path, doc):
    """`--append a.st ... -o b.st --trace a.st` replaced the memory file being continued with the trace."""
    memory = tmp_path / "a.st"
    assert ingest(doc, "-o", memory).exit_code == 0
    before = memory.read_bytes()
    one_error_line(ingest("--append", memory, doc, "-o", tmp_path / "b.st", "--trace", memory), 2, "--trace",
                   "an input or output")
    assert memory.read_bytes() == before and not (tmp_path / "b.st").exists()


def test_train_refuses_to_write_over_the_recipe_it_reads(tmp_path, monkeypatch):
    """`rmt train recipe.yaml output_dir=.` replaced the recipe given (its comments and all) with the resolved one."""
    import yaml

    monkeypatch.chdir(tmp_path)
    text = "# my notes\n" + yaml.safe_dump(_tiny_recipe("."))
    (tmp_path / "recipe.yaml").write_text(text)
    one_error_line(run(["train", "recipe.yaml", "-q"]), 2, "output_dir .", "write over recipe.yaml")
    assert (tmp_path / "recipe.yaml").read_text() == text and not (tmp_path / "final").exists()


def test_a_run_resumes_from_its_own_recipe_but_not_with_other_settings(tmp_path, monkeypatch):
    """`rmt train runs/x/recipe.yaml resume=auto`, the obvious way to continue a run from its folder alone, was
    refused as "would write over"; it continues the run. With a setting changed, it would replace the run's record of
    what it ran: refused, and the file is untouched."""
    import yaml

    monkeypatch.chdir(tmp_path)
    import shutil

    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({**_tiny_recipe("run"), "curriculum": [{"segments": 1, "steps": 2}],
                                     "checkpoint": {"every": 1}}))
    assert run(["train", str(first), "-q"]).exit_code == 0
    shutil.rmtree(tmp_path / "run" / "final")  # as if killed after step 1's checkpoint
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000002")
    own = tmp_path / "run" / "recipe.yaml"
    written = own.read_text()
    one_error_line(run(["train", str(own), "-q", "seed=99"]), 2, "output_dir run", "with other settings")
    assert own.read_text() == written
    resumed = run(["train", str(own), "-q", "resume=auto"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from" in resumed.output and (tmp_path / "run" / "final").is_dir()


def test_more_threads_than_cpus_are_capped_with_a_warning(tmp_path, monkeypatch):
    """`threads=1000` on 2 cores started 2,000 threads and made the machine unusable: capped at the CPUs this
    process may use, with a warning on stderr."""
    import torch
    import yaml

    from rmt_cli.commands.train import available_cpus

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_tiny_recipe("run")))
    before = torch.get_num_threads()
    try:
        r = run(["train", "r.yaml", "-q", "threads=1000"])
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    assert used == available_cpus() < 1000
    assert f"threads=1000, but this process may use {used} CPUs" in r.stderr


@pytest.mark.parametrize("name, kind", [("final.tmp", "file"), ("stage-0.tmp", "link")])
def test_a_file_where_a_stage_folder_is_written_first_is_refused_before_training(tmp_path, name, kind):
    """A file or link at output_dir/final.tmp (or stage-K.tmp) failed the run when that stage ended, after all
    its training ("File exists", exit 1, no final/)."""
    from rmt_cli.commands.train import train
    from rmt_cli.storage.recipe import validate_recipe

    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "precious.txt").write_text("precious")
    if kind == "file":
        (out / name).write_text("precious")
    else:
        (out / name).symlink_to(tmp_path / "precious.txt")
    with pytest.raises(UsageError, match=f"{name} is .*remove it, or choose another output_dir"):
        train(validate_recipe(_tiny_recipe(out)), progress=False)
    assert (tmp_path / "precious.txt").read_text() == "precious" and not (out / "final").exists()
