"""User mistakes found in review: each is one `error:` line with the right exit code, never a traceback."""

import pytest
import yaml

from conftest import run_cli as run, TINY_RECIPE

RECIPE = TINY_RECIPE


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "run")}))
    return path


def test_output_dir_that_is_a_file(tmp_path, recipe):
    (tmp_path / "afile").write_text("x")
    r = run(["train", recipe, f"output_dir={tmp_path / 'afile'}", "-q"])
    assert r.exit_code == 2 and "is a file" in r.stderr


@pytest.mark.parametrize("content, words", [(None, "no such file"), ("not babi at all\n", "bAbI")])
def test_bad_babi_path(tmp_path, recipe, content, words):
    path = tmp_path / "qa.txt"
    if content is not None:
        path.write_text(content)
    r = run(["train", recipe, "task.name=babi", f"task.babi_path={path}", "-q"])
    assert r.exit_code == 2 and words.lower() in r.stderr.lower() and "task.babi_path" in r.stderr


def test_questions_that_are_not_utf8(tmp_path):
    from rmt_cli.storage.assets import DEFAULT_LM_DIR

    (tmp_path / "q.txt").write_bytes(b"Where is caf\xe9?\n")
    (tmp_path / "doc.txt").write_text("Mary went to the garden. " * 20)
    assert run(["ingest", tmp_path / "doc.txt", "-o", tmp_path / "m.st", "--model", DEFAULT_LM_DIR, "-q"]).exit_code == 0
    for args, given in ((["--file", tmp_path / "q.txt"], None), (["-"], b"Where is caf\xe9?\n")):
        r = run(["ask", tmp_path / "m.st", *args, "--model", DEFAULT_LM_DIR], input=given)
        assert r.exit_code == 2 and "UTF-8" in r.stderr


def test_plot_into_a_missing_folder_is_refused_before_scoring(tmp_path):
    (tmp_path / "doc.txt").write_text("Mary went to the garden. " * 20)
    r = run(["perplexity", tmp_path / "doc.txt", "--plot", tmp_path / "nodir" / "x.png", "-q"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        words = "needs matplotlib"  # checked first, also before scoring
    else:
        words = "no folder"
    assert r.exit_code == 2 and words in r.stderr and r.stdout == ""


@pytest.mark.parametrize("command", ["train", "extend", "ingest", "ask", "eval", "perplexity"])
def test_help_shows_no_type_after_a_flag(command):
    """Flags such as --json take no value, so help shows none after them (typer printed `--json <bool>`, which
    reads as "--json true"; faults T33); options that take one still show its type."""
    r = run([command, "--help"])
    assert r.exit_code == 0 and "--help" in r.stdout
    assert "<bool>" not in r.stdout
    assert "<path>" in r.stdout.lower() or "<int" in r.stdout or "<float" in r.stdout


def test_version():
    from rmt_cli import __version__

    r = run(["--version"])
    assert (r.exit_code, r.stdout) == (0, f"rmt {__version__}\n")


def test_trace_to_stdout_is_refused_not_a_file_named_dash(tmp_path, monkeypatch):
    """`--trace -` wrote a file named "-" (a fifth review): stdout carries --json, so it is refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("Mary went to the garden. " * 20)
    r = run(["ingest", "a.txt", "-o", "a.st", "--trace", "-"])
    assert r.exit_code == 2 and "--trace -" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "-").exists() and not (tmp_path / "a.st").exists()


def test_json_nested_too_deeply_is_not_a_file_rmt_wrote(tmp_path, recipe):
    """A few kB of `[[[[` made json.loads raise RecursionError, which the handlers of bad JSON missed: a traceback
    for an -o or --trace target, output_dir/metrics.jsonl and, on resume, training_state.json (the fourteenth
    review). Now each is a file rmt did not write: the usual one-line refusal, exit 2."""
    from rmt_cli.commands.train import _drop_metrics_after
    from rmt_cli.errors import UsageError, json_loads
    from rmt_cli.storage.training_state import read_training_state

    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match="nested too deeply"):
        json_loads(deep)
    (tmp_path / "a.txt").write_text("Mary went to the garden. " * 20)
    header = deep[:20_000].encode()
    (tmp_path / "evil.st").write_bytes(len(header).to_bytes(8, "little") + header)
    (tmp_path / "t.jsonl").write_text("[" * 2000 + "\n")
    for args, refusal in ((["-o", tmp_path / "evil.st"], "is not a memory file"),
                          (["-o", tmp_path / "m.st", "--trace", tmp_path / "t.jsonl"], "a trace; rmt replaces only")):
        r = run(["ingest", tmp_path / "a.txt", *args, "-q"])
        assert r.exit_code == 2 and refusal in r.stderr and r.stderr.count("\n") == 1, r.stderr
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(deep + "\n")
    r = run(["train", recipe, "-q"])
    assert r.exit_code == 2 and "metrics.jsonl" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    # On resume: a deep metrics line is dropped as a line rmt did not write; training_state.json is one line.
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n' + deep + "\n")
    assert _drop_metrics_after(out / "metrics.jsonl", 5) == []
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'
    (out / "training_state.json").write_text('{"step": 3, "optimizer": ' + deep + "}")
    with pytest.raises(UsageError, match="training_state.json is unreadable .JSON nested too deeply"):
        read_training_state(out)


def test_a_name_too_long_is_bad_input_and_cut_short(tmp_path):
    """--file, --manifest and --model with a name too long exited 1; --model, perplexity and eval --noise
    printed the whole 5,000-byte path (the fourteenth review). Now: exit 2, one line, the path cut."""
    name, path = "a" * 300, "/".join(["b" * 200] * 25)
    (tmp_path / "a.txt").write_text("Mary went to the garden. " * 20)
    assert run(["ingest", tmp_path / "a.txt", "-o", tmp_path / "m.st", "-q"]).exit_code == 0
    for args in (["ask", tmp_path / "m.st", "--file", name], ["ingest", "--manifest", name],
                 ["ask", "--model", path, tmp_path / "m.st", "q"], ["perplexity", path],
                 ["eval", "--noise", path, "--lengths", "1k", "--samples", "1"]):
        r = run(args)
        assert r.exit_code == 2 and "too long" in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert len(r.stderr) < 400, (args, len(r.stderr))
