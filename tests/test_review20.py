"""The twentieth review (untuned, session 15, two reviewers side by side: eval, perplexity, ask and the
environment; pipes, extend runs, resume and recipes): each test holds a fault it found, reproduced as it was
found."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from conftest import MEMFILE_TEXT, TINY_RECIPE, one_error_line, run_cli as run


def _rmt(args, env=None, **kwargs) -> subprocess.CompletedProcess:
    """`rmt ARGS` in a process of its own (for what the environment and the standard streams decide)."""
    return subprocess.run([sys.executable, "-m", "rmt_cli", *map(str, args)], capture_output="stdout" not in kwargs,
                          env={**os.environ, **(env or {})}, timeout=300, **kwargs)


def test_a_rank_left_in_the_environment_of_a_plain_run_silences_no_error(tmp_path):
    """`RANK=1 rmt ask nope.st …` (a RANK left by SLURM, MPI or a torchrun worker, no WORLD_SIZE): exit 2 with
    nothing on stderr, after a 3-second sleep."""
    r = _rmt(["ask", tmp_path / "nope.st", "Where is Mary?"], env={"RANK": "1", "WORLD_SIZE": ""})
    assert r.returncode == 2 and r.stderr.decode().startswith("error: ") and "no such memory file" in r.stderr.decode()


def test_the_api_perplexity_and_ingest_refuse_a_missing_model_and_a_callback_that_is_none(tmp_path, checkpoint):
    """`perplexity([...], model=None)`: AttributeError; `on_progress=5`: TypeError after the first segment."""
    from rmt_cli import IngestJob, ingest, load_checkpoint, perplexity
    from rmt_cli.errors import UsageError

    (tmp_path / "s.txt").write_text(MEMFILE_TEXT)
    with pytest.raises(UsageError, match="a LoadedModel"):
        perplexity([str(tmp_path / "s.txt")], None)
    model = load_checkpoint(checkpoint)
    with pytest.raises(UsageError, match="on_progress: a function"):
        perplexity([str(tmp_path / "s.txt")], model, on_progress=5)
    with pytest.raises(UsageError, match="on_trace: a function"):
        ingest([IngestJob(str(tmp_path / "s.txt"), tmp_path / "m.st")], model, on_trace="x")
    assert not (tmp_path / "m.st").exists()


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1"])
def test_a_trace_onto_a_pipe_by_a_name_of_stdout_is_refused_as_a_pipe(tmp_path, checkpoint, name):
    """`--trace /dev/stdout | cat`: exit 1, "/proc/PID/fd/.pipe:[…].tmp: No such file or directory"."""
    (tmp_path / "s.txt").write_text(MEMFILE_TEXT)
    r = _rmt(["ingest", tmp_path / "s.txt", "-o", tmp_path / "m.st", "--model", checkpoint, "--trace", name],
             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().strip() == \
        f"error: --trace {name}: is not a regular file (a device, a FIFO or a socket); rmt writes only regular " \
        f"files or new paths"
    assert not (tmp_path / "m.st").exists()


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory, checkpoint):
    """The tiny checkpoint whose numbers break: every score is NaN. (The review's own, a final norm of 3e38, is
    refused at load since the twenty-second review.)"""
    path = tmp_path_factory.mktemp("overflow") / "model"
    shutil.copytree(checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "layer_norm_epsilon": float("nan")}))
    return path


def test_perplexity_of_a_model_whose_scores_break_is_an_error_with_or_without_json(tmp_path, checkpoint,
                                                                                     overflowing_model):
    """Without --json, `nan` was printed as the answer (exit 0), a baseline's NaN row shown and plotted."""
    (tmp_path / "s.txt").write_text(MEMFILE_TEXT * 3)
    for args in ([], ["--json"], ["-q"]):
        one_error_line(run(["perplexity", tmp_path / "s.txt", "--model", overflowing_model, *args]), 1,
                       "non-finite scores")
    one_error_line(run(["perplexity", tmp_path / "s.txt", "--model", checkpoint, "--baseline", overflowing_model,
                        "-q"]), 1, "non-finite scores")


def test_ask_pairs_one_answer_with_each_line_whatever_the_line_holds(memfile, checkpoint, tmp_path):
    """A vertical tab or U+2028 inside a question line: str.splitlines() made two questions of it, and every
    later answer was paired with the wrong line."""
    (tmp_path / "q.txt").write_text("Where is Mary?\nWhere\x0bis Daniel?\nWhere is Mary?\u2028Where is Sandra?\n")
    r = run(["ask", memfile, "--file", tmp_path / "q.txt", "--model", checkpoint, "--json"])
    assert r.exit_code == 0, r.stderr
    asked = [json.loads(line)["question"] for line in r.stdout.splitlines()]
    assert asked == ["Where is Mary?", "Where\x0bis Daniel?", "Where is Mary?\u2028Where is Sandra?"]


def test_a_question_too_long_is_found_before_any_answer_is_printed(memfile, checkpoint, tmp_path):
    """Line 301 too long: 256 answers printed, then exit 2 (the length was checked batch by batch)."""
    (tmp_path / "q.txt").write_text("Where is Mary?\n" * 300 + "Where is " + "Daniel " * 200 + "?\n")
    r = run(["ask", memfile, "--file", tmp_path / "q.txt", "--model", checkpoint])
    one_error_line(r, 2, f"--file {tmp_path / 'q.txt'}:301: question too long")
    assert r.stdout == ""


@pytest.mark.parametrize("args", [["--version"], ["eval", "--help"]])
def test_the_version_or_help_to_a_closed_stdout_is_a_failure(args):
    """`rmt --version >&-`: exit 0 with nothing written anywhere."""
    r = subprocess.run([sys.executable, "-m", "rmt_cli", *args], stderr=subprocess.PIPE, text=True, timeout=120,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 1 and r.stderr == "error: standard output is closed; nowhere to write the results\n", \
        r.stderr


def test_a_utf8_question_under_a_locale_that_is_not_utf8_is_asked(memfile, checkpoint):
    """LANG=C without Python's UTF-8 mode: "Where is Dániel?" was refused as "not UTF-8 text" (argv decoded to
    surrogates); the same question by stdin was answered."""
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-m", "rmt_cli", "ask", str(memfile), "Where is Dániel?".encode(), "--model",
                        str(checkpoint), "--json"], capture_output=True, env={**os.environ, **env}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["question"] == "Where is Dániel?"


def test_a_manifest_from_stdin_whose_line_names_stdin_by_path_is_refused(tmp_path, checkpoint):
    """`printf '/dev/stdin\\tm.st\\n' | rmt ingest --manifest /dev/stdin`: an empty document (a pipe), or the
    manifest's own bytes (a redirected file), ingested with exit 0. `--manifest -` said "no such file"."""
    for manifest in ("/dev/stdin", "-"):
        r = subprocess.run([sys.executable, "-m", "rmt_cli", "ingest", "--manifest", manifest, "--model",
                            str(checkpoint)], input=f"/dev/stdin\t{tmp_path / 'm.st'}\n", capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and "which holds the manifest itself" in r.stderr, r.stderr
    (tmp_path / "jobs.tsv").write_text(f"/dev/stdin\t{tmp_path / 'm.st'}\n")
    with open(tmp_path / "jobs.tsv") as jobs:
        r = subprocess.run([sys.executable, "-m", "rmt_cli", "ingest", "--manifest", "/dev/stdin", "--model",
                            str(checkpoint)], stdin=jobs, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "which holds the manifest itself" in r.stderr, r.stderr
    assert not (tmp_path / "m.st").exists()
    (tmp_path / "a.txt").write_text(MEMFILE_TEXT)
    r = subprocess.run([sys.executable, "-m", "rmt_cli", "ingest", "--manifest", "-", "--model", str(checkpoint),
                        "-q"], input=f"{tmp_path / 'a.txt'}\t{tmp_path / 'a.st'}\n", capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and (tmp_path / "a.st").is_file(), r.stderr


def _tiny_run(tmp_path, name: str, seed: int = 0, steps: int = 4):
    recipe = {**TINY_RECIPE, "seed": seed, "output_dir": str(tmp_path / name),
              "curriculum": [{"segments": 1, "steps": steps}], "checkpoint": {"every": 2, "keep": 2}}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    assert run(["train", tmp_path / f"{name}.yaml", "-q"]).exit_code == 0
    return tmp_path / name


@pytest.mark.parametrize("mix", ["state of another run", "state of a later step", "weights of a later step"])
def test_a_checkpoint_mixing_the_files_of_two_checkpoints_is_not_resumed(tmp_path, mix):
    """{optimizer.safetensors, training_state.json} of another run or step, or {model, memory, rmt.json} of a
    later step: each pair is whole, and the mix resumed without a word, unlike either run."""
    first, other = _tiny_run(tmp_path, "a"), _tiny_run(tmp_path, "b", seed=3)
    mixed = tmp_path / "mixed"
    shutil.copytree(first / "checkpoints" / "step-0000002", mixed)
    source, files = {"state of another run": (other / "checkpoints" / "step-0000002", ("optimizer.safetensors",
                                                                                      "training_state.json")),
                     "state of a later step": (first / "checkpoints" / "step-0000004", ("optimizer.safetensors",
                                                                                       "training_state.json")),
                     "weights of a later step": (first / "checkpoints" / "step-0000004", ("model.safetensors",
                                                                                         "memory.safetensors",
                                                                                         "rmt.json"))}[mix]
    for name in files:
        shutil.copy(source / name, mixed / name)
    r = run(["train", tmp_path / "a.yaml", f"output_dir={tmp_path / 'again'}", f"resume={mixed}"])
    one_error_line(r, 2, "files of two checkpoints were mixed")
    assert not (tmp_path / "again" / "final").exists()


def test_an_extend_run_restarted_from_a_checkpoint_whose_weights_were_swapped_is_refused(tmp_path):
    """The checkpoint `init_from` names got other weights (rmt.json not) between the kill and the restart: the
    run started from them without a word. The same check serves `rmt extend` itself."""
    trained = _tiny_run(tmp_path, "base") / "final"
    other = _tiny_run(tmp_path, "other", seed=5) / "final"
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    (tmp_path / "longer.yaml").write_text(yaml.safe_dump({"task": {"name": "memorize"}, "eval": {"samples": 1},
                                                          "curriculum": [{"segments": 2, "steps": 1}]}))
    assert run(["extend", copy, tmp_path / "longer.yaml", f"output_dir={tmp_path / 'ext'}", "-q"]).exit_code == 0
    shutil.copy(other / "model.safetensors", copy / "model.safetensors")
    shutil.rmtree(tmp_path / "ext" / "final")
    one_error_line(run(["train", tmp_path / "ext" / "recipe.yaml", f"output_dir={tmp_path / 'ext2'}"]), 2,
                   "init_from:", "its weights, memory or tokenizer are not those rmt.json was written for")
    one_error_line(run(["extend", copy, tmp_path / "longer.yaml", f"output_dir={tmp_path / 'ext3'}"]), 2,
                   "not those rmt.json was written for")


def test_the_model_settings_problems_are_said_at_once(tmp_path):
    """`model.config.vocab_size=5 model.config.foo=2 model.config.n_positions=10`: one problem a round, three
    rounds (each after the BPE was trained again)."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run")}))
    r = run(["train", tmp_path / "r.yaml", "model.config.vocab_size=5", "model.config.foo=2",
             "model.config.n_positions=10"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 3 and all(line.startswith("error: ") for line in lines), r.stderr
    assert "model.config.foo" in lines[0] and "vocab_size 5" in lines[1] and "needs 52 positions" in lines[2]


def test_a_matplotlibrc_in_the_current_folder_changes_no_plot(tmp_path, monkeypatch, checkpoint):
    """`text.usetex: True` in ./matplotlibrc made --plot run latex (a 125-line traceback where there is none, after
    the whole evaluation); `figure.subplot.left` above `right` a ValueError traceback."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "matplotlibrc").write_text("text.usetex: True\nfigure.subplot.left: 0.9\nfigure.subplot.right: 0.1\n")
    (tmp_path / "s.txt").write_text(MEMFILE_TEXT * 3)
    r = _rmt(["perplexity", "s.txt", "--model", checkpoint, "--plot", "p.png", "-q"])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_the_results_are_printed_before_a_plot_that_cannot_be_written(tmp_path, checkpoint, monkeypatch):
    """The plot's folder gone during the run: exit 1 and nothing on stdout (the plot was drawn before the results
    were printed); the results of an hour's evaluation were lost."""
    pytest.importorskip("matplotlib")
    import rmt_cli.commands.perplexity as perplexity_module

    (tmp_path / "s.txt").write_text(MEMFILE_TEXT * 3)
    (tmp_path / "plots").mkdir()
    real = perplexity_module.perplexity

    def then_remove_the_folder(*args, **kwargs):
        result = real(*args, **kwargs)
        (tmp_path / "plots").rmdir()
        return result

    monkeypatch.setattr(perplexity_module, "perplexity", then_remove_the_folder)
    r = run(["perplexity", tmp_path / "s.txt", "--model", checkpoint, "--plot", tmp_path / "plots" / "p.png",
             "--json", "-q"])
    one_error_line(r, 1, "cannot write the plot")
    assert json.loads(r.stdout)["memory"]["perplexity"] > 0


@pytest.mark.parametrize("args, says", [
    (["eval", "--babi", "-", "--lengths", "300", "--samples", "1"], "--babi -: name a bAbI-format file"),
    (["ask", "MEM", "--file", "-"], "--file -: questions from standard input come from a - among the questions"),
])
def test_a_dash_where_standard_input_is_not_read_is_said_so(memfile, args, says):
    """`--babi -` and `ask --file -` said "no such file or folder"."""
    one_error_line(run([memfile if a == "MEM" else a for a in args], input="Where is Mary?\n"), 2, says)


def _sharded_base_model(tmp_path, checkpoint, name: str):
    """A pretrained model's folder whose weights are one shard named by a model.safetensors.index.json."""
    folder = tmp_path / name
    folder.mkdir()
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoint / file, folder / file)
    shutil.copy(checkpoint / "model.safetensors", folder / "model-00001-of-00001.safetensors")
    names = list(load_file(folder / "model-00001-of-00001.safetensors"))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}))
    return folder


def _first_shard_is(folder, shard: str) -> None:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("make, says", [
    ("fifo shard", "fifo.safetensors is not a regular file (a device, a FIFO or a socket); a model folder holds"),
    ("fifo tokenizer", "tokenizer.json is not a regular file (a device, a FIFO or a socket)"),
    ("shard outside", "names the shard ../shard.safetensors; a shard is a .safetensors file of the model's own"),
    ("absolute shard", "a shard is a .safetensors file of the model's own folder"),
    ("junk shard", "cannot load model"),
])
def test_a_base_model_folder_is_checked_before_anything_in_it_is_read(tmp_path, checkpoint, make, says):
    """A shard named in the index that is a FIFO (or a FIFO tokenizer.json): the load blocked for good, deaf to
    Ctrl-C and SIGTERM; a shard `../x` or `/abs/x`: read from outside the folder; a shard of junk: a traceback."""
    folder = _sharded_base_model(tmp_path, checkpoint, "base")
    shutil.copy(folder / "model-00001-of-00001.safetensors", tmp_path / "shard.safetensors")
    if make == "fifo shard":
        os.mkfifo(folder / "fifo.safetensors")
        _first_shard_is(folder, "fifo.safetensors")
    elif make == "fifo tokenizer":
        (folder / "tokenizer.json").unlink()
        os.mkfifo(folder / "tokenizer.json")
    elif make == "shard outside":
        _first_shard_is(folder, "../shard.safetensors")
    elif make == "absolute shard":
        _first_shard_is(folder, str(tmp_path / "shard.safetensors"))
    else:
        (folder / "junk.safetensors").write_bytes(os.urandom(5000))
        _first_shard_is(folder, "junk.safetensors")
    recipe = {"model": {"name_or_path": str(folder)}, "tokenizer": {"kind": "model"}, "task": {"name": "memorize"},
              "memory": {"num_mem_tokens": 2, "segment_size": 24}, "curriculum": [{"segments": 1, "steps": 1}],
              "eval": {"samples": 1}, "output_dir": str(tmp_path / "run")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    # In a process of its own, with a timeout: the fault was a hang
    r = subprocess.run([sys.executable, "-m", "rmt_cli", "train", str(tmp_path / "r.yaml"), "-q"], capture_output=True,
                       text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
    assert not (tmp_path / "run" / "final").exists()


def test_no_pickle_is_loaded_while_transformers_loads_weights(tmp_path):
    """The guard behind the index check (a hub model's index is read by transformers itself): torch.load refuses
    inside, and is torch.load again after."""
    import torch

    from rmt_cli.errors import UsageError
    from rmt_cli.storage.modeling import no_pickles

    torch.save({"w": torch.zeros(2)}, tmp_path / "w.bin")
    with pytest.raises(UsageError, match=r"model m: its weights include a pickle \(w.bin\)"):
        with no_pickles("model m"):
            torch.load(tmp_path / "w.bin", weights_only=True)
    assert torch.load(tmp_path / "w.bin", weights_only=True)["w"].shape == (2,)


def test_a_base_model_of_fewer_weights_than_its_config_describes_is_refused(tmp_path, checkpoint):
    """A config.json of 3 layers beside the weights of 1: trained from partly random weights without a word."""
    from test_review18 import _base_model_folder, _base_model_recipe

    folder = _base_model_folder(tmp_path, checkpoint, "base")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    one_error_line(run(["train", _base_model_recipe(tmp_path, folder)]), 2, "its weights lack",
                   "weights its config describes (transformer.h.")


def test_a_base_models_tokenizer_auto_map_is_not_copied_into_its_checkpoints(tmp_path, checkpoint):
    """`auto_map` in a base model's tokenizer_config.json (trust_remote_code off): copied into every checkpoint,
    which ingest and extend then refused."""
    from test_review18 import _base_model_folder, _base_model_recipe

    folder = _base_model_folder(tmp_path, checkpoint, "base")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "auto_map": {"AutoTokenizer": ["t.T", None]}}))
    assert run(["train", _base_model_recipe(tmp_path, folder), "-q"]).exit_code == 0
    assert "auto_map" not in json.loads((tmp_path / "run" / "final" / "tokenizer_config.json").read_text())
    (tmp_path / "s.txt").write_text(MEMFILE_TEXT)
    r = run(["ingest", tmp_path / "s.txt", "-o", tmp_path / "m.st", "--model", tmp_path / "run" / "final", "-q"])
    assert r.exit_code == 0, r.stderr
