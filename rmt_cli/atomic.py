"""Writing files and folders so that a reader (or a kill) never sees half of one: write under a temporary name
beside the target, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, and no clearing of what a kill left
    fcntl = None

from .errors import RMTError, UsageError, error_line, shown

# A file name may be at most 255 bytes on common file systems: the temporary name keeps this much of the
# target's name, so that a legal output name never fails for its temporary one.
_TMP_NAME_BYTES = 120
_TMP_SUFFIX_BYTES = 16


CHECKPOINT_INFO = "rmt.json"  # the file that makes a folder an rmt checkpoint (storage/checkpoint.py)


def check_outside_checkpoints(path: str | Path, what: str) -> None:
    """Refuse an output (`what` starts the error: "output_dir ", "-o ") inside a checkpoint folder (one holding
    rmt.json): a file or folder of its own there makes that folder one that training no longer replaces and a copy
    no longer loads as it was (a checkpoint folder holds its own files only)."""
    for folder in Path(os.path.realpath(path)).parents:
        try:
            inside = (folder / CHECKPOINT_INFO).is_file()
        except OSError:  # a folder on the way that may not be searched: no checkpoint rmt could have written
            continue
        if inside:
            raise UsageError(f"{what}{shown(path)}: is inside the checkpoint folder {shown(folder)}; write it "
                             f"elsewhere")


def output_target(path: str | Path, what: str = "") -> Path:
    """Where an output named `path` is written, checked before anything is read: a symbolic link is followed
    (the file it names is written, the link stays), and what is written must be a regular file or a new path
    in an existing folder chain: never a folder, a FIFO, a device or a socket. `what` prefixes errors (e.g.
    "--trace "). Returns the resolved path."""
    where = f"{what}{shown(path)}"
    if not str(path):
        raise UsageError(f"{what}no output given: name a file".strip())
    target = Path(os.path.realpath(path))
    try:
        if target.is_dir():
            raise UsageError(f"{where}: is a folder; name a file to write")
        # The name as the system follows it too: /dev/stdout or >(cmd) lead to a pipe that has no path of its own
        # (realpath makes it "/proc/…/pipe:[…]", a new path)
        named = os.stat(path) if os.path.exists(path) else None
        if (target.exists() and not target.is_file()) or \
                (named is not None and not stat.S_ISREG(named.st_mode) and not stat.S_ISDIR(named.st_mode)):
            raise UsageError(f"{where}: is not a regular file (a device, a FIFO or a socket); rmt writes only "
                             f"regular files or new paths")
        if os.path.islink(path) and not target.exists() and os.path.lexists(target):
            raise UsageError(f"{where}: a broken or looping symbolic link")
        # Replaced, it would lose what guards it. No write bit for anyone is read-only to root too (who passes
        # os.access for every file, and is who runs rmt in most containers).
        if target.exists() and (not os.access(target, os.W_OK) or not target.stat().st_mode & 0o222):
            raise UsageError(f"{where}: is read-only; rmt replaces only a file you may write")
        stream = _standard_stream_of(target)
        if stream is not None:  # `-o /dev/stdout > res.json` would replace res.json, and --json would go nowhere
            raise UsageError(f"{where}: is this command's standard {stream} (a redirection to the same file); an "
                             f"output goes to a file of its own")
    except OSError as e:  # e.g. a folder on the way that may not be searched, or a name too long
        raise UsageError(f"{where}: cannot write there: {e.strerror or e}") from None
    check_folder(target.parent, where)
    return target


def file_identity(path: str | Path | int) -> tuple[int, int] | None:
    """(device, inode) of the file `path` names (or a descriptor holds): two names of one file (a hard link, a
    redirection) share it, and a file renamed into a path's place has another. None where there is none."""
    found = _stat(path)
    return None if found is None else (found.st_dev, found.st_ino)


def pipe_identity(path: str | Path | int) -> tuple[int, int] | None:
    """`file_identity` of a pipe (a FIFO, `<(cmd)`'s /dev/fd/N, a piped stdin), None for anything else: a pipe is
    read once, so two readers of one are found by it."""
    found = _stat(path)
    return (found.st_dev, found.st_ino) if found is not None and stat.S_ISFIFO(found.st_mode) else None


def _stat(path: str | Path | int) -> os.stat_result | None:
    try:
        return os.fstat(path) if isinstance(path, int) else os.stat(path)
    except (OSError, ValueError):  # none there, a stream closed, a NUL in a name
        return None


def _standard_stream_of(target: Path) -> str | None:
    """"input", "output" or "error" where `target` is the file that standard stream reads or writes (/dev/stdout,
    /proc/self/fd/1, or the file a shell redirected it to), else None."""
    here = file_identity(target)
    for fd, name in ((0, "input"), (1, "output"), (2, "error")):
        if here is not None and file_identity(fd) == here:
            return name
    return None


def existing_folder(path: str | Path, what: str) -> None:
    """The folder an output named `path` goes in exists (`what` starts the error: "-o ", "--trace "): rmt makes
    none for a file named on the command line, where a typo would build a tree of new folders (as root,
    anywhere). `path` as named: ".." goes through a link as the system goes."""
    parent = Path(path).parent
    try:
        is_folder = stat.S_ISDIR(os.stat(parent).st_mode)
    except FileNotFoundError:
        raise UsageError(f"{what}{shown(path)}: no folder {shown(parent)}") from None
    except OSError as e:  # a folder on the way that may not be searched, a name too long: the system's reason
        raise UsageError(f"{what}{shown(path)}: {e.strerror or e}") from None
    if not is_folder:
        raise UsageError(f"{what}{shown(path)}: {shown(parent)} is a file, not a folder")
    if os.path.islink(path):  # the file written is the one the link names, in the link target's folder
        target_folder = os.path.dirname(os.path.realpath(path))
        if not os.path.isdir(target_folder):
            raise UsageError(f"{what}{shown(path)}: a symbolic link to {shown(os.readlink(path))}, in a folder that "
                             f"does not exist ({shown(target_folder)})")


def check_folder(folder: Path, where: str) -> None:
    """The folder an output goes in (or the nearest of its parents that exists, in which rmt creates the rest)
    is a folder rmt may write in: found before any work, not when the output is written after it. `where`
    starts each error."""
    parent = folder
    try:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{where}: {shown(parent)} is a file, not a folder")
    except OSError as e:  # e.g. a folder on the way that may not be searched, or a name too long
        raise UsageError(f"{where}: cannot write there: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK | os.X_OK):  # no permission, or a read-only file system
        raise UsageError(f"{where}: cannot write in the folder {shown(parent)} (permission denied, or a read-only "
                         f"file system)")


def _cut(text: str, limit: int) -> str:
    return text.encode("utf-8", "surrogateescape")[:limit].decode("utf-8", "ignore")


def make_ordinary(path: str | Path, replacing: str | Path | None = None) -> None:
    """Temporary files are private (0600); what we hand over gets the permissions of any new file, or those of
    the file it replaces (a private 0600 memory file stays private after an --append)."""
    if replacing is not None and os.path.isfile(replacing):
        os.chmod(path, stat.S_IMODE(os.stat(replacing).st_mode))
        return
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _sync(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path, clear_stale: bool = False):
    """A temporary name beside `path` to write to; renamed onto `path` only when the block ends without error,
    so a reader never sees half a file. The temporary name ends in `path`'s suffix, for writers (matplotlib)
    that choose the format by it.

    The temporary file stays locked (flock) while it is written, so one that a kill -9 left is unlocked.
    `clear_stale` removes such leftovers of `path` first (`_clear_stale`): for a file written over a whole run (a
    trace), which a kill is likely to cut. A file written in a moment (a memory file) does not: thousands of them
    go into one folder, and listing it for each would be quadratic."""
    path = Path(os.path.realpath(path))  # a link stays a link: the file it names is replaced
    suffix = path.suffix if len(path.suffix.encode("utf-8", "surrogateescape")) <= _TMP_SUFFIX_BYTES else ""
    prefix, suffix = f".{_cut(path.name, _TMP_NAME_BYTES)}.", f".tmp{suffix}"
    if clear_stale:
        _clear_stale(path.parent, prefix, suffix, cut=prefix != f".{path.name}.")
    fd, tmp = _locked_temporary(path.parent, prefix, suffix)
    try:
        yield tmp
        make_ordinary(tmp, replacing=path)
        _sync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _locked_temporary(folder: Path, prefix: str, suffix: str) -> tuple[int | None, str]:
    """A new temporary file and its descriptor, which holds the file's lock until it is closed (None where there
    is no flock: the file is then closed at once, as Windows renames no open file)."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        if fcntl is None:
            os.close(fd)
            return None, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_named(tmp, fd):  # not removed by another run (`_clear_stale`) before it was locked
                return fd, tmp
        except FileNotFoundError:
            pass
        except OSError:  # a file system without locks: written unlocked, and never taken for stale
            return fd, tmp
        os.close(fd)


def hold_lock(path: str | Path, busy: str, error: type[RMTError] = RMTError) -> int | None:
    """An exclusive flock on the existing file or folder `path`, held until the returned descriptor is closed; raises
    `error`(`busy`) at once where another process holds it. None where `path` does not exist (nothing to lose)
    or there is no flock (Windows, a file system without locks). A lock dies with its process: a kill leaves none."""
    if fcntl is None:
        return None
    while True:
        try:  # O_NONBLOCK: a FIFO put in an output's place meanwhile would block open() until a writer came
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        except OSError:  # not there (yet): a new output has nothing another run could lose
            return None
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            os.close(fd)
            raise UsageError(f"{shown(path)}: is not a regular file (a device, a FIFO or a socket) now; rmt writes "
                             f"only regular files or new paths")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise error(busy) from None
        except OSError:  # a file system without locks: unguarded, as before
            return fd
        if _still_named(path, fd):  # not replaced (renamed over) before it was locked
            return fd
        os.close(fd)


def _still_named(path: str | Path, fd: int) -> bool:
    """Whether `path` still names the file `fd` holds: a lock taken on a file that was then removed or renamed over
    guards nothing, and is taken again."""
    named = file_identity(path)
    return named is not None and named == file_identity(fd)


def _clear_stale(folder: Path, prefix: str, suffix: str, cut: bool) -> None:
    """Remove the temporary files of `atomic_path` for one target that no process is writing: named as it names
    them (`prefix`, mkstemp's 8 characters, `suffix`) and unlocked, so a kill -9 left them. Nothing else is
    touched, nor when the target's name was cut to fit (its prefix may then be another target's too)."""
    if fcntl is None or cut:
        return
    pattern = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}" + re.escape(suffix))
    try:
        names = [name for name in os.listdir(folder) if pattern.fullmatch(name)]
    except OSError:
        return
    for name in names:
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, a link, not readable: left as it is
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while another process writes it
            os.unlink(folder / name)
        except OSError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_folder(path: str | Path):
    """A fresh folder `path`.tmp to fill; it replaces `path` when the block ends without error, and is removed
    when it does not. The fixed name means a folder left by a killed run (kill -9) is cleared by the next write."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            make_ordinary(f)
            _sync(f)
    except BaseException:  # an error, or a second Ctrl-C while it is filled: no half folder left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_folder(tmp, final)  # once whole it is never removed: a swap cut short leaves it, or the old one


def _replace_folder(tmp: Path, final: Path) -> None:
    # A folder cannot be renamed onto a non-empty one: move the old one aside first, and drop it after.
    if final.exists() or final.is_symlink():
        old = final.with_name(final.name + ".old")
        _remove(old)
        final.rename(old)
        tmp.rename(final)
        _remove(old)
    else:
        tmp.rename(final)


def _remove(path: Path) -> None:
    """A folder left aside by `_replace_folder`, gone: a link (to a folder or not) or a file is unlinked, never
    followed; rmtree would refuse a link and leave it in the way."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


PLOT_SOFTWARE = "rmt"  # the PNG's Software text: marks a plot rmt wrote, which a later --plot may replace


def is_rmt_plot(path: str | Path) -> bool:
    """Whether `path` is a PNG whose Software text (a tEXt chunk before the image data) says rmt wrote it."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            for _ in range(64):  # the text chunks come first; a crafted file cannot keep us reading
                head = f.read(8)
                if len(head) < 8:
                    return False
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind == b"IDAT" or length > 1 << 20:
                    return False
                data = f.read(length)
                f.seek(4, 1)  # the chunk's CRC
                if kind == b"tEXt" and data.partition(b"\0")[::2] == (b"Software", PLOT_SOFTWARE.encode()):
                    return True
    except OSError:
        return False
    return False


def replaceable_target(path: str | Path, what: str, ours, refusal: str) -> Path:
    """`output_target`, where a file with something in it may stand only if `ours(target)` says it is what rmt
    writes there (a memory file, a trace, a plot); an empty file (mktemp's) is fine. Any other file is a user's,
    a typo away from an input: refused, `refusal` saying what it is not, what rmt replaces and what to do."""
    target = output_target(path, what)
    if target.is_file() and target.stat().st_size > 0 and not ours(target):
        raise UsageError(f"{what}{shown(path)}: exists and is not {refusal}")
    return target


def plot_target(path: str | Path) -> Path:
    """Where a plot may be written: a new path, an empty file or a plot rmt wrote (a link: the file it names);
    never another file, such as a photo that happens to be a PNG (the tenth review). Returns the target."""
    return replaceable_target(path, "--plot ", is_rmt_plot, "a plot rmt wrote; rmt replaces only its own plots "
                              "(remove it first, or name another file)")


@contextlib.contextmanager
def plain_pyplot():
    """matplotlib's pyplot with matplotlib's own defaults, whatever a `matplotlibrc` (in the current folder, or
    named by $MATPLOTLIBRC) says: `text.usetex: True` made a plot run `latex` on text that holds a model folder's
    name, and a bad setting failed in a traceback after the whole evaluation. Drawn off screen (Agg)."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'rmt-cli[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        import matplotlib.pyplot as plt

        yield plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure saved whole or not at all, onto what `plot_target` allows; a failure names `path`,
    never the temporary file. The PNG says rmt wrote it (`is_rmt_plot`)."""
    target = plot_target(path)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": PLOT_SOFTWARE})
    except OSError as e:
        raise RMTError(f"--plot {shown(path)}: cannot write the plot: {e.strerror or error_line(e)}") from None
