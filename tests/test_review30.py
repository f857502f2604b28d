"""Session 17: what the twenty-ninth review left open (a subfolder of a repository, file names holding newlines,
links read twice, the final checkpoint's path, a memory that read nothing) and what the thirtieth to thirty-fifth
reviews (untuned) found; each test holds a fault, reproduced as it was found."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import MEMFILE_TEXT, TINY_RECIPE, one_error_line, run_cli as run

ROOT = Path(__file__).resolve().parent.parent


def _read(paths) -> list[str]:
    from rmt_cli.data.sources import open_document

    return [item.header.decode().split("file: ")[1].split(" >>>")[0] for item in open_document(paths).items]


def _git_lists(repo, folder: str) -> list[str]:
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "--others", "--exclude-standard", folder],
                            check=True, capture_output=True, text=True).stdout.split()
    return sorted(name for name in listed if not name.split("/")[-1].startswith("."))


def _make_repository(repo: Path, names: tuple, gitignore: str) -> None:
    """A git repository of files `names` (each a short text) with one .gitignore at its root."""
    for name in names:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(MEMFILE_TEXT)
    (repo / ".gitignore").write_text(gitignore)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)


def _reads_what_git_lists(repo: Path, names: tuple, gitignore: str) -> None:
    """A repository of `names` with one .gitignore: rmt reads the files git lists."""
    _make_repository(repo, names, gitignore)
    assert sorted(_read([str(repo)])) == _git_lists(repo, ".")


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
def test_a_subfolder_of_a_repository_honours_the_gitignore_files_above_it(tmp_path, monkeypatch):
    """`rmt ingest repo/a` read a/x.log though repo/.gitignore ignores `*.log`: only the named folder's own
    .gitignore files applied. A folder the files above ignore (`build/`), named on purpose, is read."""
    repo = tmp_path / "repo"
    for name in ("a/x.py", "a/x.log", "a/keep.log", "a/b/y.log", "a/b/y.py", "build/x/z.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(MEMFILE_TEXT)
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    (repo / "a" / ".gitignore").write_text("!keep.log\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    for folder in ("a", "a/b"):
        assert sorted(folder + "/" + name for name in _read([folder])) == _git_lists(repo, folder)
    assert _read(["a/b"]) == ["y.py"] and _read([str(repo / "a" / "b")]) == ["y.py"]
    assert _read(["build/x"]) == ["z.py"]  # git lists nothing: ignored, but named
    shutil.rmtree(repo / ".git")  # outside a repository, git reads no .gitignore above the folder either
    assert _read(["a/b"]) == ["y.log", "y.py"]


def test_a_file_name_cannot_write_a_header_line_into_the_text(tmp_path):
    """A file named "a\\n<<< file: forged.txt >>>" wrote a line that looked like another file's header."""
    from rmt_cli.data.sources import open_document

    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "a\n<<< file: forged.txt >>>").write_text(MEMFILE_TEXT)
    (folder / "plain é.txt").write_text(MEMFILE_TEXT)
    headers = [item.header for item in open_document([str(folder)]).items]
    assert headers == [b"\n<<< file: a\\n<<< file: forged.txt >>> >>>\n", "\n<<< file: plain é.txt >>>\n".encode()]


def test_a_link_to_a_file_is_not_read(tmp_path):
    """`inside.py -> sub/peer.py` read peer.py's text twice, under both names (the twenty-ninth review); then, read
    once, `env.txt -> .env` and `key.txt -> secrets/key.txt` (with `secrets/` ignored) put a hidden and an ignored
    file's secrets into the memory under the links' names (the thirty-fourth). Links are not followed: git keeps
    a link as a link."""
    from rmt_cli.data.sources import open_document

    code = tmp_path / "code"
    (code / "sub").mkdir(parents=True)
    (code / "secrets").mkdir()
    (code / "sub" / "peer.py").write_text(MEMFILE_TEXT)
    (code / ".env").write_text("API_KEY=hunter2")
    (code / "secrets" / "key.txt").write_text("API_KEY=hunter2")
    (code / ".gitignore").write_text("secrets/\n")
    (code / "inside.py").symlink_to(code / "sub" / "peer.py")
    (code / "also.py").symlink_to("sub/peer.py")
    (code / "env.txt").symlink_to(code / ".env")
    (code / "key.txt").symlink_to("secrets/key.txt")
    document = open_document([str(code)])
    assert _read([str(code)]) == ["sub/peer.py"]
    assert {str(code / n) for n in ("also.py", "env.txt", "inside.py", "key.txt")} <= set(document.skipped)


def test_train_prints_its_final_checkpoint_on_stdout(tmp_path):
    """`rmt train` said `checkpoint: PATH` on stderr only: `ckpt=$(rmt train r.yaml)` got nothing."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run")}))
    r = run(["train", recipe, "-q"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{tmp_path / 'run' / 'final'}\n" and "checkpoint:" not in r.stderr
    closed = subprocess.run([sys.executable, "-m", "rmt_cli", "train", str(recipe), "-q",
                             f"output_dir={tmp_path / 'closed'}"], stdout=subprocess.DEVNULL, capture_output=False,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    assert closed.returncode == 0 and (tmp_path / "closed" / "final" / "rmt.json").is_file(), closed.stderr


def test_asking_a_memory_that_read_nothing_warns(checkpoint, tmp_path):
    """`rmt ask` of the memory of an empty input answered without a word."""
    (tmp_path / "empty.txt").write_text("")
    mem = tmp_path / "m.st"
    assert run(["ingest", tmp_path / "empty.txt", "-o", mem, "--model", checkpoint, "-q"]).exit_code == 0
    r = run(["ask", mem, "Where is Mary?", "--model", checkpoint])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1
    assert "warning: " in r.stderr and "read no text (0 tokens)" in r.stderr


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
@pytest.mark.parametrize("lines", ["*/\n!a/\n", "**/\n!a/\n", "a/*\n!a/b/\n", "a/**\n!a/b/\n", "b\n!a/c/b/\n",
                                   "a/**/\n", "a/**/\n!a/b/\n"])
def test_a_folder_is_judged_by_the_lines_that_name_it_not_a_folder_above(tmp_path, lines):
    """`*/` then `!a/`: git ignores a/b/ (`!a/` names the folder a alone); rmt read a/b/y.py, as pathspec matches
    `!a/` against everything under a."""
    _reads_what_git_lists(tmp_path / "repo", ("top.py", "a/x.py", "a/b/y.py", "a/b/c/z.py", "a/c/b/m.py", "b/q.py"),
                          lines)


def test_the_exported_final_segment_builder_raises_usage_errors():
    """`build_final_segment(..., 0)` raised a bare ValueError, where the rest of the API raises UsageError (left open
    by the thirteenth review); a segment size of "3" was compared with ints."""
    from rmt_cli import UsageError, build_final_segment

    for size in (0, -2, "3", 2.0):
        with pytest.raises(UsageError, match="segment_size"):
            build_final_segment([], [1], [], size)
    with pytest.raises(UsageError, match="question takes 50 tokens"):
        build_final_segment([], [1] * 50, [], 10)
    with pytest.raises(ValueError):  # still the ValueError it was
        build_final_segment([], [1] * 50, [], 10)


@pytest.mark.parametrize("setting, words", [({"dtype": "bogus"}, "config.json: dtype 'bogus' is not a torch dtype"),
                                            ({"torch_dtype": 3}, "config.json: torch_dtype 3 is not a torch dtype"),
                                            ({"pad_token_id": 5000}, "Padding_idx must be within num_embeddings")])
def test_the_native_engine_runs_no_config_transformers_refuses(tmp_path, setting, words):
    """The embedded model's config.json with `dtype: "bogus"` or `pad_token_id: 5000` (past its vocabulary of
    1,024) ingested on the native engine, exit 0, where transformers refuses both (left open by the twenty-third
    review)."""
    import json

    from rmt_cli.storage.assets import DEFAULT_MODEL_DIR

    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **setting}))
    (tmp_path / "doc.txt").write_text(MEMFILE_TEXT)
    one_error_line(run(["ingest", tmp_path / "doc.txt", "-o", tmp_path / "m.st", "--model", folder, "-q"]), 2, words)
    assert not (tmp_path / "m.st").exists()


def test_the_hub_librarys_retries_are_not_said_while_a_dataset_loads(caplog):
    """Offline without HF_DATASETS_OFFLINE, `task.noise.kind: dataset` printed a dozen lines of the hub library's
    retries ("... thrown while requesting HEAD ...", "Retrying in 1s [Retry 1/5].") before rmt's one error line."""
    from huggingface_hub.utils import logging as hub_logging

    from rmt_cli.commands.samples import _hub_retries_unsaid

    retrying = hub_logging.get_logger("huggingface_hub.utils._http")
    hub_logging.set_verbosity_warning()  # the library's default, whatever an earlier test left
    with caplog.at_level("WARNING"):
        with _hub_retries_unsaid():
            retrying.warning("Retrying in 1s [Retry 1/5].")
        retrying.warning("Retrying in 2s [Retry 2/5].")  # the library's own level again after it
    assert [r.getMessage() for r in caplog.records] == ["Retrying in 2s [Retry 2/5]."]


# --- the thirtieth review (a shell user's and an input attacker's pass: codebases, pipelines, ask) ----------------


def test_an_unreadable_subfolder_is_said_and_an_unreadable_gitignore_refused(tmp_path, checkpoint, monkeypatch):
    """A `chmod 000` subfolder was dropped without a word (exit 0, no warning); an unreadable .gitignore was dropped
    too, so the secret file it ignores was read into the memory. (Permission is denied here by the functions that
    meet it, so that the test holds when run as root, who may read anything.)"""
    code = tmp_path / "code"
    (code / "sub").mkdir(parents=True)
    (code / "ok.txt").write_text(MEMFILE_TEXT)
    (code / "sub" / "f.txt").write_text(MEMFILE_TEXT)
    scandir, read_bytes = os.scandir, Path.read_bytes

    def unlistable(path="."):
        if os.fspath(path) == str(code / "sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    def unreadable(self):
        if self.name == ".gitignore":
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(os, "scandir", unlistable)
    r = run(["ingest", code, "-o", tmp_path / "m.st", "--model", checkpoint, "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["skipped"] == [str(code / "sub") + "/"] and "code/sub/" in summary["warnings"][0]
    (code / ".gitignore").write_text("*.secret\n")
    (code / "a.secret").write_text("API_KEY=hunter2")
    monkeypatch.setattr(Path, "read_bytes", unreadable)
    r = run(["ingest", code, "-o", tmp_path / "n.st", "--model", checkpoint, "-q"])
    one_error_line(r, 2, f"{code / '.gitignore'}: cannot read it (Permission denied)")
    assert not (tmp_path / "n.st").exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
@pytest.mark.parametrize("lines", ["nested/**\n!nested/ok.txt\n", "\ufeff*.log\n", "a/**\n!a/b/\n!a/b/**\n",
                                   "a/**\n!a/**/\n!a/**/*.py\n"])
def test_what_is_inside_a_folder_can_be_kept_and_a_byte_order_mark_is_no_rule(tmp_path, lines):
    """`nested/**` then `!nested/ok.txt`: git keeps nested/ok.txt (`nested/**` names what is inside, not the
    folder), rmt dropped the folder; a .gitignore starting with a byte order mark lost its first rule."""
    _reads_what_git_lists(tmp_path / "repo", ("top.txt", "a.log", "nested/ok.txt", "nested/no.txt", "a/x.py",
                                              "a/b/y.py"), lines)


def test_a_name_that_is_not_utf8_is_valid_unicode_in_the_memory_files_sources(tmp_path, checkpoint):
    """A file named `x\\xe9.txt` was written into the memory file's `sources` as JSON's lone-surrogate escape
    (which jq reads as U+FFFD and strict parsers refuse), where --json writes the text `\\udce9`."""
    from rmt_cli import load_memory

    name = os.fsdecode(b"x\xe9.txt")
    (tmp_path / name).write_text(MEMFILE_TEXT)
    mem = tmp_path / "m.st"
    r = run(["ingest", tmp_path / name, "-o", mem, "--model", checkpoint, "-q"])
    assert r.exit_code == 0, r.stderr
    [source] = load_memory(mem).sources
    assert source["name"] == str(tmp_path / "x\\udce9.txt")
    source["name"].encode("utf-8")  # valid Unicode: no lone surrogate


def test_an_input_ending_inside_a_character_is_not_called_empty(tmp_path, checkpoint):
    """`printf '\\xe2\\x82'`: "the input is empty" beside `bytes: 2`."""
    (tmp_path / "partial.txt").write_bytes(b"\xe2\x82")
    r = run(["ingest", tmp_path / "partial.txt", "-o", tmp_path / "p.st", "--model", checkpoint, "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    [warning] = json.loads(r.stdout)["warnings"]
    assert warning.startswith("the input ends inside a UTF-8 character (2 bytes kept for an --append to finish)")
    assert run(["ingest", "--append", tmp_path / "p.st", "-", "--model", checkpoint, "-q"],
               input=b"\xac is a euro sign.").exit_code == 0


# --- the thirty-first review (the Python API, checkpoints, recipes, training, eval) --------------------------------


@pytest.mark.parametrize("file, setting, words", [
    ("config.json", {"activation_function": "bogus"},
     "cannot load the model: config.json holds 'bogus', a name transformers has no entry for"),
    ("config.json", {"n_head": 0}, "(a size or count of 0 in config.json?)"),
    ("tokenizer_config.json", {"eos_token": "<nonexistent>"},
     "could not be looked up: '<nonexistent>'; a special token that tokenizer_config.json names and tokenizer.json "
     "lacks is added past the vocabulary"),
])
def test_a_checkpoint_error_says_which_setting_is_likely_wrong(tmp_path, checkpoint, file, setting, words):
    """Raw library text that named no setting: "cannot load the model: 'bogus'", "integer division or modulo by
    zero", "the tokenizer has ids up to 512, but the model's embedding has 512 rows" (why not said)."""
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    values = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**values, **setting}))
    (tmp_path / "doc.txt").write_text(MEMFILE_TEXT)
    one_error_line(run(["ingest", tmp_path / "doc.txt", "-o", tmp_path / "m.st", "--model", folder, "-q"]), 2, words)


def test_nul_bytes_in_noise_and_training_text_are_said(tmp_path):
    """NUL bytes after a text beginning in `--noise` or a recipe's text files were read without a word, where ingest
    warns of them (left open by the twenty-third review)."""
    noisy = tmp_path / "noise.txt"
    noisy.write_bytes(("The sun rose over the hills. " * 400).encode() + b"\0" * 3 + b" More text follows here.")
    r = run(["eval", "--noise", noisy, "--lengths", "200", "--samples", "2", "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    assert f"warning: --noise: 3 NUL bytes in {noisy}, read as text after a text beginning" in r.stderr
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run"),
                                      "task": {"noise": {"kind": "files", "paths": [str(noisy)]}}}))
    r = run(["train", recipe, "-q"])
    assert r.exit_code == 0, r.stderr
    assert f"warning: task.noise.paths: 3 NUL bytes in {noisy}" in r.stderr


# --- the thirty-second review (the changes above as a user tries them, and their neighbours) -----------------------


@pytest.mark.parametrize("value", ["x", [1]])
def test_a_model_max_length_that_is_no_number_is_one_line(tmp_path, value):
    """`"model_max_length": "x"` in tokenizer_config.json: a traceback from inside transformers' encode (TypeError:
    '>' not supported between 'int' and 'str'), exit 1, in ingest, ask and perplexity."""
    from rmt_cli.storage.assets import DEFAULT_MODEL_DIR

    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": value}))
    (tmp_path / "doc.txt").write_text(MEMFILE_TEXT)
    for args in (["ingest", tmp_path / "doc.txt", "-o", tmp_path / "m.st"], ["perplexity", tmp_path / "doc.txt"]):
        one_error_line(run([*args, "--model", folder, "-q"]), 2, "tokenizer_config.json: model_max_length",
                       "is not a number")


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
def test_a_repository_inside_the_folder_is_read_by_its_own_ignore_files(tmp_path):
    """A repository inside the ingested folder was read under the outer .gitignore files (git reads it by its own);
    .git/info/exclude was not read."""
    outer = tmp_path / "outer"
    for name in ("a.txt", "b.txt", "x.log", "inner/f.txt", "inner/y.log", "inner/z.tmp", "inner/w.txt"):
        (outer / name).parent.mkdir(parents=True, exist_ok=True)
        (outer / name).write_text(MEMFILE_TEXT)
    (outer / ".gitignore").write_text("*.log\n")
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    subprocess.run(["git", "init", "-q", str(outer / "inner")], check=True)
    (outer / "inner" / ".gitignore").write_text("*.tmp\n")
    (outer / ".git" / "info").mkdir(exist_ok=True)
    (outer / ".git" / "info" / "exclude").write_text("b.txt\n")
    (outer / "inner" / ".git" / "info").mkdir(exist_ok=True)
    (outer / "inner" / ".git" / "info" / "exclude").write_text("w.txt\n")
    assert _read([str(outer)]) == ["a.txt", "inner/f.txt", "inner/y.log"]
    inner_by_git = _git_lists(outer / "inner", ".")
    assert ["inner/" + name for name in inner_by_git] == ["inner/f.txt", "inner/y.log"]
    assert _read([str(outer / "inner")]) == inner_by_git
    assert _git_lists(outer, ".") == ["a.txt", "inner/"]  # the inner repository one entry: its files its own


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
def test_a_subfolder_named_through_a_link_honours_its_repository(tmp_path):
    """`rmt ingest linksrc` (a link to repo/src) read the b.log that repo/.gitignore ignores."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "src" / "a.txt").write_text(MEMFILE_TEXT)
    (repo / "src" / "b.log").write_text("a secret")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (tmp_path / "linksrc").symlink_to(repo / "src")
    assert _read([str(tmp_path / "linksrc")]) == _read([str(repo / "src")]) == ["a.txt"]


def test_a_subfolder_listed_but_not_entered_is_skipped_not_blamed_on_the_folder(tmp_path, monkeypatch):
    """A subfolder of mode 644 (its names listed, nothing in it looked at) stopped the whole ingest with "ur3: cannot
    read (Permission denied)", naming the folder given. (Permission is denied here by the function that meets it, so
    that the test holds when run as root.)"""
    from rmt_cli.data.sources import open_document

    code = tmp_path / "ur3"
    (code / "noexec").mkdir(parents=True)
    (code / "a.txt").write_text(MEMFILE_TEXT)
    (code / "noexec" / "c.txt").write_text(MEMFILE_TEXT)
    is_file = Path.is_file

    def not_entered(self):
        if self.parent == code / "noexec":
            raise PermissionError(13, "Permission denied", str(self))
        return is_file(self)

    monkeypatch.setattr(Path, "is_file", not_entered)
    document = open_document([str(code)])
    assert [item.name for item in document.items] == [str(code / "a.txt")]
    assert document.skipped == [str(code / "noexec") + "/"]


def test_file_names_are_escaped_unambiguously_in_headers():
    """A name holding a backslash and an n had the header of a name holding a newline; U+2028 was written raw."""
    from rmt_cli.data.sources import file_header

    headers = [file_header(name) for name in ("new\nline.txt", "new\\nline.txt", "l\u2028s.txt", "caf\udce9.txt")]
    assert len(set(headers)) == 4
    assert headers[2] == b"\n<<< file: l\\u2028s.txt >>>\n" and headers[3] == b"\n<<< file: caf\\udce9.txt >>>\n"


def test_a_text_ending_inside_a_character_is_said(checkpoint, tmp_path):
    """`printf 'abc\\xe2\\x82' | rmt ingest -`: the two bytes held back without a word."""
    r = run(["ingest", "-", "-o", tmp_path / "m.st", "--model", checkpoint, "--json", "-q"],
            input=b"Mary went to the kitchen. abc\xe2\x82")
    assert r.exit_code == 0 and json.loads(r.stdout)["warnings"] == [
        "the input ends inside a UTF-8 character (2 bytes kept for an --append to finish)"]


def test_no_attention_heads_is_said_with_its_likely_reason(tmp_path):
    """`num_attention_heads: 0`: "config.json: integer modulo by zero", without the hint `n_head: 0` gets."""
    from rmt_cli.storage.assets import DEFAULT_MODEL_DIR

    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_attention_heads": 0}))
    (tmp_path / "doc.txt").write_text(MEMFILE_TEXT)
    one_error_line(run(["ingest", tmp_path / "doc.txt", "-o", tmp_path / "m.st", "--model", folder, "-q"]), 2,
                   "config.json: integer modulo by zero (a size or count of 0 in config.json?)")


# --- the thirty-third review (a new user's pass over the README, then a pipeline author's) --------------------------


def test_a_recipes_number_forms_are_reported_with_its_other_errors(tmp_path):
    """`seed: 010`, `memory.segment_size: 1:00`, a misspelt key and a bad task name: the three numbers were said
    first, the misspelt key and the task only once they were fixed."""
    from rmt_cli import UsageError, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 010\nbatch_sise: 4\ntask: {name: bogus}\ntokenizer: {kind: bpe}\n"
                      "memory: {segment_size: 1:00}\n010: x\ncurriculum: [{segments: 1, steps: 5}]\n")
    with pytest.raises(UsageError) as caught:
        load_recipe(recipe)
    lines = str(caught.value).splitlines()
    assert len(lines) == 5 and all(line.startswith(f"{recipe}: ") for line in lines)
    said = "\n".join(lines)
    for words in ("seed: a leading 0 makes YAML read 010 as octal 8", "memory.segment_size: YAML reads 1:00 as a "
                  "base-60 number, 60", "010: (a key) a leading 0", "task.name: Input should be",
                  "batch_sise: unknown key; did you mean 'batch_size'?"):
        assert words in said, said


# --- the thirty-fifth review (recipes, training's output, the API, kill and resume) --------------------------------


@pytest.mark.parametrize("text, words", [("1:30.5", "YAML reads 1:30.5 as a base-60 number, 90.5: write 90.5"),
                                         ("1_0.5", "YAML drops the underscores of 1_0.5 and reads 10.5")])
def test_floats_in_yaml_1_1_forms_are_refused_not_misread(tmp_path, text, words):
    """`lr: 1:30.5` trained at a rate of 90.5 (and diverged); `weight_decay=1_0.5` trained with 10.5, exit 0."""
    from rmt_cli import UsageError, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"tokenizer: {{kind: bpe}}\noptim: {{lr: {text}}}\ncurriculum: [{{segments: 1, steps: 5}}]\n")
    with pytest.raises(UsageError, match=re.escape(f"{recipe}: optim.lr: {words}")):
        load_recipe(recipe)
    with pytest.raises(UsageError, match=re.escape(f"override 'optim.weight_decay={text}': {words}")):
        load_recipe(recipe, ["optim.lr=3.0e-4", f"optim.weight_decay={text}"])
    assert load_recipe(recipe, ["optim.lr=3.0e-4", "optim.weight_decay=.5"]).optim.weight_decay == 0.5


@pytest.mark.parametrize("override", ["curriculum.01.steps=3", "curriculum.\u00b2.steps=3", "eval.segments.9=3"])
def test_a_list_item_is_named_in_plain_decimal(override):
    """`curriculum.01.steps=3` set stage 1 without a word (where 010 is refused); `curriculum.².steps` passed
    str.isdigit() and would have failed in int()."""
    from rmt_cli import UsageError, load_recipe

    with pytest.raises(UsageError) as caught:
        load_recipe(ROOT / "recipes" / "memorize-tiny.yaml", [override])
    path = override.split("=")[0].rsplit(".", 1)[0] if "steps" in override else override.split("=")[0]
    assert f"{path} is not an item of the list (0 to " in str(caught.value)


def test_the_final_segment_builder_checks_its_token_lists():
    """`build_final_segment(None, ...)` raised a bare TypeError; a string, floats or a tensor were taken as ids."""
    import torch

    from rmt_cli import UsageError, build_final_segment

    for args, name in ((None, [1], [2]), "tail"), (([1], 5, [2]), "question"), (([1], [2], None), "answer"), \
                      (("abc", [1], [2]), "tail"), (([1.5], [1], [2]), "tail"), ((torch.tensor([1]), [1], [2]), "tail"):
        with pytest.raises(UsageError, match=f"^{name}: a list of token ids"):
            build_final_segment(*args, 32)
    assert build_final_segment((1, 2), [3], [4], 32).input_ids == [1, 2, 3, 4]


def test_the_api_names_the_model_argument_and_takes_progress_as_a_bool(checkpoint, tmp_path):
    """`perplexity(..., baseline="x")` said "a LoadedModel ... is needed, not str" without naming the argument;
    `train(recipe, progress="no")` showed the bars."""
    from rmt_cli import UsageError, load_checkpoint, load_recipe, perplexity, train

    (tmp_path / "doc.txt").write_text(MEMFILE_TEXT)
    model = load_checkpoint(checkpoint)
    with pytest.raises(UsageError, match="^baseline: a LoadedModel"):
        perplexity([tmp_path / "doc.txt"], model, baseline="x")
    with pytest.raises(UsageError, match="^model: a LoadedModel"):
        perplexity([tmp_path / "doc.txt"], None)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(tmp_path / "run")}))
    with pytest.raises(UsageError, match="^progress: True or False, not str"):
        train(load_recipe(recipe), progress="no")
    assert not (tmp_path / "run").exists()


def test_binary_files_skipped_in_a_noise_folder_are_said(tmp_path):
    """A binary file in a `task.noise.paths` folder was skipped without a word (ingest names what it skips); `rmt eval
    --noise` of a binary file said its error without the `--noise:` its warnings carry."""
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "a.txt").write_text("The sun rose over the hills. " * 100)
    (noise / "b.bin").write_bytes(b"a\0b text\n")
    r = run(["eval", "--noise", noise, "--lengths", "200", "--samples", "2", "--json", "-q"])
    assert r.exit_code == 0, r.stderr
    assert f"warning: --noise: 1 hidden, ignored, binary or unreadable files or folders skipped: {noise / 'b.bin'}" \
        in r.stderr
    one_error_line(run(["eval", "--noise", noise / "b.bin", "--lengths", "200", "--samples", "2", "--json", "-q"]), 2,
                   f"--noise: {noise / 'b.bin'}: looks like a binary file")


# --- the thirty-fourth review (the folder walk against git, crafted checkpoint files) ------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
def test_an_empty_git_folder_or_a_dangling_git_file_makes_no_repository(tmp_path):
    """An empty `vendor/.git` folder, or a `.git` file naming no folder, turned off the outer .gitignore below it:
    vendor/prod.env, which git ignores, was read."""
    repo = tmp_path / "repo"
    _make_repository(repo, ("a.txt", "vendor/lib.txt", "vendor/prod.env", "other/x.txt", "other/y.env"), "*.env\n")
    (repo / "vendor" / ".git").mkdir()
    (repo / "other" / ".git").write_text("gitdir: ../nowhere\n")
    assert _read([str(repo)]) == ["a.txt", "other/x.txt", "vendor/lib.txt"]
    assert _read([str(repo / "vendor")]) == ["lib.txt"]


def test_a_gitignore_line_is_cut_at_newlines_alone_and_matches_names_that_are_not_utf8(tmp_path):
    """`n\\x85*.txt` (U+0085 inside a line, as git reads it) was cut into `n` and `*.txt`, which skipped every .txt
    file; a line of bytes that are not UTF-8 (`caf\\xe9.txt`) never matched its file."""
    folder = tmp_path / "code"
    folder.mkdir()
    for name in ("a.txt", "n", os.fsdecode(b"caf\xe9.txt")):
        (folder / name).write_text(MEMFILE_TEXT)
    (folder / ".gitignore").write_bytes("n\u0085*.txt\n".encode() + b"caf\xe9.txt\n")
    assert _read([str(folder)]) == ["a.txt", "n"]


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
def test_a_folder_named_on_purpose_keeps_the_repositorys_other_lines(tmp_path):
    """`rmt ingest repo/build` (build/ ignored, so named on purpose) read build/db.secret though `*.secret` ignores
    it: every line above was dropped, not only the one that ignores the folder."""
    repo = tmp_path / "repo"
    _make_repository(repo, ("build/out.txt", "build/db.secret", "build/sub/more.txt"), "build/\n*.secret\n")
    assert _read([str(repo / "build")]) == ["out.txt", "sub/more.txt"]


def test_a_gitignore_that_is_a_link_is_not_followed(tmp_path):
    """A .gitignore that is a link was read (git does not follow one; it may name any file)."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "a.txt").write_text(MEMFILE_TEXT)
    (tmp_path / "elsewhere").write_text("*.txt\n")
    (folder / ".gitignore").symlink_to(tmp_path / "elsewhere")
    assert _read([str(folder)]) == ["a.txt"]


def test_missing_data_files_and_unknown_model_settings_are_said_with_the_recipes_errors(tmp_path):
    """`seed: 010` beside `task.lm_paths=[nope.txt]` and `model.config.n_embdd=64`: three rounds (the number, then
    the file, then the model's key), the later ones naming neither the file nor the override."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text((ROOT / "recipes" / "memorize-tiny.yaml").read_text().replace("seed: 0", "seed: 010"))
    r = run(["train", recipe, f"output_dir={tmp_path / 'run'}", "task.name=lm", "task.lm_paths=[nope.txt]",
             "model.config.n_embdd=64", "-q"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 3, r.stderr
    assert f"error: {recipe} (override task.lm_paths=[nope.txt]): task.lm_paths.0: nope.txt: no such file or " \
           f"folder (relative paths are read from the current folder)" in lines
    assert any(line.startswith(f"error: {recipe} (override model.config.n_embdd=64): model.config.n_embdd: not a "
                               f"setting of gpt2 models") for line in lines)
    assert any("seed: a leading 0" in line for line in lines) and not (tmp_path / "run").exists()


# --- the thirty-sixth review (the last fixes, as an attacker tries them) --------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
def test_a_subfolder_named_under_the_allow_list_idiom_reads_what_git_lists(tmp_path):
    """`*`, `!*/`, `!*.py` at the root and `rmt ingest A/src`: `*` names src/ too, and dropping it (as a line that
    ignores the named folder) read src/secret.env; `!*/` means git never ignores src/."""
    repo = tmp_path / "A"
    _make_repository(repo, ("src/app.py", "src/secret.env", "top.py"), "*\n!*/\n!*.py\n")
    assert _read([str(repo / "src")]) == ["app.py"] == [n.split("/", 1)[1] for n in _git_lists(repo, "src")]


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
@pytest.mark.parametrize("fake", ["gitdir: .\n", "head only"])
def test_a_fake_git_makes_no_repository(tmp_path, fake):
    """A `.git` file saying `gitdir: .`, or a `.git/` holding only HEAD, made a repository of its folder: the
    parent's `*.key` stopped applying and sub/id.key was read."""
    repo = tmp_path / "repo"
    _make_repository(repo, ("a.txt", "sub/b.txt", "sub/id.key"), "*.key\n")
    if fake == "head only":
        (repo / "sub" / ".git").mkdir()
        (repo / "sub" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    else:
        (repo / "sub" / ".git").write_text(fake)
    assert _read([str(repo)]) == ["a.txt", "sub/b.txt"]
    assert _read([str(repo / "sub")]) == ["b.txt"]


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
def test_a_worktree_reads_its_repositorys_exclude_list(tmp_path):
    """A worktree's `.git` file names a folder under the main repository's .git; git reads the main repository's
    info/exclude there, rmt read none (Cwt/secret.txt ingested)."""
    main = tmp_path / "main"
    main.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(main)]
    subprocess.run(["git", "init", "-q", str(main)], check=True)
    (main / "kept.txt").write_text(MEMFILE_TEXT)
    subprocess.run([*git, "add", "kept.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    subprocess.run([*git, "worktree", "add", "-q", str(tmp_path / "wt")], check=True)
    (main / ".git" / "info").mkdir(exist_ok=True)
    (main / ".git" / "info" / "exclude").write_text("secret.txt\n")
    (tmp_path / "wt" / "secret.txt").write_text("API_KEY=hunter2")
    (tmp_path / "wt" / "new.txt").write_text(MEMFILE_TEXT)
    assert _git_lists(tmp_path / "wt", ".") == ["new.txt"]
    assert _read([str(tmp_path / "wt")]) == ["kept.txt", "new.txt"]


def test_data_paths_a_run_does_not_read_are_not_checked(tmp_path):
    """`rmt train recipes/qa1-books.yaml task.noise.kind=synthetic` was refused for the seven book paths that
    synthetic noise never reads; a data path that is a broken link was missed by the check."""
    from rmt_cli import UsageError, load_recipe

    recipe = load_recipe(ROOT / "recipes" / "qa1-books.yaml", ["task.noise.kind=synthetic"], check_inputs=True)
    assert recipe.task.noise.kind == "synthetic"
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="task.noise.paths.0: .*broken: a broken symbolic link"):
        load_recipe(ROOT / "recipes" / "memorize-tiny.yaml", ["task.noise.kind=files",
                                                              f"task.noise.paths=[{tmp_path / 'broken'}]"],
                    check_inputs=True)
    # without check_inputs (the API's default) a recipe whose data is on another machine loads
    assert load_recipe(ROOT / "recipes" / "memorize-tiny.yaml", ["task.noise.kind=files",
                                                                 f"task.noise.paths=[{tmp_path / 'broken'}]"])
