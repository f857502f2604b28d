"""Writing files and folders so that a reader (or a kill) never sees half of one: write under a temporary name
beside the target, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def make_ordinary(path: str | Path) -> None:
    """Temporary files are private (0600); what we hand over gets the permissions of any new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _sync(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary name beside `path` to write to; renamed onto `path` only when the block ends without error,
    so a reader never sees half a file. The temporary name ends in `path`'s suffix, for writers (matplotlib)
    that choose the format by it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        make_ordinary(tmp)
        _sync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path):
    """A fresh folder `path`.tmp to fill; it replaces `path` when the block ends without error. The fixed name
    means a folder left by a killed run is cleared by the next write."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    yield tmp
    for f in tmp.iterdir():
        make_ordinary(f)
        _sync(f)
    _replace_folder(tmp, final)


def _replace_folder(tmp: Path, final: Path) -> None:
    # A folder cannot be renamed onto a non-empty one: move the old one aside first, and drop it after.
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
