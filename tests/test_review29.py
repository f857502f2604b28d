"""The twenty-ninth review (untuned, session 16: a broad pass over the whole product): each test holds a fault it
found, reproduced as it was found."""

import shutil
import subprocess

import pytest

from conftest import MEMFILE_TEXT, one_error_line, run_cli as run


def test_memory_files_given_as_questions_are_refused(checkpoint, memfile, tmp_path, monkeypatch):
    """`rmt ask mems/*.st "Where is Daniel?"` answered three lines from the first file, the other files' names
    asked as questions of it, exit 0: a line that looked like p1.st's answer was p0.st's."""
    shutil.copy(memfile, tmp_path / "p1.st")
    r = run(["ask", memfile, tmp_path / "p1.st", "Where is Mary?", "--model", checkpoint])
    one_error_line(r, 2, f"{tmp_path / 'p1.st'} is a memory file, given as a question")
    assert r.stdout == ""
    (tmp_path / "Mary").write_text("a file of the question's name is no memory file")
    monkeypatch.chdir(tmp_path)
    assert run(["ask", memfile, "Mary", "--model", checkpoint]).exit_code == 0


def test_memory_dash_says_a_memory_file_comes_from_its_path(checkpoint, memfile):
    """`rmt ask - "Q" < mem.st`: "-: no such memory file"."""
    one_error_line(run(["ask", "-", "Where is Mary?", "--model", checkpoint]), 2, "memory -: a memory file is read "
                                                                                  "from its path")


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
def test_a_deeper_gitignore_can_keep_what_a_higher_one_ignores(tmp_path):
    """`*.tmp` at the root and `!x.tmp` in a/.gitignore: git keeps a/x.tmp, rmt skipped it (the first matching
    .gitignore decided, not the deepest)."""
    from rmt_cli.data.sources import open_document

    repo = tmp_path / "repo"
    for name, text in {".gitignore": "*.tmp\n*.log\n", "a/.gitignore": "!x.tmp\n", "a/x.tmp": "kept",
                       "a/y.tmp": "ignored", "top.tmp": "ignored", "logs/.gitignore": "!keep.log\n",
                       "logs/keep.log": "kept", "logs/other.log": "ignored", "a/b/x.tmp": "kept too"}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text + MEMFILE_TEXT)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "--others", "--exclude-standard"], check=True,
                            capture_output=True, text=True).stdout.split()
    by_git = sorted(name for name in listed if not name.split("/")[-1].startswith("."))
    read = sorted(item.header.decode().split("file: ")[1].split(" >>>")[0] for item in open_document([str(repo)]).items)
    assert read == by_git and "a/x.tmp" in read and "top.tmp" not in read


def test_a_sampled_answer_does_not_depend_on_the_questions_before_it(checkpoint, memfile):
    """With `--temperature 5 --seed 3`, "Where is Mary?" asked before "Where is Daniel?" got the answer Daniel gets
    alone: one generator, drawn in order."""
    import json

    def answers(*questions):
        r = run(["ask", memfile, *questions, "--model", checkpoint, "--temperature", "5", "--seed", "3", "--json"])
        assert r.exit_code == 0, r.stderr
        return [json.loads(line)["answer"] for line in r.stdout.splitlines()]

    alone = answers("Where is Mary?") + answers("Where is Daniel?")
    assert answers("Where is Mary?", "Where is Daniel?") == alone
    assert answers("Where is Daniel?", "Where is Mary?") == alone[::-1]


@pytest.mark.skipif(shutil.which("git") is None, reason="compares with git")
def test_the_allow_list_gitignore_idiom_keeps_subfolders(tmp_path):
    """`*`, `!*/`, `!*.py`: git reads every .py file at any depth; rmt read top.py only, every subfolder lost."""
    from rmt_cli.data.sources import open_document

    repo = tmp_path / "repo"
    for name in ("top.py", "notes.txt", "src/a.py", "src/b.txt", "src/deep/c.py", "build/out.txt"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(MEMFILE_TEXT)
    (repo / ".gitignore").write_text("*\n!*/\n!*.py\n!.gitignore\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "--others", "--exclude-standard"], check=True,
                            capture_output=True, text=True).stdout.split()
    by_git = sorted(name for name in listed if not name.split("/")[-1].startswith("."))
    read = sorted(item.header.decode().split("file: ")[1].split(" >>>")[0] for item in open_document([str(repo)]).items)
    assert read == by_git == ["src/a.py", "src/deep/c.py", "top.py"]
