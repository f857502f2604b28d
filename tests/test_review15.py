"""The fifteenth review (untuned, session 14): each test holds a fault it found, reproduced as it was found."""

import os

import pytest
import torch

from conftest import one_error_line, run_cli as run

TEXT = "Mary went to the kitchen. Daniel moved to the garden. " * 4


def test_two_manifest_outputs_that_are_one_file_are_refused_before_anything_is_written(tmp_path, checkpoint):
    """Two outputs hard-linked to one file: job 1 wrote, then job 2 stopped on job 1's own lock, "another rmt is
    writing it", exit 1 (a link of another name was already refused up front)."""
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.txt").write_text(TEXT + " Sandra")
    assert run(["ingest", tmp_path / "a.txt", "-o", tmp_path / "h1.st", "--model", checkpoint]).exit_code == 0
    os.link(tmp_path / "h1.st", tmp_path / "h2.st")
    before = (tmp_path / "h1.st").read_bytes()
    (tmp_path / "jobs.tsv").write_text(f"{tmp_path / 'a.txt'}\t{tmp_path / 'h1.st'}\n"
                                       f"{tmp_path / 'b.txt'}\t{tmp_path / 'h2.st'}\n")
    r = run(["ingest", "--manifest", tmp_path / "jobs.tsv", "--model", checkpoint])
    one_error_line(r, 2, "h2.st", "written by job 1 and job 2 (two names of one file)")
    assert (tmp_path / "h1.st").read_bytes() == before and os.path.samefile(tmp_path / "h1.st", tmp_path / "h2.st")


@pytest.mark.parametrize("row", ['{"text": 5}', '{"text": ["a", "b"]}'])
def test_a_dataset_field_that_is_not_text_is_one_line(tmp_path, monkeypatch, row):
    """A local dataset whose text field held a number or a list: a TypeError traceback from the sentence splitter
    (noise) or an AttributeError (lm)."""
    from rmt_cli.commands.samples import load_dataset_texts
    from rmt_cli.errors import UsageError

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "d.jsonl").write_text('{"text": "Mary went home."}\n' + row + "\n")
    with pytest.raises(UsageError, match=r"row 1: field text holds (int 5|list \[.a., .b.\]), not text"):
        load_dataset_texts(str(tmp_path / "ds"), "train", "text")


@pytest.mark.parametrize("change, says", [
    (lambda s: {"memory": s.memory.double()}, "tensor memory is float64"),
    (lambda s: {"segment_size": 0}, "segment_size '0'"),
    (lambda s: {"carry_text": "x" * 5000}, "carry_text has 5000 characters"),
    (lambda s: {"tail_tokens": [-1]}, "tail_tokens"),
])
def test_save_memory_writes_nothing_load_memory_would_refuse(tmp_path, memfile, change, says):
    """The API's save_memory wrote files (float64 memory, segment_size 0, a 5,000-character carry) that
    load_memory and every command then refused; only a NaN memory was refused at save."""
    from dataclasses import replace

    from rmt_cli import load_memory, save_memory
    from rmt_cli.errors import UsageError

    state = load_memory(memfile)
    with pytest.raises(UsageError, match=f"not written.*{says}"):
        save_memory(tmp_path / "x.st", replace(state, **change(state)))
    assert not (tmp_path / "x.st").exists()
    save_memory(tmp_path / "y.st", state)  # as read, it writes
    assert load_memory(tmp_path / "y.st").tokens == state.tokens


def test_an_append_keeps_a_count_of_omitted_sources_that_reads_back(tmp_path, memfile, checkpoint):
    """An --append to a file whose sources_omitted was at its cap (10^18) with sources near the metadata budget
    wrote 10^18 + 2, and every later command refused the file the append had replaced."""
    import json
    from dataclasses import replace

    from rmt_cli import load_memory, save_memory
    from rmt_cli.storage.memfile import MAX_COUNT

    state = load_memory(memfile)
    sources = [{"name": f"f{i:05d}.txt", "size": 1, "sha256": "a" * 64} for i in range(576)]
    save_memory(tmp_path / "full.st", replace(state, sources=sources, sources_omitted=MAX_COUNT))
    (tmp_path / "more.txt").write_text(TEXT)
    r = run(["ingest", "--append", tmp_path / "full.st", tmp_path / "more.txt", "--model", checkpoint])
    assert r.exit_code == 0, r.stderr
    assert load_memory(tmp_path / "full.st").sources_omitted == MAX_COUNT
    assert json.loads(run(["ask", tmp_path / "full.st", "Where is Mary?", "--model", checkpoint, "--json"])
                      .stdout)["question"] == "Where is Mary?"


def test_a_question_that_is_not_utf8_is_one_line_before_the_model_loads(memfile, checkpoint):
    """A question on the command line holding a byte that is not UTF-8 (Python holds it as a lone surrogate):
    a TypeError traceback from the tokenizer, on the CLI and in the API's ask()."""
    import subprocess
    import sys

    from rmt_cli import ask, load_checkpoint, load_memory
    from rmt_cli.errors import UsageError

    r = subprocess.run([sys.executable, "-m", "rmt_cli", "ask", str(memfile), "Where is Mary?", b"Where is \xe9?",
                        "--model", str(checkpoint), "--json"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and r.stdout == "", r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("error: the question ") and "is not UTF-8 text (byte b'\\xe9'" in line, line
    with pytest.raises(UsageError, match="not UTF-8"):
        ask(load_checkpoint(checkpoint), load_memory(memfile), "Where is \udce9?")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_under_metrics_jsonl_names_the_file():
    """Disk full while a run appended to metrics.jsonl: "error: No space left on device", naming nothing."""
    from pathlib import Path

    from rmt_cli.commands.train import _append_metrics
    from rmt_cli.errors import RMTError

    with pytest.raises(RMTError, match="^/dev/full: cannot write the metrics: No space left on device$"):
        _append_metrics(Path("/dev/full"), {"step": 1, "loss": 2.0})


def test_a_trace_that_cannot_be_written_says_which_memory_files_were(tmp_path, checkpoint):
    """--trace on a full disk: exit 1 and "cannot write the trace", yet the memory file had been replaced (the
    trace was buffered and failed only at its close) and nothing said so. The trace is now flushed line by line,
    so the failure stops the document it came with, and the line names the memory files written before it."""
    import resource
    import signal
    import subprocess
    import sys

    def small_files():  # files of at most 4 kB: the trace of the long document outgrows it, a memory file not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    (tmp_path / "short.txt").write_text(TEXT)
    (tmp_path / "long.txt").write_text(TEXT * 40)
    (tmp_path / "jobs.tsv").write_text("short.txt\tshort.st\nlong.txt\tlong.st\n")
    r = subprocess.run([sys.executable, "-m", "rmt_cli", "ingest", "--manifest", "jobs.tsv", "--model", str(checkpoint),
                        "--batch-size", "1", "--trace", "t.jsonl", "-q"], cwd=tmp_path, preexec_fn=small_files,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1, r.stderr
    (line,) = r.stderr.splitlines()
    assert line == (f"error: --trace {tmp_path / 't.jsonl'}: cannot write the trace: File too large; written before "
                    f"it failed: short.st"), line
    assert (tmp_path / "short.st").exists() and not (tmp_path / "long.st").exists()
    assert not (tmp_path / "t.jsonl").exists()


@pytest.mark.parametrize("args", [["--task", "memorize"], ["--task", "reasoning"], ["--task", "qa4"], ["--babi", "b"]])
def test_eval_refuses_facts_where_the_stories_have_a_size_of_their_own(tmp_path, checkpoint, args):
    """`rmt eval --task memorize --facts 9,9` (or beside --babi) ran, the setting ignored without a word."""
    (tmp_path / "b").write_text("1 Mary went to the kitchen.\n2 Where is Mary?\tkitchen\t1\n")
    args = [str(tmp_path / "b") if a == "b" else a for a in args]
    r = run(["eval", "--model", checkpoint, "--lengths", "200", "--samples", "1", "--facts", "9,9", *args])
    one_error_line(r, 2, "--facts 9,9", "have a size of their own")


LLAMA = "model.config={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32}"


@pytest.mark.parametrize("overrides, says", [
    (["model.config.activation_function=relu6x"], "'relu6x' is not a name this transformers knows"),
    (["model.config.attn_implementation=flash_attention_2"], "FlashAttention2"),
    (["model.architecture=llama", LLAMA, "model.config.hidden_act=bogus"], "'bogus' is not a name"),
    (["model.architecture=llama", LLAMA, "model.config.rope_scaling={rope_type: bogus}"], "'bogus' is not a name"),
    (["model.architecture=llama", LLAMA, "model.config.rope_scaling={rope_type: linear}"], "factor"),
    (["model.architecture=llama", LLAMA, "model.config.num_key_value_heads=3"], "the model cannot run"),
])
def test_model_settings_transformers_refuses_late_are_one_line_before_anything_is_written(tmp_path, overrides, says):
    """Values of model.config that transformers refuses only when it builds or runs the model: tracebacks
    (KeyError, ImportError; a RuntimeError at the first step, after recipe.yaml was written)."""
    import yaml

    from conftest import TINY_RECIPE

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run")}))
    r = run(["train", tmp_path / "r.yaml", *overrides])
    one_error_line(r, 2, "model.config: ", says)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("target, stream", [("/dev/stdout", "stdout"), ("res.json", "stdout"), ("res.json", "stderr"),
                                            ("in.txt", "stdin")])
def test_an_output_that_is_a_standard_stream_is_refused(tmp_path, checkpoint, target, stream):
    """`rmt ingest s.txt -o /dev/stdout --json > res.json` renamed the memory file over res.json, and the JSON went
    to the unlinked file; `rmt ingest - -o in.txt < in.txt` replaced the text it read."""
    import subprocess
    import sys

    (tmp_path / "in.txt").write_text(TEXT)
    (tmp_path / "res.json").write_text("")
    source = "-" if stream == "stdin" else "in.txt"
    redirected = tmp_path / ("in.txt" if stream == "stdin" else "res.json")
    with open(redirected, "r" if stream == "stdin" else "w") as f:
        streams = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: f}
        r = subprocess.run([sys.executable, "-m", "rmt_cli", "ingest", source, "-o", target, "--model",
                            str(checkpoint), "--json"], cwd=tmp_path, text=True, timeout=120,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"}, **streams)
    assert r.returncode == 2
    said = (tmp_path / "res.json").read_text() if stream == "stderr" else r.stderr
    assert "is this command's standard" in said, said
    assert (tmp_path / "in.txt").read_text() == TEXT


def test_an_unexpected_error_with_data_workers_ends_the_run(tmp_path):
    """An error the run does not expect (here a forward that raises) with data_workers > 0: the traceback, then
    the process waited for its workers for good, deaf to Ctrl-C (they ignore stop signals). It now ends, exit 1."""
    import subprocess
    import sys

    import yaml

    from conftest import TINY_RECIPE

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run"),
                                                     "data_workers": 2}))
    script = ("import sys\n"
              "import rmt_cli.core.memory as memory\n"
              "def fails(self, *args, **kwargs):\n"
              "    raise RuntimeError('a fault nobody expected')\n"
              "memory.RecurrentMemoryModel.forward = fails\n"
              f"sys.argv = ['rmt', 'train', {str(tmp_path / 'r.yaml')!r}, '-q']\n"
              "from rmt_cli.cli import main\n"
              "main()\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and "a fault nobody expected" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("change, says", [
    (lambda t: t.update({"state.0.exp_avg": torch.zeros(3)}), "state.0.exp_avg has shape [3], the parameter [4, 2]"),
    (lambda t: t["state.0.exp_avg"].fill_(float("nan")), "state.0.exp_avg holds values that are not finite"),
    (lambda t: t["state.1.exp_avg_sq"].fill_(-1.0), "state.1.exp_avg_sq holds negative values"),
    (lambda t: t.update({"state.0.exp_avg": t["state.0.exp_avg"].int()}), "is not a tensor of the parameter's dtype"),
    (lambda t: t.update({"state.0.exp_avg": t["state.0.exp_avg"].half()}), "is not a tensor of the parameter's dtype"),
    (lambda t: t.update({"state.99.exp_avg": torch.zeros(2)}), "state.99: the optimizer has 2 parameters"),
    (lambda t: t.update({"state.0.step": torch.tensor(-1.5)}), "state.0.step is not a step count from 1 to 1"),
    (lambda t: t.update({"state.0.step": torch.tensor(0.0)}), "state.0.step is not a step count"),
    (lambda t: t.update({"state.0.step": torch.tensor(1e30)}), "state.0.step is not a step count"),
    (lambda t: t.update({"state.0.step": torch.zeros(5)}), "state.0.step is not a step count"),
    (lambda t: t.pop("state.1.exp_avg_sq"), "state.1 has no exp_avg_sq"),
    (lambda t: t.update({"state.0.foo": torch.tensor(1.0)}), "state.0.foo: not a part of AdamW's state"),
])
def test_a_damaged_optimizer_state_is_refused_on_resume(tmp_path, change, says):
    """optimizer.safetensors was taken as it came: a moment of the wrong shape was a traceback at the first step,
    NaN moments a "training diverged … lower optim.lr", an int tensor or a state of no parameter kept silently."""
    import json

    from safetensors.torch import save_file

    from rmt_cli.errors import UsageError
    from rmt_cli.storage.training_state import load_optimizer_state, optimizer_tensors

    def adam():
        layer = torch.nn.Linear(2, 4)
        return layer, torch.optim.AdamW(layer.parameters(), lr=0.01)

    layer, optimizer = adam()
    layer(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    tensors, info = optimizer_tensors(optimizer)
    tensors["torch_rng"] = torch.get_rng_state()
    (tmp_path / "training_state.json").write_text(json.dumps({"step": 1, "optimizer": info}))
    save_file(tensors, str(tmp_path / "optimizer.safetensors"))
    load_optimizer_state(tmp_path, adam()[1])  # as saved, it loads
    change(tensors)
    save_file(tensors, str(tmp_path / "optimizer.safetensors"))
    with pytest.raises(UsageError, match="the optimizer state does not fit this model") as caught:
        load_optimizer_state(tmp_path, adam()[1])
    assert says in str(caught.value)


def test_data_workers_beyond_the_cpus_are_capped_with_one_warning(tmp_path, monkeypatch):
    """data_workers=32 on 2 CPUs started 32 workers and printed torch's raw UserWarning twice."""
    import yaml

    import rmt_cli.commands.train as train_module
    from conftest import TINY_RECIPE

    monkeypatch.setattr(train_module, "available_cpus", lambda: 2)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run"),
                                                     "data_workers": 32}))
    r = run(["train", tmp_path / "r.yaml", "-q"])
    assert r.exit_code == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warn" in line.lower()]
    assert warnings == ["warning: data_workers=32, but this process may use 2 CPUs: using 2"], r.stderr


def test_eval_quiet_with_nothing_else_to_show_is_refused_before_scoring(checkpoint):
    """`rmt eval -q` without --json scored every length and printed nothing at all (-q hides the table)."""
    r = run(["eval", "--model", checkpoint, "--lengths", "200", "--samples", "1", "-q"])
    one_error_line(r, 2, "-q hides the table", "--json")
    r = run(["eval", "--model", checkpoint, "--lengths", "200", "--samples", "1", "-q", "--json"])
    assert r.exit_code == 0 and r.stdout.startswith("{"), r.stderr


def test_a_model_without_memory_tokens_ingests_nothing(tmp_path, checkpoint):
    """A model of memory.num_mem_tokens 0 (the no-memory baseline) wrote a memory file every command refused."""
    from rmt_cli import load_checkpoint
    from rmt_cli.commands.ingest import IngestJob, ingest
    from rmt_cli.errors import UsageError

    model = load_checkpoint(checkpoint)
    model.memory_settings = model.memory_settings.model_copy(update={"num_mem_tokens": 0})
    (tmp_path / "a.txt").write_text(TEXT)
    with pytest.raises(UsageError, match="has no memory tokens"):
        ingest([IngestJob([str(tmp_path / "a.txt")], tmp_path / "a.st")], model)
    assert not (tmp_path / "a.st").exists()


def test_a_dataset_whose_field_names_hold_newlines_is_one_line(tmp_path, monkeypatch):
    """A dataset column named "o\\nerror: forged" printed a forged second error line."""
    from rmt_cli.commands.samples import load_dataset_texts
    from rmt_cli.errors import UsageError

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "d.jsonl").write_text('{"o\\u001b[2Jther\\nerror: forged": "x"}\n')
    with pytest.raises(UsageError) as caught:
        load_dataset_texts(str(tmp_path / "ds"), "train", "text")
    (line,) = str(caught.value).splitlines()
    assert "\x1b" not in line and "has no field 'text'" in line


def test_the_api_ask_refuses_another_models_memory_unless_forced(memfile, checkpoint, tmp_path):
    """The API's ask() never checked that a memory belonged to the model: an IndexError from the embedding lookup
    (a tail token beyond its vocabulary), or a silent wrong answer. It now refuses as `rmt ask` does."""
    from dataclasses import replace

    from rmt_cli import ask, load_checkpoint, load_memory
    from rmt_cli.errors import UsageError

    model, state = load_checkpoint(checkpoint), load_memory(memfile)
    assert ask(model, state, "Where is Mary?").question == "Where is Mary?"
    other = replace(state, fingerprint="0" * 32)
    with pytest.raises(UsageError, match="made by another model or setting"):
        ask(model, other, "Where is Mary?")
    assert ask(model, other, "Where is Mary?", force=True).answer == ask(model, state, "Where is Mary?").answer
    with pytest.raises(UsageError, match="outside this model's vocabulary"):
        ask(model, replace(state, tail_tokens=[10**6]), "Where is Mary?", force=True)
