"""Faults at the command line (issue 8): each is one `error:` line with the right exit code, or correct behaviour."""

import json
import os

import pytest
import yaml

from rmt_cli.storage.assets import DEFAULT_LM_DIR
from rmt_cli.data.sources import open_document
from rmt_cli.storage.recipe import load_recipe
from conftest import ctrl_c_as_under_a_terminal, one_error_line, run_cli as run, TINY_RECIPE

RECIPE = TINY_RECIPE


@pytest.fixture
def memory_file(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("Mary went to the garden. " * 20)
    assert run(["ingest", doc, "-o", tmp_path / "m.st", "--model", DEFAULT_LM_DIR, "-q"]).exit_code == 0
    return tmp_path / "m.st"


@pytest.mark.parametrize("args, words", [
    (["ingest", "--bogus"], ["No such option: --bogus", "rmt ingest --help"]),
    (["eval", "--batch-size", "0"], ["--batch-size"]),
    (["frob"], ["frob"]),
    (["ask", "m.st", "q", "--seed", str(2**70)], ["--seed"]),
    (["ask", "m.st", "q", "--temperature", "nan"], ["temperature nan"]),  # checked as the API checks it
    (["eval", "--facts", "1,100000000"], ["--facts", "1000"]),
    (["eval", "--samples", "100000000000"], ["--samples"]),
])
def test_option_errors_are_one_line_not_a_box(args, words):
    r = run(args)
    one_error_line(r, 2, *words)
    assert "╭" not in r.stderr and r.stdout == ""


def test_help_without_a_command_is_still_the_help():
    r = run([])
    assert "Usage" in r.stdout + r.stderr and "ingest" in r.stdout + r.stderr


def test_questions_and_manifests_from_a_pipe(tmp_path, memory_file):
    """`--file <(...)` and `--manifest <(...)` name a pipe (/dev/fd/N), not a regular file: both are read."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"Where is Mary?\nWhere is John?\n")
    os.close(write_end)
    try:
        r = run(["ask", memory_file, "--file", f"/dev/fd/{read_end}", "--model", DEFAULT_LM_DIR])
    finally:
        os.close(read_end)
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 2

    doc = tmp_path / "doc.txt"
    read_end, write_end = os.pipe()
    os.write(write_end, f"{doc}\t{tmp_path / 'piped.st'}\n".encode())
    os.close(write_end)
    try:
        r = run(["ingest", "--manifest", f"/dev/fd/{read_end}", "--model", DEFAULT_LM_DIR, "-q"])
    finally:
        os.close(read_end)
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "piped.st").is_file()


def test_a_question_file_that_is_a_folder_or_missing(tmp_path, memory_file):
    one_error_line(run(["ask", memory_file, "--file", tmp_path, "--model", DEFAULT_LM_DIR]), 2, "is a folder")
    one_error_line(run(["ask", memory_file, "--file", tmp_path / "none", "--model", DEFAULT_LM_DIR]), 2, "no such")


def _piped(text: str) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, text.encode())
    os.close(write_end)
    return read_end


def test_a_recipe_from_a_pipe_is_read(tmp_path):
    """`rmt train <(...)` names /dev/fd/N, a pipe, which is no regular file: it was "no such file"."""
    read_end = _piped(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "run")}))
    try:
        recipe = load_recipe(f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
    assert recipe.memory.segment_size == RECIPE["memory"]["segment_size"]
    read_end = _piped(yaml.safe_dump({**RECIPE, "bogus": 1}))
    try:
        r = run(["train", f"/dev/fd/{read_end}", "-q"])
    finally:
        os.close(read_end)
    one_error_line(r, 2, "bogus: unknown key")  # read, then checked as any recipe


def test_a_looping_link_is_named_as_one_wherever_a_path_is_given(tmp_path, memory_file):
    """A model folder or a recipe that is a link to itself was "no such folder" / "no such file"."""
    loop, doc, out = tmp_path / "loop", tmp_path / "doc.txt", tmp_path / "x.st"
    loop.symlink_to(loop)
    for args in (["ingest", loop, "-o", out, "--model", DEFAULT_LM_DIR], ["ingest", doc, "-o", out, "--model", loop],
                 ["ingest", doc, "-o", loop, "--model", DEFAULT_LM_DIR], ["train", loop],
                 ["extend", loop, loop], ["ask", loop, "Where?", "--model", DEFAULT_LM_DIR],
                 ["eval", "--noise", loop, "--model", DEFAULT_LM_DIR], ["eval", "--babi", loop]):
        one_error_line(run([*args, "-q", *(["--json"] if args[0] == "eval" else [])] if args[0] != "ask" else args), 2,
                       "loop")
    assert not out.exists()


def test_lines_on_stderr_are_never_wrapped_nor_read_as_markup(tmp_path):
    """rich wrapped a line at 80 columns where stderr is no terminal (a CI log, `2> file`), and read `[b]` in a
    path as markup."""
    out = tmp_path / ("a-long-folder-name-" * 6 + "[b]x[/b]")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(out)}))
    r = run(["train", recipe, "-q"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == [str(out / "final")]
    one_error_line(run(["train", recipe, "-q"]), 2, str(out))  # a second run into it: its error names it whole


def test_control_characters_from_names_stay_on_one_line(tmp_path):
    bad = tmp_path / "evil\nerror: forged\x1b[2Jname.txt"
    r = run(["ingest", bad, "-o", tmp_path / "m.st", "--model", DEFAULT_LM_DIR, "-q"])
    one_error_line(r, 2, "\\n", "\\x1b")


def test_append_reports_this_runs_tokens_and_the_files_total(tmp_path, memory_file):
    first = json.loads(run(["ingest", tmp_path / "doc.txt", "-o", tmp_path / "alone.st", "--model", DEFAULT_LM_DIR,
                            "-q", "--json"]).stdout)
    more = tmp_path / "more.txt"
    more.write_text("John moved to the office. " * 30)
    r = run(["ingest", "--append", memory_file, more, "--model", DEFAULT_LM_DIR, "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    appended = json.loads(r.stdout)
    alone = json.loads(run(["ingest", more, "-o", tmp_path / "more.st", "--model", DEFAULT_LM_DIR, "-q",
                            "--json"]).stdout)
    assert appended["total_tokens"] == first["tokens"] + appended["tokens"]
    assert abs(appended["tokens"] - alone["tokens"]) <= 2  # the join of two texts may tokenize a little apart
    assert appended["tokens"] < appended["total_tokens"]


def test_a_file_cut_short_while_it_is_read_is_reported(tmp_path):
    path = tmp_path / "growing.txt"
    path.write_bytes(b"a line of text\n" * 20_000)
    document = open_document([str(path)])
    chunks = document.chunks(chunk_bytes=4096)
    next(chunks)
    os.truncate(path, 10_000)  # cut while being read (a rotated log, a file rewritten meanwhile)
    read = 4096 + sum(len(c) for c in chunks)
    record = document.records[0]
    assert record.size == read == 10_000 and record.changed_while_read
    whole = open_document([str(path)])
    list(whole.chunks())
    assert not whole.records[0].changed_while_read


def test_ingest_warns_when_a_file_changes_while_it_is_read(tmp_path, monkeypatch):
    import rmt_cli.data.sources as sources

    path = tmp_path / "book.txt"
    path.write_bytes(b"Mary went to the garden. " * 8000)  # 200 kB: several reads
    real_chunks = sources.Document.chunks

    def cut_after_first(self, chunk_bytes=sources.CHUNK_BYTES):
        for n, block in enumerate(real_chunks(self, chunk_bytes)):
            yield block
            if n == 0:
                os.truncate(path, 100_000)

    monkeypatch.setattr(sources.Document, "chunks", cut_after_first)
    r = run(["ingest", path, "-o", tmp_path / "m.st", "--model", DEFAULT_LM_DIR, "-q"])
    assert r.exit_code == 0, r.stderr
    assert "changed while it was read" in r.stderr and "100,000 bytes read" in r.stderr


@pytest.mark.parametrize("override, words", [
    ("memory.segment_size=100000000", "memory.segment_size"),
    ("task.max_facts=5000", "task.max_facts"),
    ("batch_size=1000000", "batch_size"),
    ("seed=-1", "seed"),
    ("model.config.n_embd=1000000", "GiB in float32"),  # was a traceback from the allocator
    ("model.config.n_layer=100000000", "layers; at most"),
])
def test_huge_or_negative_sizes_are_refused_before_anything_is_built(tmp_path, override, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "run")}))
    r = run(["train", recipe, override, "-q"])
    one_error_line(r, 2, words)
    assert not (tmp_path / "run").exists()


def test_running_out_of_memory_is_one_line(tmp_path, monkeypatch):
    import rmt_cli.commands.train as train_module

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 120000000000 bytes.\nmore detail")

    monkeypatch.setattr(train_module, "train", no_memory)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "run")}))
    one_error_line(run(["train", recipe, "-q"]), 1, "out of memory")


def _start(args, tmp_path):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "rmt_cli.cli", *map(str, args)], cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=ctrl_c_as_under_a_terminal)


def _wait_for_trace(tmp_path, proc, timeout=120.0):
    """Until the streamed --trace (a hidden temporary beside its target) has lines: ingest is under way."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_size > 0 for p in tmp_path.glob(".t.jsonl.*")):
            return
        time.sleep(0.05)
    raise AssertionError(f"ingest never started: {proc.poll()}")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_ingest_interrupted_or_killed_writes_nothing_and_keeps_the_old_file(tmp_path, memory_file, signal_name):
    """Ctrl-C (the terminal's SIGINT to the process group), SIGTERM, a closed terminal (SIGHUP: exited 129 and left
    the trace's temporary) or kill -9 in the middle of an --append: the memory file is as it was, bit for bit, and
    no trace or memory file appears half-written."""
    import signal

    book = tmp_path / "book.txt"
    book.write_text("Mary went to the garden and then she came back again. " * 60_000)  # minutes of reading
    before = memory_file.read_bytes()
    proc = _start(["ingest", "--append", memory_file, book, "--model", DEFAULT_LM_DIR, "--trace", "t.jsonl", "-q"],
                  tmp_path)
    _wait_for_trace(tmp_path, proc)
    os.killpg(proc.pid, getattr(signal, signal_name))
    _, stderr = proc.communicate(timeout=120)
    assert memory_file.read_bytes() == before
    assert not (tmp_path / "t.jsonl").exists()
    if signal_name != "SIGKILL":  # `kill` (SIGTERM) and a closed terminal (SIGHUP) stop rmt as Ctrl-C does
        assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
        assert not list(tmp_path.glob(".*.tmp*"))  # temporaries removed on the way out
    else:
        assert proc.returncode == -9
        # The trace's temporary stays, unfinished: the next ingest that writes the trace removes it (the 13th review)
        assert list(tmp_path.glob(".t.jsonl.*.tmp.jsonl"))
        r = run(["ingest", tmp_path / "doc.txt", "-o", tmp_path / "again.st", "--model", DEFAULT_LM_DIR, "--trace",
                 tmp_path / "t.jsonl", "-q"])
        assert r.exit_code == 0, r.stderr
        assert not list(tmp_path.glob(".*.tmp*"))


def test_eval_interrupted_exits_130_and_writes_no_plot(tmp_path):
    import signal
    import time

    pytest.importorskip("matplotlib")
    proc = _start(["eval", "--model", DEFAULT_LM_DIR, "--lengths", "64k", "--samples", "200", "--plot", "e.png",
                   "--json"], tmp_path)
    time.sleep(6)  # imports, the model, then minutes of evaluation
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert stdout == "" and not (tmp_path / "e.png").exists()


def test_output_under_a_regular_file_is_refused_before_reading(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "doc.txt").write_text("Mary went to the garden. " * 20)
    r = run(["ingest", tmp_path / "doc.txt", "-o", tmp_path / "afile" / "m.st", "--model", DEFAULT_LM_DIR, "-q"])
    one_error_line(r, 2, "is a file, not a folder")


def test_a_plot_that_is_not_png_is_refused_before_scoring(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "doc.txt").write_text("Mary went to the garden. " * 20)
    r = run(["perplexity", tmp_path / "doc.txt", "--plot", tmp_path / "x.svg", "-q"])
    one_error_line(r, 2, "PNG")
    r = run(["eval", "--plot", tmp_path / "x", "-q"])
    one_error_line(r, 2, "PNG")


# Third review (a crafted set): each of these failed before its fix.


def test_an_ignored_stop_signal_stays_ignored():
    """Under `nohup` (SIGHUP ignored) a closed terminal does not stop rmt: only signals not ignored are taken."""
    import signal

    from rmt_cli.errors import stop_signals

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert signal.SIGHUP not in stop_signals()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert signal.SIGHUP in stop_signals()


def test_answers_this_stdout_cannot_encode_are_escaped(memory_file, monkeypatch):
    """An answer holding "é" printed to a stdout in ASCII (PYTHONIOENCODING=ascii, a C locale) was a
    UnicodeEncodeError traceback; it is escaped, as Python escapes it on stderr."""
    from typer.testing import CliRunner

    from rmt_cli.cli import app
    from rmt_cli.commands import ask as ask_module

    monkeypatch.setattr(ask_module, "ask_many", lambda model, state, questions, *rest: [
        ask_module.Answer("café ☕", -1.0, 2, question=q) for q in questions])
    r = CliRunner(charset="ascii").invoke(app, ["ask", str(memory_file), "Q", "--model", str(DEFAULT_LM_DIR)])
    assert r.exit_code == 0 and r.exception is None, r.stderr
    assert r.stdout == "caf\\xe9 \\u2615\n"


def test_names_too_long_for_the_system_are_one_short_line_exit_2(tmp_path):
    """A 300-byte file name or a 5,000-byte path as -o was exit 1 (an OSError from the folder check), the path
    printed whole; it is bad input, found before reading, named cut short."""
    doc = tmp_path / "doc.txt"
    doc.write_text("Mary went to the garden. " * 20)
    assert run(["ingest", doc, "-o", tmp_path / "a.st", "--model", DEFAULT_LM_DIR, "-q"]).exit_code == 0
    for output in (tmp_path / ("m" * 300 + ".st"), tmp_path / "/".join(["d" * 200] * 25) / "m.st"):
        for extra in ([], ["--append", tmp_path / "a.st"]):
            r = run(["ingest", doc, "-o", output, "--model", DEFAULT_LM_DIR, "-q", *extra])
            one_error_line(r, 2, "File name too long")
            assert len(r.stderr) < 400


def test_a_home_of_no_such_user_is_a_missing_path(tmp_path):
    """`~nosuchuser/a.txt` (Path.expanduser raises RuntimeError) was a traceback in ingest, perplexity and eval."""
    one_error_line(run(["ingest", "~nosuchuser-rmt/a.txt", "-o", tmp_path / "m.st", "--model", DEFAULT_LM_DIR]), 2,
                   "~nosuchuser-rmt/a.txt: no such file or folder")


def test_an_unreadable_stdin_is_bad_input_in_ingest_as_in_ask(tmp_path):
    """`rmt ingest - 0>file` (stdin open, but write-only) was exit 1 with '[Errno 9] Bad file descriptor'; rmt ask
    said 'standard input cannot be read', exit 2."""
    import subprocess
    import sys

    with open(tmp_path / "write-only", "wb") as stdin:
        r = subprocess.run([sys.executable, "-m", "rmt_cli.cli", "ingest", "-", "-o", tmp_path / "m.st", "--model",
                            DEFAULT_LM_DIR, "-q"], stdin=stdin, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines == ["error: standard input cannot be read: Bad file descriptor"], r.stderr
    assert not (tmp_path / "m.st").exists()


def test_append_onto_a_folder_names_append(tmp_path):
    """`rmt ingest --append FOLDER more.txt` said '-o FOLDER: is a folder' though no -o was given."""
    (tmp_path / "doc.txt").write_text("Mary went to the garden.")
    one_error_line(run(["ingest", "--append", tmp_path, tmp_path / "doc.txt"]), 2, f"--append {tmp_path}: is a folder")


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory):
    """The embedded model with a NaN in its config: every number it computes is NaN."""
    import shutil

    from rmt_cli.storage.assets import DEFAULT_MODEL_DIR

    path = tmp_path_factory.mktemp("nan") / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "rms_norm_eps": float("nan")}))
    return path


def test_a_model_whose_numbers_break_is_an_error_everywhere(tmp_path, broken_model):
    """Such a model wrote a memory file that rmt itself then refused (ingest exit 0), answered "" (ask, exit 0)
    and scored 0% (eval, exit 0): each is now one line and exit 1, and nothing is written."""
    book = tmp_path / "book.txt"
    book.write_text("Mary went to the kitchen. " * 400)
    one_error_line(run(["ingest", book, "-o", tmp_path / "m.st", "--model", broken_model]), 1, "not written",
                   "not finite")
    assert not (tmp_path / "m.st").exists()
    story = tmp_path / "story.txt"
    story.write_text("Mary went to the kitchen.\n")  # under one segment: the memory is never written by the model
    assert run(["ingest", story, "-o", tmp_path / "s.st", "--model", broken_model]).exit_code == 0
    for extra in ([], ["--json"]):
        one_error_line(run(["ask", tmp_path / "s.st", "Where is Mary?", "--model", broken_model, *extra]), 1,
                       "non-finite scores")
    one_error_line(run(["eval", "--model", broken_model, "--lengths", "1k", "--samples", "2", "-q", "--json"]), 1,
                   "non-finite scores")


def test_a_rust_panic_is_one_line(tmp_path, memory_file, monkeypatch):
    """A Rust library that gives up (a crafted tokenizer's regex) raises pyo3's PanicException, a BaseException:
    it went past every handler as a traceback."""
    PanicException = type("PanicException", (BaseException,), {})

    def panic(*args, **kwargs):
        raise PanicException("Onig: Regex search error: retry-limit-in-match over")

    monkeypatch.setattr("rmt_cli.commands.ask.question_ids", panic)
    one_error_line(run(["ask", memory_file, "Where is Mary?", "--model", DEFAULT_LM_DIR]), 1, "a Rust library failed",
                   "retry-limit")


def test_recipe_paths_under_home_and_extend_without_the_trained_recipe(tmp_path, monkeypatch):
    """`output_dir: ~/x` made a folder named "~" in the working folder; `rmt extend` of a checkpoint without its
    recipe.yaml blamed the contents of the missing file."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": "~/runs/x"}))
    assert run(["train", "r.yaml", "-q"]).exit_code == 0
    final = tmp_path / "home" / "runs" / "x" / "final"
    assert final.is_dir() and not (tmp_path / "~").exists()
    one_error_line(run(["train", "r.yaml", "-q", "output_dir=~nosuchuser0x/x"]), 2, "no such user's home folder")
    shutil.copytree(final, tmp_path / "bare")
    (tmp_path / "bare" / "recipe.yaml").unlink()
    one_error_line(run(["extend", tmp_path / "bare", "r.yaml", "-q"]), 2, "bare: no recipe.yaml")
