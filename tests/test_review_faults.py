"""Faults a reviewer found (each was a traceback or invalid output): closed standard streams, stdin named twice,
overflowing temperatures, deep nesting, impossible model sizes, non-finite numbers, undecodable files and names,
crafted memory-file counts. Each must be one `error:` line with the documented exit code, or work."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from rmt_cli.cli import app
from rmt_cli.commands.ask import _choose
from rmt_cli.commands.ingest import IngestJob, ingest
from rmt_cli.core.memory import MemoryCell
from rmt_cli.data.sources import open_document
from rmt_cli.errors import UsageError
from rmt_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from rmt_cli.storage.memfile import MAX_COUNT, load_memory
from rmt_cli.storage.recipe import MemorySpec, apply_overrides, load_recipe, read_recipe_data
from conftest import TINY_SEGMENT, save_tiny_checkpoint

SEGMENT = TINY_SEGMENT
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "memorize-tiny.yaml"
TEXT = "Mary went to the kitchen. Daniel moved to the garden. " * 4 + "Sandra"


def run(args, input=None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert "Traceback" not in result.stderr + result.stdout
    return result


def one_error(result, code, *words):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def cli_with_closed_stdin(args, tmp_path):
    """The real `rmt` in a child started with fd 0 closed (as `<&-` leaves it), which is not /dev/null."""
    code = ("import os, sys; os.close(0); "
            "os.execv(sys.executable, [sys.executable, '-m', 'rmt_cli.cli', *sys.argv[1:]])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=tmp_path, env=env, timeout=300)


# 1. closed standard input / output


@pytest.mark.parametrize("which", ["ingest", "ask"])
def test_closed_stdin_is_one_line_exit_2(tmp_path, checkpoint, memfile, which):
    args = (["ingest", "-", "-o", tmp_path / "s.st", "--model", checkpoint] if which == "ingest"
            else ["ask", memfile, "-", "--model", checkpoint])
    proc = cli_with_closed_stdin(args, tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "standard input is closed" in err
    assert not (tmp_path / "s.st").exists()


def test_closed_stdout_is_one_line_exit_1(tmp_path, checkpoint, memfile):
    code = ("import os, sys; os.close(1); "
            "os.execv(sys.executable, [sys.executable, '-m', 'rmt_cli.cli', *sys.argv[1:]])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for extra in ([], ["--json"]):
        proc = subprocess.run([sys.executable, "-c", code, "ask", str(memfile), "Where is Mary?", "--model",
                               str(checkpoint), *extra], stderr=subprocess.PIPE, env=env, timeout=300)
        err = proc.stderr.decode()
        assert proc.returncode == 1, err
        assert "Traceback" not in err and err.strip().count("\n") == 0 and "standard output is closed" in err


# 2. stdin named twice


def test_ask_with_stdin_twice_is_refused(checkpoint, memfile):
    one_error(run(["ask", memfile, "-", "-", "--model", checkpoint], input="Where is Mary?\n"), 2, "only once")


# 3. a temperature so small that logits / temperature overflow


def test_a_tiny_temperature_is_greedy_not_a_crash(checkpoint, memfile):
    logits = torch.tensor([1.0, 3.0, 2.0, float("-inf")])
    assert _choose(logits, 1e-300, 1.0, torch.Generator().manual_seed(0)) == 1
    assert _choose(logits, 1e-300, 0.5, torch.Generator().manual_seed(0)) == 1
    result = run(["ask", memfile, "Where is Mary?", "--model", checkpoint, "--temperature", "1e-300", "--json"])
    assert result.exit_code == 0, result.stderr
    greedy = run(["ask", memfile, "Where is Mary?", "--model", checkpoint, "--json"])
    assert json.loads(result.stdout)["answer"] == json.loads(greedy.stdout)["answer"]


# 4. deep nesting


def test_deep_nesting_in_an_override_or_a_recipe_is_one_line(tmp_path):
    for depth in (60, 3000):
        with pytest.raises(UsageError, match="nested more than"):
            load_recipe(RECIPE, ["seed=" + "[" * depth + "]" * depth])
    deep = tmp_path / "deep.yaml"
    deep.write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UsageError, match="nested more than"):
        read_recipe_data(deep)
    one_error(run(["train", deep]), 2, "nested more than")
    result = run(["train", RECIPE, "seed=" + "[" * 3000 + "]" * 3000, f"output_dir={tmp_path / 'o'}"])
    one_error(result, 2, "nested more than")
    assert len(result.stderr) < 500  # the override is quoted cut, not 6,000 brackets


# 5. an impossible model size


def test_a_negative_model_dimension_is_one_line(tmp_path):
    result = run(["train", RECIPE, "model.config.n_embd=-128", f"output_dir={tmp_path / 'o'}"])
    one_error(result, 2, "model.config", "n_embd is -128", "at least 1")
    assert not (tmp_path / "o").exists()


# 6. non-finite numbers in a recipe


@pytest.mark.parametrize("override", ["optim.lr=.inf", "optim.lr=.nan", "optim.lr=-.inf",
                                      "model.config.layer_norm_epsilon=.nan"])
def test_non_finite_numbers_in_a_recipe_are_refused(tmp_path, override):
    with pytest.raises(UsageError, match="finite"):
        load_recipe(RECIPE, [override])
    result = run(["train", RECIPE, override, f"output_dir={tmp_path / 'o'}"])
    one_error(result, 2, override.split("=")[0], "finite")
    assert not (tmp_path / "o").exists()


# 7. a model whose config makes NaN scores; control characters in answers


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, tokenizer, make_model):
    path = tmp_path_factory.mktemp("nan") / "model"
    cell = MemoryCell(make_model("llama"), num_mem_tokens=2)
    save_checkpoint(path, cell, tokenizer, MemorySpec(num_mem_tokens=2, segment_size=SEGMENT), "test")
    config = json.loads((path / "config.json").read_text())
    config["rms_norm_eps"] = float("nan")  # (-1.0 is refused at load since the twenty-second review)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_json_never_holds_nan(tmp_path, nan_checkpoint):
    (tmp_path / "doc.txt").write_text("Mary went.")  # under a segment: the memory file holds the initial memory
    result = run(["ingest", tmp_path / "doc.txt", "-o", tmp_path / "m.st", "--model", nan_checkpoint, "-q"])
    assert result.exit_code == 0, result.stderr
    result = run(["ask", tmp_path / "m.st", "Where is Mary?", "--model", nan_checkpoint, "--json"])
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout
    for line in result.stdout.splitlines():
        json.loads(line)
    one_error(result, 1, "non-finite")


def test_print_json_refuses_non_finite_numbers(capsys):
    from rmt_cli.cli import _print_json
    from rmt_cli.errors import RMTError

    with pytest.raises(RMTError, match="non-finite"):
        _print_json({"logprob": float("nan")})
    with pytest.raises(RMTError, match="non-finite"):
        _print_json({"rows": [{"loss": float("inf")}]})
    assert capsys.readouterr().out == ""


def test_plain_answers_escape_control_characters():
    from rmt_cli.cli import _answer_line

    assert _answer_line("a\nb") == "a b"
    assert _answer_line("x\x1b[2Jy\rz") == "x\\x1b[2Jy\\rz"
    assert _answer_line("日本語 “ok” é") == "日本語 “ok” é"
    assert _answer_line("w" * 5000) == "w" * 5000  # not cut


# 8. extend with a trained recipe that is not UTF-8


def test_extend_with_an_undecodable_trained_recipe(tmp_path, checkpoint):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    (ckpt / "recipe.yaml").write_bytes(b"seed: 1\n\xff\n")
    result = run(["extend", ckpt, RECIPE])
    one_error(result, 2, "UTF-8")


# 9. --task babi without a file


def test_eval_task_babi_needs_a_file(checkpoint):
    result = run(["eval", "--model", checkpoint, "--task", "babi", "--lengths", "300", "--samples", "1"])
    one_error(result, 2, "--babi")


# 10. codebases: bad .gitignore lines, names that are not UTF-8


def test_bad_gitignore_lines_are_skipped(tmp_path):
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / ".gitignore").write_text("[z-a]\n!\n*.log\n")
    (folder / "a.py").write_text("print(1)\n")
    (folder / "b.log").write_text("noise\n")
    document = open_document([str(folder)])
    assert [i.path.name for i in document.items] == ["a.py"]


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_a_file_name_that_is_not_utf8_is_escaped_in_its_header(tmp_path, checkpoint):
    folder = tmp_path / "code"
    folder.mkdir()
    try:
        with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as f:
            f.write(b"coffee\n")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    document = open_document([str(folder)])
    [item] = document.items
    assert b"caf\\udce9.txt" in item.header
    result = run(["ingest", folder, "-o", tmp_path / "m.st", "--model", checkpoint, "-q", "--json"])
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)


# 11. crafted memory-file counts


def _rewrite(src: Path, dst: Path, **meta):
    with safe_open(str(src), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = {**f.metadata(), **{k: str(v) for k, v in meta.items()}}
    save_file(tensors, str(dst), metadata)
    return dst


@pytest.mark.parametrize("meta", [dict(tokens=10**18, segments=0), dict(segments=10**18),
                                  dict(tokens=0), dict(segments=50)])
def test_counts_that_disagree_are_refused(tmp_path, memfile, checkpoint, meta):
    bad = _rewrite(memfile, tmp_path / "bad.st", **meta)
    with pytest.raises(UsageError, match="metadata (tokens|segments)"):
        load_memory(bad)
    (tmp_path / "more.txt").write_text(TEXT)
    result = run(["ingest", "--append", bad, tmp_path / "more.txt", "--model", checkpoint, "-q"])
    one_error(result, 2, "metadata")


def test_counts_as_ingest_writes_them_are_accepted(memfile):
    state = load_memory(memfile)
    assert state.segments * state.segment_size + len(state.tail_tokens) <= state.tokens <= MAX_COUNT


# 12. the third review's "confusing but within the rules"


def test_output_dash_is_refused_not_a_file_named_dash(tmp_path, checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text(TEXT)
    one_error(run(["ingest", "a.txt", "-o", "-", "--model", checkpoint, "-q"]), 2, "-o -", "standard output")
    assert not (tmp_path / "-").exists()


def test_a_byte_order_mark_is_no_part_of_a_manifest_or_a_question(tmp_path, checkpoint, memfile, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "jobs.tsv").write_bytes("\ufeffa.txt\ta.st\n".encode())
    result = run(["ingest", "--manifest", "jobs.tsv", "--model", checkpoint, "-q"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "a.st").is_file()
    (tmp_path / "q.txt").write_bytes("\ufeffWhere is Mary?\n".encode())
    with_bom = run(["ask", memfile, "--file", "q.txt", "--model", checkpoint, "--json"])
    plain = run(["ask", memfile, "Where is Mary?", "--model", checkpoint, "--json"])
    assert with_bom.exit_code == 0 and json.loads(with_bom.stdout) == json.loads(plain.stdout)


def test_a_codebase_link_to_a_file_outside_it_is_skipped(tmp_path, checkpoint):
    outside = tmp_path / "secret.txt"
    outside.write_text("the password is swordfish")
    code = tmp_path / "code"
    (code / "sub").mkdir(parents=True)
    (code / "main.py").write_text("print('hello')\n")
    (code / "sub" / "peer.py").write_text("x = 1\n")
    (code / "leak.txt").symlink_to(outside)
    (code / "inside.py").symlink_to(code / "sub" / "peer.py")  # links are not followed (test_review30.py)
    document = open_document([str(code)])
    names = [item.header.decode() for item in document.items]
    assert not any("leak" in n for n in names) and not any("inside.py" in n for n in names)
    assert sorted(document.skipped) == [str(code / "inside.py"), str(code / "leak.txt")]


# Ctrl-C while the command starts (faults T31): each start-up stage has an interrupt raised in it on purpose, in a
# child `rmt ask`, which must stop with "interrupted" and exit 130, answering nothing.
INTERRUPTED_IMPORT = """
import builtins, sys
real_import = builtins.__import__
def interrupting_import(name, *args, **kwargs):
    if name == {module!r} and not getattr(builtins, "interrupted", False):
        builtins.interrupted = True
        raise KeyboardInterrupt
    return real_import(name, *args, **kwargs)
builtins.__import__ = interrupting_import
{patch}
from rmt_cli.__main__ import main
sys.argv[0] = "rmt"
main()
"""


@pytest.mark.parametrize("module, patch", [
    ("typer", ""),  # the CLI's own libraries load
    ("no module", "import os, signal; real = builtins.__import__\n"  # SIGTERM (a scheduler's kill) while they load
             "def terminating(name, *a, **k):\n"
             "    if name == 'rich.console' and not getattr(builtins, 'termed', False):\n"
             "        builtins.termed = True; os.kill(os.getpid(), signal.SIGTERM)\n"
             "    return real(name, *a, **k)\n"
             "builtins.__import__ = terminating"),
    ("numpy", ""),  # torch's start-up imports numpy from C and used to swallow an interrupt there
    ("rmt_cli", "import typer.core; typer.core.TyperGroup.make_context = "  # typer parses the arguments
                "lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())"),
])
def test_an_interrupt_while_starting_stops_with_130(tmp_path, checkpoint, memfile, module, patch):
    code = INTERRUPTED_IMPORT.format(module=module, patch=patch)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, "ask", str(memfile), "Where is Mary?", "--model",
                           str(checkpoint)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=300)
    assert (proc.returncode, proc.stderr.decode(), proc.stdout) == (130, "interrupted\n", b"")


@pytest.mark.parametrize("text, encoding", [
    ("Elle était née à Genève, où l'été dure; ", "latin-1"),
    ("Он пошёл в сад, и там было тихо. ", "cp1251"),
    ("Он пошёл в сад, и там было тихо. ", "koi8-r"),
    ("Πήγε στον κήπο και ήταν ήσυχα. ", "iso-8859-7"),
    ("他去了花园，那里很安静。", "gbk"),
])
def test_binary_without_nul_bytes_is_refused_and_text_in_legacy_encodings_is_read(tmp_path, checkpoint, text,
                                                                                   encoding):
    """Random bytes with every NUL removed used to be read as text with a warning (faults T35); they are now
    refused as binary, while text in a legacy 8-bit or multi-byte encoding (invalid UTF-8 throughout) is still read,
    with the warning."""
    noise = bytes(b for b in random_bytes(20_000) if b)
    (tmp_path / "noise.dat").write_bytes(noise)
    (tmp_path / "legacy.txt").write_bytes(((text + "\n") * 300).encode(encoding))
    one_error(run(["ingest", tmp_path / "noise.dat", "-o", tmp_path / "n.st", "--model", checkpoint]), 2,
              "looks like a binary file", "control codes")
    assert not (tmp_path / "n.st").exists()
    r = run(["ingest", tmp_path / "legacy.txt", "-o", tmp_path / "l.st", "--model", checkpoint, "-q"])
    assert r.exit_code == 0 and "invalid UTF-8" in r.stderr, r.stderr


def random_bytes(count: int) -> bytes:
    import random
    return random.Random(0).randbytes(count)


@pytest.mark.parametrize("command", ["ingest", "perplexity"])
def test_binary_data_on_stdin_is_refused_as_from_a_file(tmp_path, checkpoint, command):
    """Standard input is judged by its first block as a file is by its first bytes (the fifth review: random
    bytes and gzip data on stdin were read as text); nothing is written."""
    args = (["ingest", "-", "-o", tmp_path / "s.st"] if command == "ingest" else ["perplexity", "-"]) + \
        ["--model", checkpoint]
    for data in (bytes(b for b in random_bytes(20_000) if b), random_bytes(20_000)):
        one_error(run(args, input=data), 2, "<stdin>: looks like binary data")
        assert not (tmp_path / "s.st").exists()


def test_an_output_replaces_a_memory_file_or_an_empty_one_never_other_files(tmp_path, checkpoint, memfile):
    """The fifth review: `-o notes.txt` replaced a user's text file without a word. A memory file (or an empty
    file, e.g. from mktemp) is still replaced; any other file is kept and the plan stops, by -o and by manifest."""
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    one_error(run(["ingest", doc, "-o", notes, "--model", checkpoint, "-q"]), 2, "notes.txt",
              "is not a memory file")
    assert notes.read_text() == "my notes\n"
    manifest = tmp_path / "jobs.tsv"
    manifest.write_text(f"{doc}\t{tmp_path / 'fresh.st'}\n{doc}\t{notes}\n")
    one_error(run(["ingest", "--manifest", manifest, "--model", checkpoint, "-q"]), 2, "is not a memory file")
    assert notes.read_text() == "my notes\n" and not (tmp_path / "fresh.st").exists()  # nothing written
    old = tmp_path / "old.st"
    old.write_bytes(memfile.read_bytes())
    empty = tmp_path / "empty.st"
    empty.touch()
    for target in (old, empty):
        r = run(["ingest", doc, "-o", target, "--model", checkpoint, "-q"])
        assert r.exit_code == 0, r.stderr
        assert load_memory(target).segments > 0


def test_save_memory_replaces_only_what_ingest_would(tmp_path, memfile):
    """The tenth review's Y4: the API's save_memory wrote over any file (a text file, an ingest's input), though
    `-o` refuses them. Now both follow one rule: a new path, an empty file or a memory file."""
    from rmt_cli import save_memory

    state = load_memory(memfile)
    notes = tmp_path / "notes.txt"
    notes.write_text("precious notes\n")
    with pytest.raises(UsageError, match="is not a memory file"):
        save_memory(notes, state)
    assert notes.read_text() == "precious notes\n"
    old = tmp_path / "old.st"
    old.write_bytes(memfile.read_bytes())
    for target in (tmp_path / "new.st", old):
        save_memory(target, state)
        assert load_memory(target).segments == state.segments


def test_save_checkpoint_replaces_only_what_a_run_would(tmp_path, checkpoint):
    """The thirteenth review's S2: the API's save_checkpoint deleted a folder of the user's at its path, and one at
    path.old beside it (where the swap moves the old folder), though a run refuses them. Now both follow one rule
    (replaceable_checkpoint): a new path, an empty folder or a checkpoint rmt wrote."""
    loaded = load_checkpoint(checkpoint)

    def save(target):
        return save_checkpoint(target, loaded.cell, loaded.tokenizer, loaded.memory_settings, "test")

    thesis, out = tmp_path / "thesis", tmp_path / "out"
    thesis.mkdir()
    (thesis / "chapter1.txt").write_text("my thesis")
    out.mkdir()
    (tmp_path / "out.old").mkdir()
    (tmp_path / "out.old" / "notes.txt").write_text("keep")
    (tmp_path / "file").write_text("mine")
    (tmp_path / "link").symlink_to(thesis)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for target, refused in [(thesis, thesis), (out, tmp_path / "out.old"), (tmp_path / "file", tmp_path / "file"),
                            (tmp_path / "link", tmp_path / "link")]:
        with pytest.raises(UsageError) as caught:
            save(target)
        assert str(caught.value).startswith(f"{refused}: is not a checkpoint rmt wrote"), caught.value
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (thesis / "chapter1.txt").read_text() == "my thesis"
    (tmp_path / "empty").mkdir()
    shutil.copytree(checkpoint, tmp_path / "ckpt")
    shutil.copytree(checkpoint, tmp_path / "ckpt.old")  # a swap cut short by a kill leaves the old one there
    for target in (tmp_path / "new", tmp_path / "empty", tmp_path / "ckpt"):
        save(target)
        assert load_checkpoint(target).info["fingerprint"] == loaded.info["fingerprint"]
    assert not (tmp_path / "ckpt.old").exists()


# The sixth review (untuned, session 9): outputs that replaced what rmt did not write, and a diverged run exiting 0

FAST = ["curriculum=[{segments: 1, steps: 2}]", "eval.samples=2", "eval.segments=[1]", "batch_size=4",
        "model.config.n_layer=1"]


def test_a_new_run_never_deletes_or_appends_to_a_users_files(tmp_path):
    """`final/thesis.txt` in output_dir was deleted and metrics.jsonl appended to; now the run is refused before
    anything is written. What an earlier run of rmt left without a checkpoint is replaced, and metrics restart."""
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final" / "thesis.txt").write_text("years of work")
    one_error(run(["train", RECIPE, f"output_dir={out}", *FAST, "-q"]), 2, "holds final,", "not a checkpoint")
    assert (out / "final" / "thesis.txt").read_text() == "years of work"
    (out / "final" / "thesis.txt").unlink()
    (out / "final").rmdir()
    (out / "notes.md").write_text("mine")
    one_error(run(["train", RECIPE, f"output_dir={out}", *FAST, "-q"]), 2, "holds notes.md,")
    (out / "notes.md").unlink()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n' * 5)  # an earlier run stopped before saving
    r = run(["train", RECIPE, f"output_dir={out}", *FAST, "-q"])
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 1 and all(line.get("loss") != 9.0 for line in lines)  # this run's lines only


def test_a_run_that_diverges_stops_with_exit_1_and_saves_no_final(tmp_path):
    out = tmp_path / "run"
    one_error(run(["train", RECIPE, f"output_dir={out}", *FAST, "optim.lr=1e30", "-q"]), 1,
              "training diverged at step", "the loss is nan")
    assert not (out / "final").exists()
    assert "NaN" not in (out / "metrics.jsonl").read_text()  # strict JSON: no NaN logged


def test_a_trace_replaces_only_a_trace_and_is_never_inside_an_input_folder(tmp_path, checkpoint):
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    args = ["ingest", doc, "-o", tmp_path / "m.st", "--model", checkpoint, "-q"]
    one_error(run([*args, "--trace", notes]), 2, "--trace", "exists and is not a trace")
    assert notes.read_text() == "my notes\n" and not (tmp_path / "m.st").exists()
    trace = tmp_path / "t.jsonl"
    for _ in range(2):  # a trace rmt wrote is replaced
        r = run([*args, "--trace", trace])
        assert r.exit_code == 0, r.stderr
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("x = 1\n" * 40)
    one_error(run(["ingest", code, "-o", tmp_path / "c.st", "--model", checkpoint, "--trace", code / "t.jsonl"]), 2,
              "inside a folder this ingest reads")
    assert sorted(p.name for p in code.iterdir()) == ["a.py"]


def test_no_output_goes_inside_the_checkpoint_folder_being_read(tmp_path, checkpoint):
    """A trace or memory file written into --model's folder made it a folder training no longer replaces."""
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    before = sorted(p.name for p in checkpoint.iterdir())
    one_error(run(["ingest", doc, "-o", tmp_path / "m.st", "--model", checkpoint, "--trace", checkpoint / "t.jsonl"]),
              2, "--trace", "inside the checkpoint folder")
    one_error(run(["ingest", doc, "-o", checkpoint / "m.st", "--model", checkpoint]), 2, "-o",
              "inside the checkpoint folder")
    assert sorted(p.name for p in checkpoint.iterdir()) == before and not (tmp_path / "m.st").exists()


def test_no_run_or_output_goes_inside_any_checkpoint_folder(tmp_path, checkpoint):
    """The thirteenth review's L1: `rmt train`/`rmt extend` wrote a whole run into `output_dir=runs/x/final/sub`,
    which ingest, --trace and --plot refuse. Now one rule refuses every output inside a checkpoint folder (one
    holding rmt.json), the one being read or another, before anything is written."""
    from rmt_cli.commands.train import train

    before = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*"))
    for inside in (checkpoint / "sub", checkpoint / "a" / "b"):
        one_error(run(["train", RECIPE, f"output_dir={inside}", *FAST, "-q"]), 2,
                  f"output_dir {inside}: is inside the checkpoint folder {checkpoint}; write it elsewhere")
    recipe = load_recipe(RECIPE, [f"output_dir={checkpoint / 'sub'}", *FAST])
    with pytest.raises(UsageError, match="is inside the checkpoint folder"):  # rmt extend's way in
        train(recipe, init_from=checkpoint, progress=False)
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    one_error(run(["ingest", doc, "-o", checkpoint / "m.st"]), 2, "-o", "inside the checkpoint folder")  # not --model's
    assert sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*")) == before


def test_no_plot_goes_inside_the_checkpoint_folder_being_read(checkpoint):
    pytest.importorskip("matplotlib")
    before = sorted(p.name for p in checkpoint.iterdir())
    one_error(run(["eval", "--model", checkpoint, "--plot", checkpoint / "p.png", "--lengths", "100", "-q"]), 2,
              "--plot", "inside the checkpoint folder")
    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_an_interrupted_batch_reports_the_memory_files_it_finished(tmp_path, checkpoint, monkeypatch):
    """Ctrl-C in the middle of a manifest: --json lists every document, the finished ones as usual (their files
    written) and the others as interrupted with nothing written; exit 130 (it printed nothing)."""
    import rmt_cli.commands.ingest as ingest_module
    from rmt_cli import IngestInterrupted

    finish, finished = ingest_module._finish, []

    def finish_one_then_stop(reader, model):
        if finished:
            raise KeyboardInterrupt
        finish(reader, model)
        finished.append(reader.job.output)

    monkeypatch.setattr(ingest_module, "_finish", finish_one_then_stop)
    lines = []
    for k in range(3):
        (tmp_path / f"d{k}.txt").write_text(TEXT * (k + 1))
        lines.append(f"{tmp_path / f'd{k}.txt'}\t{tmp_path / f'd{k}.st'}")
    manifest = tmp_path / "jobs.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    r = run(["ingest", "--manifest", manifest, "--model", checkpoint, "--json", "-q"])
    assert r.exit_code == 130, r.stderr
    report = json.loads(r.stdout)
    assert [Path(e["output"]).name for e in report] == ["d0.st", "d1.st", "d2.st"]
    done = [e for e in report if e["error"] is None]
    assert [Path(e["output"]) for e in done] == finished and done[0]["tokens"] > 0
    assert sorted(p.name for p in tmp_path.glob("*.st")) == [Path(finished[0]).name]
    assert all("interrupted" in e["error"] for e in report if e not in done)
    assert "1 of 3 documents finished" in r.stderr
    # The API: the same results, on the exception
    finished.clear()
    jobs = [IngestJob([tmp_path / f"d{k}.txt"], tmp_path / f"e{k}.st") for k in range(3)]
    with pytest.raises(IngestInterrupted) as stop:
        ingest(jobs, load_checkpoint(checkpoint))
    assert [r.error is None for r in stop.value.results] == [True, False, False]


def test_outputs_named_as_folders_or_after_dot_dot(tmp_path, checkpoint, memfile, monkeypatch):
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    one_error(run(["ingest", "--append", memfile, doc, "-o", f"{tmp_path}/newdir/", "--model", checkpoint]), 2,
              "--append writes one memory file")
    assert not (tmp_path / "newdir").exists()
    manifest = tmp_path / "jobs.tsv"
    manifest.write_text(f"{doc}\t{tmp_path / 'mo'}/\n")
    one_error(run(["ingest", "--manifest", manifest, "--model", checkpoint]), 2, "names a folder")
    assert not (tmp_path / "mo").exists()
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "proj" / "a.txt").write_text(TEXT)
    monkeypatch.chdir(tmp_path / "proj" / "sub")
    r = run(["ingest", "..", "-o", f"{tmp_path}/out/", "--model", checkpoint, "-q"])
    assert r.exit_code == 0, r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["proj.st"]  # was a hidden "...st"


def test_a_plot_is_never_written_over_an_input(tmp_path, checkpoint):
    pytest.importorskip("matplotlib")
    text = tmp_path / "t.png"
    text.write_text(TEXT * 5)
    one_error(run(["perplexity", text, "--model", checkpoint, "--plot", text]), 2, "is an input of this command")
    one_error(run(["eval", "--model", checkpoint, "--noise", text, "--plot", text]), 2, "is an input of this command")
    assert text.read_text() == TEXT * 5


def test_the_invalid_utf8_warning_names_the_file_that_held_the_bytes(tmp_path, checkpoint):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text(TEXT)
    bad.write_bytes(b"caf\xe9 and more. " * 3)
    r = run(["ingest", good, bad, good, "-o", tmp_path / "m.st", "--model", checkpoint, "-q"])
    assert r.exit_code == 0, r.stderr
    [warning] = [line for line in r.stderr.splitlines() if "U+FFFD" in line]
    assert f"3 invalid UTF-8 byte sequences in {bad} were read as U+FFFD" in warning and str(good) not in warning


def test_a_stage_folder_replaces_links_left_beside_it(tmp_path):
    """A `final.old` link (or `final` itself a link) failed the run after its training, or stayed behind."""
    from rmt_cli.atomic import atomic_folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final.old").symlink_to(elsewhere)
    with atomic_folder(run_dir / "final") as tmp:
        (tmp / "rmt.json").write_text("{}")
    (run_dir / "stage-0").symlink_to(elsewhere)
    with atomic_folder(run_dir / "stage-0") as tmp:
        (tmp / "rmt.json").write_text("{}")
    assert sorted(p.name for p in run_dir.iterdir()) == ["final", "stage-0"]
    assert not (run_dir / "stage-0").is_symlink() and (elsewhere / "keep.txt").read_text() == "keep"


def test_a_folder_interrupted_while_written_leaves_nothing_and_a_run_clears_what_a_kill_left(tmp_path):
    """The eleventh review: a second Ctrl-C while a checkpoint was written left `step-N.tmp` for good."""
    from rmt_cli.atomic import atomic_folder

    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(tmp_path / "step-0000001") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # What kill -9 leaves mid-write goes when the run next writes a checkpoint.
    out = tmp_path / "run"
    args = ["train", RECIPE, f"output_dir={out}", *FAST, "checkpoint.every=1", "-q"]
    assert run(args).exit_code == 0
    (out / "checkpoints" / "step-0000001.tmp").mkdir()
    (out / "checkpoints" / "step-0000001.tmp" / "model.safetensors").write_bytes(b"half")
    r = run([*args, "curriculum=[{segments: 1, steps: 3}]", "resume=auto"])
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]


def test_an_output_in_a_missing_folder_is_refused_before_reading(tmp_path, checkpoint):
    """The eleventh review: `-o /nonexistent/dir/x.st` made the missing folders (as root, anywhere)."""
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    for output in (tmp_path / "typo" / "deeper" / "m.st", tmp_path / "typo" / "m.st", f"{tmp_path}/typo/deeper/"):
        one_error(run(["ingest", doc, "-o", output, "--model", checkpoint, "-q"]), 2, "no folder", "typo")
    assert not (tmp_path / "typo").exists()
    r = run(["ingest", doc, "-o", f"{tmp_path}/made/", "--model", checkpoint, "-q"])  # FOLDER/ itself may be new
    assert r.exit_code == 0 and (tmp_path / "made" / "doc.st").is_file(), r.stderr


def test_eleventh_review_messages(tmp_path, checkpoint, memfile):
    """Usage errors name the subcommand's help; NaN is "a finite number"; a non-finite value names its override;
    a checkpoint folder as output_dir is called one."""
    one_error(run(["ingest", "x.txt", "-o", "x.st", "--model"]), 2, "requires an argument", "see rmt ingest --help")
    one_error(run(["ask", memfile, "Where is Mary?", "--model", checkpoint, "--temperature", "nan"]), 2,
              "nan: a finite number from 0 to 10000")
    one_error(run(["ask", memfile, "Where is Mary?", "--model", checkpoint, "--top-p", "nan"]), 2,
              "nan: a finite number from 0 to 1")
    one_error(run(["train", RECIPE, "optim.lr=1e400", f"output_dir={tmp_path / 'r'}"]), 2,
              "(override optim.lr=1e400): optim.lr: must be a finite number")
    before = sorted(p.name for p in checkpoint.iterdir())
    one_error(run(["train", RECIPE, f"output_dir={checkpoint}", *FAST, "-q"]), 2, "is a checkpoint folder",
              "rmt extend")
    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_a_resume_that_trains_on_differently_says_so_and_records_it(tmp_path):
    """The eleventh review: resume=auto took another placement, fact count or batch size without a word, and the
    rewritten recipe.yaml left no trace of what the earlier steps trained with."""
    out = tmp_path / "run"
    args = ["train", RECIPE, f"output_dir={out}", *FAST, "checkpoint.every=1", "-q"]
    assert run(args).exit_code == 0
    longer = "curriculum=[{segments: 1, steps: 3}]"
    r = run([*args, longer, "task.placement=spread", "batch_size=2", "resume=auto"])
    assert r.exit_code == 0, r.stderr
    [warning] = [line for line in r.stderr.splitlines() if line.startswith("warning: resume:")]
    assert "task.placement None -> 'spread'" in warning and "batch_size 4 -> 2" in warning
    assert "curriculum.0.steps 2 -> 3" in warning and "'segments'" not in warning  # the stage's one change alone
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    [resumed] = [e for e in events if e.get("event") == "resume"]
    assert resumed["step"] == 2 and resumed["changed"]["task.placement"] == [None, "spread"]
    assert [e["step"] for e in events if "event" not in e] == [1, 2, 3]
    # The same recipe again (resumed at its end: it writes final/ anew): nothing to say or record.
    r = run([*args, longer, "task.placement=spread", "batch_size=2", "resume=auto"])
    assert r.exit_code == 0 and "warning: resume" not in r.stderr, r.stderr
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "resume"] == [2]


# The eleventh review's low findings, left open then


def test_rmt_alone_prints_its_help_on_stderr():
    """`rmt` with no arguments is bad usage (exit 2): its help went to stdout, unlike every other usage error."""
    alone, asked = run([]), run(["--help"])
    assert alone.exit_code == 2 and alone.stdout == "" and "Usage" in alone.stderr
    assert asked.exit_code == 0 and asked.stderr == "" and asked.stdout.strip() == alone.stderr.strip()


def test_eval_refuses_a_generator_task_beside_a_babi_file(tmp_path, checkpoint):
    """`--task memorize --babi FILE` scored the file's stories without a word on the task given."""
    babi = tmp_path / "qa.txt"
    babi.write_text("1 Mary moved to the bathroom.\n2 John went to the hallway.\n3 Where is Mary? \tbathroom\t1\n")
    args = ["eval", "--model", checkpoint, "--babi", babi, "--lengths", "300", "--samples", "1", "-q", "--json"]
    one_error(run([*args, "--task", "memorize"]), 2, "--task memorize", f"--babi {babi}")
    alone, named = run(args), run([*args, "--task", "babi"])  # the file's stories, as before
    assert alone.exit_code == named.exit_code == 0 and json.loads(alone.stdout) == json.loads(named.stdout)


def test_a_forced_append_keeps_the_mix_of_models_detectable(tmp_path, tokenizer, make_model, checkpoint, memfile):
    """`--append OLD.st --model OTHER --force` wrote OTHER's fingerprint alone: the mix then passed as OTHER's memory
    (and OLD's model refused it as another's)."""
    other = save_tiny_checkpoint(tmp_path / "other", tokenizer, make_model, seed=1)
    more = tmp_path / "more.txt"
    more.write_text(TEXT)
    mixed, plain = tmp_path / "mixed.st", tmp_path / "plain.st"
    shutil.copy(memfile, mixed)
    shutil.copy(memfile, plain)
    one_error(run(["ingest", "--append", mixed, more, "--model", other, "-q"]), 2, "another model")
    r = run(["ingest", "--append", mixed, more, "--model", other, "--force", "-q"])
    assert r.exit_code == 0 and "forced_from" in r.stderr, r.stderr
    state, original = load_memory(mixed), load_memory(memfile)
    assert state.forced_from == original.fingerprint != state.fingerprint
    for model in (checkpoint, other):  # neither model takes the file for its own, and --force still reads it
        one_error(run(["ask", mixed, "Where is Mary?", "--model", model]), 2, "mixes two models")
        assert run(["ask", mixed, "Where is Mary?", "--model", model, "--force"]).exit_code == 0
        one_error(run(["ingest", "--append", mixed, more, "--model", model, "-q"]), 2, "mixes two models")
    assert run(["ingest", "--append", mixed, more, "--model", checkpoint, "--force", "-q"]).exit_code == 0
    assert load_memory(mixed).forced_from == original.fingerprint  # a mix stays one
    # An append by the file's own model records no mix.
    assert run(["ingest", "--append", plain, more, "--model", checkpoint, "-q"]).exit_code == 0
    assert load_memory(plain).forced_from == "" and "forced_from" not in safe_open(str(plain), "pt").metadata()


def test_the_api_default_model_writes_what_rmt_ingest_writes_quietly(tmp_path):
    """`default_model()` loaded the embedded model in float32 on transformers, showing transformers' loading bar,
    where `rmt ingest` runs it quietly in its saved bfloat16 on the native engine."""
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    code = ("import sys, torch; from rmt_cli import IngestJob, default_model, ingest; "
            "ingest([IngestJob(sys.argv[1], sys.argv[2])], default_model()); "
            "ingest([IngestJob(sys.argv[1], sys.argv[3])], default_model(torch.float32))")
    # As a user's script starts: without what rmt's commands (run in this process) set to quieten the libraries
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    proc = subprocess.run([sys.executable, "-c", code, str(doc), str(tmp_path / "api.st"), str(tmp_path / "f32.st")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert run(["ingest", doc, "-o", tmp_path / "cli.st", "-q"]).exit_code == 0
    api, cli = load_memory(tmp_path / "api.st"), load_memory(tmp_path / "cli.st")
    assert (api.dtype, api.fingerprint, api.tail_tokens) == (cli.dtype, cli.fingerprint, cli.tail_tokens)
    assert torch.equal(api.memory, cli.memory)
    assert load_memory(tmp_path / "f32.st").dtype == "float32"  # a dtype asked for is still the one used


@pytest.mark.parametrize("append", [False, True])
def test_an_interrupt_just_after_the_memory_file_is_replaced_reports_it_written(tmp_path, checkpoint, memfile,
                                                                               monkeypatch, append):
    """Ctrl-C landing after the rename, before the result was recorded, said "nothing written" of a written file.
    Interrupted just before the rename, the file is still the old one (or none), and that is what is said."""
    import rmt_cli.commands.ingest as ingest_module

    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    save = ingest_module.save_memory
    for saved in (False, True):
        out = tmp_path / f"{saved}.st"
        if append:
            shutil.copy(memfile, out)
        before = out.read_bytes() if append else None

        def save_then_stop(path, state):
            if saved:
                save(path, state)
            raise KeyboardInterrupt

        monkeypatch.setattr(ingest_module, "save_memory", save_then_stop)
        args = ["--append", out, doc] if append else [doc, "-o", out]
        r = run(["ingest", *args, "--model", checkpoint, "--json", "-q"])
        assert r.exit_code == 130, r.stderr
        report = json.loads(r.stdout)
        if saved:
            assert report["error"] is None and report["total_tokens"] == load_memory(out).tokens > 0
            assert "written whole before the interrupt" in r.stderr
        else:
            assert "nothing written" in report["error"] and r.stderr == "interrupted\n"
            assert (out.read_bytes() if append else out.exists()) == (before if append else False)


def test_a_resume_whose_checkpoint_recipe_does_not_load_says_what_it_cannot_compare(tmp_path):
    """A checkpoint's recipe.yaml that no longer validates (an older rmt's, or edited by hand) skipped the resume's
    comparison of recipes without a word."""
    out = tmp_path / "run"
    args = ["train", RECIPE, f"output_dir={out}", *FAST, "checkpoint.every=1", "-q"]
    assert run(args).exit_code == 0
    stored = out / "checkpoints" / "step-0000002" / "recipe.yaml"
    stored.write_text(stored.read_text() + "retired_setting: 1\n")
    r = run([*args, "curriculum=[{segments: 1, steps: 3}]", "batch_size=2", "resume=auto"])
    assert r.exit_code == 0, r.stderr
    [warning] = [line for line in r.stderr.splitlines() if line.startswith("warning: resume:")]
    assert "cannot be compared" in warning and "retired_setting: unknown key" in warning


# The seventh review (untuned, session 9): the sixth review's fixes under variations


def test_seventh_review_output_dir_variations_never_lose_a_users_files(tmp_path):
    out = tmp_path / "u1"
    out.mkdir()
    (out / "recipe.yaml").write_text("# my hand-written recipe\nseed: 1\n")
    one_error(run(["train", RECIPE, f"output_dir={out}", *FAST, "-q"]), 2, "holds recipe.yaml", "rmt did not write it")
    assert (out / "recipe.yaml").read_text().startswith("# my hand-written")
    base = tmp_path / "base"
    r = run(["train", RECIPE, f"output_dir={base}", *FAST, "-q"])
    assert r.exit_code == 0, r.stderr
    (base / "final" / "README.md").write_text("my notes on this model")  # a checkpoint with a file of one's own
    one_error(run(["train", RECIPE, f"output_dir={base}", *FAST, "resume=auto", "-q"]), 2, "holds final",
              "not a checkpoint rmt wrote")
    assert (base / "final" / "README.md").read_text() == "my notes on this model"
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    one_error(run(["train", RECIPE, f"output_dir={link}", *FAST, "-q"]), 2, "symbolic link to a folder that does "
              "not exist")


def test_a_run_that_diverges_on_its_last_step_saves_nothing(tmp_path):
    """Its own loss was finite; the step made the weights ~1e30, which the stage's evaluation shows."""
    out = tmp_path / "n3"
    one_error(run(["train", RECIPE, f"output_dir={out}", *FAST, "optim.lr=1e30",
                   "curriculum=[{segments: 1, steps: 1}]", "-q"]), 1, "training diverged at step 1")
    assert not (out / "final").exists() and not (out / "checkpoints").exists()
    assert "NaN" not in (out / "metrics.jsonl").read_text()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_a_full_disk_behind_standard_output_is_one_line_that_says_so(memfile, checkpoint, extra):
    """The tenth review's Y11: `rmt ask ... > /dev/full` said only "No space left on device"."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "rmt_cli", "ask", str(memfile), "Where is Mary?", "--model",
                               str(checkpoint), *extra], stdout=full, stderr=subprocess.PIPE, env=env, timeout=300)
    assert (proc.returncode, proc.stderr.decode()) == (1, "error: cannot write standard output: No space left on "
                                                          "device\n")


def test_training_goes_on_and_saves_when_its_stderr_is_closed(tmp_path):
    """The eleventh review: `rmt train … 2>&1 | head -c 20` ended the run at the first message after the reader
    left, before `final/` was saved, and exited 0. Messages now stop; the run saves and exits 0."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rmt_cli", "train", str(RECIPE), f"output_dir={out}", *FAST,
                             "curriculum=[{segments: 1, steps: 2}, {segments: 2, steps: 2}]"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    proc.stderr.read(20)
    proc.stderr.close()  # the reader goes away: every later message meets a broken pipe
    assert proc.wait(timeout=600) == 0
    assert (out / "final" / "model.safetensors").is_file()


def test_blank_question_lines_are_skipped_with_a_warning(memfile, checkpoint):
    """The tenth review: blank lines among the questions were skipped without a word, so a script pairing the
    answers with its input lines paired them wrong. A warning now says so; blank lines at the end say nothing."""
    r = run(["ask", memfile, "-", "--model", checkpoint], input="Where is Daniel?\n\nWhere is Mary?\n  \n\n")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2
    assert "warning: standard input: 1 blank line skipped" in r.stderr
    r = run(["ask", memfile, "-", "--model", checkpoint], input="Where is Daniel?\nWhere is Mary?\n\n")
    assert r.exit_code == 0 and "blank" not in r.stderr, r.stderr


def test_questions_from_stdin_are_answered_where_the_dash_stands(memfile, checkpoint):
    r = run(["ask", memfile, "Where is Daniel?", "-", "Where is John?", "--json", "--model", checkpoint],
            input="Where is Mary?\n")
    assert r.exit_code == 0, r.stderr
    assert [json.loads(line)["question"] for line in r.stdout.splitlines()] == [
        "Where is Daniel?", "Where is Mary?", "Where is John?"]
