"""The package's folders are its layers, and no import runs back up one:
base (errors, atomic, progress) -> core -> data -> storage -> commands -> cli -> __main__ (the entry point)."""

import ast
from pathlib import Path

import rmt_cli

PACKAGE = Path(rmt_cli.__file__).parent
RANK = {"errors": 0, "atomic": 0, "progress": 0, "distributed": 0, "core": 1, "data": 2, "storage": 3, "commands": 4, "cli": 5, "__main__": 6}


def layer_of(module: str) -> str:
    """'rmt_cli.storage.memfile' -> 'storage'; 'rmt_cli.errors' -> 'errors'."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def imports_of(path: Path, module: str) -> list[str]:
    """Every rmt_cli module that `path` (the module named `module`) imports, at the top or inside a function."""
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target == "rmt_cli":  # `from .. import __version__`
                continue
            if target.startswith("rmt_cli."):
                found.append(target)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("rmt_cli.")]
    return found


def test_every_module_sits_in_a_known_layer():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" or "assets" in path.parts:
            continue
        name = module_name(path)
        assert layer_of(name) in RANK, f"{name}: put it in a layer folder (or add the layer to RANK)"


def test_no_import_runs_back_up_a_layer():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" or "assets" in path.parts:
            continue
        name = module_name(path)
        for target in imports_of(path, name):
            if RANK[layer_of(target)] > RANK[layer_of(name)]:
                upward.append(f"{name} imports {target}")
    assert not upward, upward


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check above can fail: a core module importing a command, relatively or not, is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("from ..commands.ingest import ingest\n\ndef f():\n    import rmt_cli.cli\n")
    targets = imports_of(probe, "rmt_cli.core.probe")
    assert targets == ["rmt_cli.commands.ingest", "rmt_cli.cli"]
    assert all(RANK[layer_of(t)] > RANK["core"] for t in targets)


def test_the_public_api_is_stable():
    from rmt_cli import MemoryCell, RecurrentMemoryModel, Recipe, RMTError, UsageError, load_recipe  # noqa: F401


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's Python API example, taken from the README and run in a folder holding a book.txt."""
    import re

    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    book = "Daniel went to the kitchen. " + "The rain fell on the old town all night long. " * 60
    (tmp_path / "book.txt").write_text(book)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    answer = capsys.readouterr().out.strip()
    assert answer and (tmp_path / "mem.st").is_file()
