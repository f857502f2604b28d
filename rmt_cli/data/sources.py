"""What `ingest` and `perplexity` read: files, folders (codebases) and stdin, as one stream of bytes.

- Several files: read as one document, their bytes in order, nothing added.
- A folder: its files in a stable sorted order, skipping `.git`, hidden files, binary files, links, and what
  `.gitignore` files ignore (the folder's own and, as git reads them, those above it in its repository); each file
  is preceded by a one-line path header.
- `-`: standard input.

Every path is checked before anything is read, so a typo fails at once and not an hour into a book.
"""

from __future__ import annotations

import codecs
import errno
import functools
import hashlib
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..atomic import pipe_identity
from ..errors import UsageError, counted, named_paths, path_argument, shown

CHUNK_BYTES = 1 << 16
BINARY_SNIFF_BYTES = 8192
# Of the first BINARY_SNIFF_BYTES, the share of control bytes (below 0x20 but tab, line breaks, form feed and
# escape, which coloured logs use; and 0x7f) past which a file counts as binary. Random bytes hold ~9% of them; text
# in any 8-bit or multi-byte encoding (Latin-1, cp1251, KOI8-R, GBK, UTF-8) next to none. Invalid UTF-8 alone does
# not count: a legacy encoding is text, read with a warning.
CONTROL_SHARE = 0.03
CONTROL_BYTES = frozenset(range(0x01, 0x20)) - {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1B} | {0x7F}


_ESCAPED_IN_NAMES = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029]")


def file_header(relative: str) -> bytes:
    """The line before each file of a folder. A newline, another control character or a Unicode line break in a
    file's name is escaped (`\\n`), and so is a backslash (`\\\\`), so that a name cannot write a line that looks
    like another file's header into the text, nor read as another name; a byte of a name that is not UTF-8
    (`caf\\xe9.txt`, which os.walk gives as a surrogate) is written as `\\udce9`, as --json writes it."""
    relative = _ESCAPED_IN_NAMES.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), relative)
    return f"\n<<< file: {relative} >>>\n".encode("utf-8", errors="backslashreplace")


# pathspec matches with Python regular expressions, which backtrack: a name pattern of many `*` (`*a*a*a…*b`)
# against a long name takes time that grows as the name's length to the power of the stars (hours, for a crafted
# line in a repository someone else wrote). Real .gitignore lines have one or two.
MAX_STARS_IN_A_NAME = 3


def _gitignore_spec(lines: list[str], where: Path | None = None):
    """A folder's .gitignore as a pathspec; a line pathspec cannot read (`[z-a]`, a lone `!`) is skipped, as git
    skips it. A line with more `*` in one name than MAX_STARS_IN_A_NAME is refused (`where` names the file)."""
    import pathspec

    good = []
    for number, line in enumerate(lines, 1):
        stars = max((part.replace("\\*", "").count("*") for part in line.split("/") if part != "**"), default=0)
        if stars > MAX_STARS_IN_A_NAME:
            raise UsageError(f"{shown(where or '.gitignore')}:{number}: {shown(line, 60)} has {stars} '*' in one "
                             f"name; rmt matches at most {MAX_STARS_IN_A_NAME} (the work grows as a name's length "
                             f"to their power): simplify the line")
    for line in lines:
        if line.endswith("/**/"):  # every folder under a, at any depth: pathspec reads `a/**/` as `a/` (a itself),
            line += "*/"  # and `a/**/*/` as git reads `a/**/`
        try:
            pathspec.GitIgnoreSpec.from_lines([line])
        except Exception:  # pathspec raises several kinds (GitWildMatchPatternError, ValueError, re.error)
            continue
        good.append(line)
    return pathspec.GitIgnoreSpec.from_lines(good)


def editor_lines(text: str) -> list[str]:
    """A text's lines as an editor numbers them: cut at a newline (CRLF too) and nowhere else, a byte order mark
    dropped. str.splitlines() also cuts at a vertical tab, a form feed, \\x1c-\\x1e, U+0085 and U+2028, which an
    editor shows inside a line (and a file name may hold): questions would no longer pair with their lines."""
    return [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]


def path_list(paths) -> list[str]:
    """Paths given as a list, as strings; one path alone (a str or os.PathLike) is a list of one, never read as
    the list of its characters."""
    if paths is None:  # no inputs, said as such by whoever needs some
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, (list, tuple)):
        raise UsageError(f"paths: a path or a list of paths, not {type(paths).__name__}")
    return [str(path_argument(p, "paths")) for p in paths]


def stdin_unreadable(error: Exception) -> UsageError:
    """Standard input that is open but cannot be read (`0>file` opens it write-only)."""
    return UsageError(f"standard input cannot be read: {getattr(error, 'strerror', None) or error}")


def stdin_stream() -> BinaryIO:
    """Standard input's bytes, or one UsageError line when rmt was started with it closed (`<&-`)."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise UsageError("standard input is closed; nothing to read from -")
    return stream


@dataclass
class SourceRecord:
    """Name, size and sha256 of one input, filled in as it is read."""

    name: str
    size: int = 0
    sha256: str = ""
    replaced_bytes: int = 0  # invalid UTF-8 sequences decoded as U+FFFD
    nul_bytes: int = 0  # past the first block, which would have been refused as binary for one
    size_when_opened: int | None = None  # a file's size at open (None: stdin); differs from `size` if it changed

    @property
    def changed_while_read(self) -> bool:
        return self.size_when_opened is not None and self.size_when_opened != self.size


@dataclass
class _Item:
    path: Path | None  # None: stdin
    name: str
    header: bytes = b""
    pipe: bool = False  # a pipe named by path (`<(cmd)`, /dev/stdin, a FIFO): read once, as stdin is

    @property
    def streamed(self) -> bool:
        """Read as a stream: no size ahead, no rereading, judged binary by its first block."""
        return self.path is None or self.pipe


def binary_reason(path: Path) -> str | None:
    """Why the file's first bytes say it is not text in any encoding (NUL bytes, or many control bytes), or
    None."""
    with open(path, "rb") as f:
        return head_binary_reason(f.read(BINARY_SNIFF_BYTES))


def head_binary_reason(head: bytes) -> str | None:
    """`binary_reason` of a file's first bytes (standard input is judged by its first block)."""
    head = head[:BINARY_SNIFF_BYTES]
    if b"\0" in head:
        return "it has NUL bytes"
    if len(head) < 64:  # too little to judge: read as text, as ever
        return None
    control = sum(1 for byte in head if byte in CONTROL_BYTES)
    if control > CONTROL_SHARE * len(head):
        return f"{control / len(head):.0%} of its first {len(head):,} bytes are control codes"
    return None


def looks_binary(path: Path) -> bool:
    return binary_reason(path) is not None


def _open_error(path: str, error: OSError) -> UsageError:
    return UsageError(f"{shown(path)}: cannot read ({error.strerror or error})")  # a path may be 4 kB long


def missing_reason(path: Path, what: str = "file or folder") -> str:
    """Why a path the user named is not there: no such file (or `what`), or a broken or looping link."""
    if not path.is_symlink():
        return f"no such {what}"
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a loop of symbolic links"
    return "a broken symbolic link"


SMALL_FILE_LIMIT = 16 << 20  # lists of questions or jobs; anything bigger is a mistake


def read_small_file(path: Path, what: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The bytes of a small file a user named (a question list, a manifest): a regular file or a pipe such as
    `<(...)`, read whole, refused beyond `limit` bytes."""
    label = f"{what} {shown(path)}"
    try:  # is_dir and exists raise OSError too, for a name too long
        if path.is_dir():
            raise UsageError(f"{label}: is a folder, not a file")
        if not path.exists():
            raise UsageError(f"{label}: {missing_reason(path)}")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise _open_error(label, e) from None
    if len(data) > limit:
        raise _too_large(label, limit)
    return data


def read_small_stdin(label: str, limit: int = SMALL_FILE_LIMIT, hint: str = "is it the right input?") -> bytes:
    """Standard input read whole as `read_small_file` reads a file, refused beyond `limit` bytes: `yes | rmt ask
    MEMORY -` had grown to 24 GB. `label` names it in errors ("standard input", "recipe <stdin>")."""
    stream = stdin_stream()
    try:
        data = stream.read(limit + 1)
    except (OSError, ValueError) as e:  # a closed or write-only descriptor (`0>file`)
        raise stdin_unreadable(e) from None
    if len(data) > limit:
        raise _too_large(label, limit, hint)
    return data


def _too_large(label: str, limit: int, hint: str = "is it the right file?") -> UsageError:
    return UsageError(f"{label}: larger than {limit >> 20} MiB; {hint}")


def read_small_text(path: Path, what: str, limit: int = SMALL_FILE_LIMIT) -> str:
    """`read_small_file` as UTF-8 text, or one line saying where it is not UTF-8."""
    try:
        return read_small_file(path, what, limit).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {shown(path)}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _folder_verdict(spec, folder: str) -> bool | None:
    """Whether a .gitignore ignores `folder` ("a/b/"): its last line that matches decides, as in git. pathspec's
    GitIgnoreSpec lets `*` win over a later `!*/` for a folder, and the allow-list idiom (`*`, `!*/`, `!*.py`) lost
    every subfolder (the twenty-ninth review); files keep its rules, which git's own match."""
    verdict = None
    for pattern in spec.patterns:
        if pattern.include is not None and _names_folder(pattern, folder):
            verdict = pattern.include
    return verdict


@functools.lru_cache(maxsize=4096)
def _ending_at_the_end(regex: str) -> re.Pattern:
    return re.compile(f"(?:{regex})$")


def _names_folder(pattern, folder: str) -> bool:
    """Whether a line matches the folder itself ("a/b/"), not only a folder above it: pathspec's `!a/` matches
    "a/b/" as a path inside a, and `*/` then `!a/` kept a/b/, which git ignores (`!a/` names a alone). A folder
    above is judged first, and never entered if ignored. `a/**` matches every folder under a, not a itself."""
    if pattern.match_file(folder) is None:
        return False
    regex = pattern.regex.pattern
    if regex.endswith("/"):  # `a/**`: what is inside a, not a itself (`a/**` then `!a/ok.txt` keeps a/ok.txt)
        return re.search(regex, folder[:-1]) is not None
    return _ending_at_the_end(regex).search(folder) is not None


def _read_gitignore(path: Path):
    """A folder's .gitignore (or a repository's info/exclude) as a spec, or None where there is none. A link is
    none, as git does not follow it (it could name any file); one that cannot be read is a UsageError, and a folder
    that cannot be entered a PermissionError (its caller skips it). Lines are cut at newlines alone, as git cuts
    them (U+0085 or U+2028 inside a line is part of it), and a name's bytes that are not UTF-8 match as os.walk gives
    them."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as e:  # git warns and goes on; here the files it hides (secrets, say) would be read unsaid
        raise UsageError(f"{shown(path)}: cannot read it ({e.strerror or e}), so what it ignores cannot be "
                         f"skipped; make it readable, or name the files to read") from None
    return _gitignore_spec(editor_lines(text), path)  # a Windows editor's byte order mark dropped, CRLF too


def _git_folder(folder: Path) -> tuple[Path, Path] | None:
    """(the git directory, the common one: a worktree's is its main repository's) when `folder` is a git
    repository's root: a .git folder, or a .git file (a submodule's, a worktree's) whose `gitdir:` names one, that
    git would take for a repository (HEAD, and objects/ and refs/ in the common directory). None otherwise: an empty
    or fake .git, or one that cannot be read, makes none, and the rules above it still apply."""
    marker = folder / ".git"
    try:
        if marker.is_symlink():
            return None
        if marker.is_dir():
            git_dir = marker
        elif marker.is_file():
            with open(marker, "rb") as f:
                line = f.read(4096).split(b"\n")[0].strip()
            if not line.startswith(b"gitdir:"):
                return None
            git_dir = folder / os.fsdecode(line[len(b"gitdir:"):].strip())
            if Path(os.path.realpath(git_dir)) == Path(os.path.realpath(folder)):  # `gitdir: .`
                return None
        else:
            return None
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = git_dir / (git_dir / "commondir").read_text(encoding="utf-8", errors="replace").strip()
        if (git_dir / "HEAD").is_file() and (common / "objects").is_dir() and (common / "refs").is_dir():
            return git_dir, common
    except OSError:
        pass
    return None


def _exclude_spec(git: tuple[Path, Path] | None):
    """A repository's own ignore list, info/exclude in its (common) git directory (`git`: _git_folder's), which git
    reads below every .gitignore; None where there is none."""
    return None if git is None else _read_gitignore(git[1] / "info" / "exclude")


def _ignored(rules: list[tuple[Path, object]], path: Path, is_dir: bool) -> bool:
    """Whether the ignore files `rules` ((folder, spec), root first) ignore `path` (a real path), as git judges it:
    the deepest file with a line that matches decides, so that `!x.tmp` in a/.gitignore keeps a/x.tmp though the
    root's `*.tmp` ignores it (the 29th review). Rules of folders not above `path` say nothing."""
    verdict = False
    for base, spec in rules:
        try:
            rel = path.relative_to(base).as_posix()
        except ValueError:
            continue
        if rel == ".":  # a folder's own .gitignore judges what it holds, not the folder
            continue
        include = _folder_verdict(spec, rel + "/") if is_dir else spec.check_file(rel).include
        if include is not None:
            verdict = include
    return verdict


def _without_lines_naming(spec, base: Path, folders: list[Path]):
    """`spec` without the lines that ignore one of `folders` (below `base`) as a folder: a folder named on purpose
    is read, and by the repository's other lines (`*.secret` still skips build/db.secret in `rmt ingest build`)."""
    import pathspec

    names = [folder.relative_to(base).as_posix() + "/" for folder in folders if base in folder.parents]
    kept = [p for p in spec.patterns if not (p.include and any(_names_folder(p, name) for name in names))]
    return spec if len(kept) == len(spec.patterns) else pathspec.GitIgnoreSpec(kept)


def _higher_gitignores(folder: Path) -> list[tuple[Path, object]]:
    """What ignores files above `folder` (a real path, not a repository's root: `rmt ingest link-to-src` is src) up
    to the root of the git repository holding it, root first: info/exclude, then the .gitignore files: `rmt ingest
    repo/src` skips what repo/.gitignore ignores, as git does. None outside a repository. Where those files ignore
    the folder itself (or a folder above it), the lines that do are left out: a folder named on purpose is read, by
    the others."""
    above = []
    for parent in folder.parents:
        above.append(parent)
        git = _git_folder(parent)
        if git is not None:
            break
    else:
        return []
    specs = [(base, spec) for base, spec in [(above[-1], _exclude_spec(git))] +
             [(base, _read_gitignore(base / ".gitignore")) for base in reversed(above)]  # the root first
             if spec is not None]
    # the folders from just under the root down to `folder` that git would not enter
    ignored = [inner for inner in reversed([folder, *above[:-1]]) if _ignored(specs, inner, True)]
    return [(base, _without_lines_naming(spec, base, ignored)) for base, spec in specs] if ignored else specs


def _walk_folder(root: Path) -> tuple[list[_Item], int]:
    """Files of a folder in sorted order, with .gitignore honoured as git honours it (a repository inside the folder
    by its own files, not those above it). Returns (items, what was skipped: paths relative to the folder, a
    folder's with a trailing /)."""
    items: list[_Item] = []
    skipped: list[str] = []
    real_root = Path(os.path.realpath(root))
    # per folder walked, the ignore files that judge what it holds, root first: those of the folders above it (up to
    # a repository's root), so that a check costs the depth, not every .gitignore of the walk
    rules_of: dict[Path, list[tuple[Path, object]]] = {}
    seen_dirs: set[tuple[int, int]] = set()

    def unlistable(error: OSError) -> None:  # a folder that cannot be listed (chmod 000): said, not dropped
        if error.filename is None or os.path.realpath(error.filename) == str(real_root):
            raise _open_error(str(root), error)
        skipped.append(Path(error.filename).relative_to(root).as_posix() + "/")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unlistable):
        here = Path(dirpath)
        real_here = real_root / here.relative_to(root)
        try:
            st = here.stat()
            if (st.st_dev, st.st_ino) in seen_dirs:  # a loop through bind mounts or the like
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            git = _git_folder(here)
            if git is not None:  # a repository's root (one inside the folder: its own rules alone, as git reads it)
                rules = []
            else:
                rules = _higher_gitignores(real_root) if here == root else rules_of[here.parent]
            own = [_exclude_spec(git), _read_gitignore(here / ".gitignore")]
        except PermissionError as e:  # listed but not entered (mode 644): its files cannot even be looked at
            if here == root:
                raise _open_error(e.filename or str(root), e) from None
            skipped.append(here.relative_to(root).as_posix() + "/")
            dirnames[:] = []
            continue
        rules = rules_of[here] = rules + [(real_here, spec) for spec in own if spec is not None]

        keep_dirs = []
        for d in sorted(dirnames):
            p = here / d
            if d.startswith(".") or p.is_symlink() or _ignored(rules, real_here / d, True):
                skipped.append(p.relative_to(root).as_posix() + "/")
                continue
            keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for name in sorted(filenames):
            p = here / name
            try:
                # hidden, ignored, links (git keeps a link as a link: read, one could show a hidden or ignored
                # file, or one outside the folder), sockets, binaries
                if name.startswith(".") or p.is_symlink() or _ignored(rules, real_here / name, False) or \
                        not p.is_file() or looks_binary(p):
                    skipped.append(p.relative_to(root).as_posix())
                    continue
            except OSError:
                skipped.append(p.relative_to(root).as_posix())
                continue
            rel = p.relative_to(root).as_posix()
            items.append(_Item(p, str(p), file_header(rel)))
    items.sort(key=lambda item: item.header)  # one sorted order of relative paths, whatever the walk order
    return items, skipped


@dataclass
class Document:
    """The inputs of one document, checked; `chunks()` streams their bytes."""

    items: list[_Item]
    skipped: list[str] = field(default_factory=list)  # what a folder held and was not read, as paths given
    records: list[SourceRecord] = field(default_factory=list)

    @property
    def total_bytes(self) -> int | None:
        if any(i.streamed for i in self.items):
            return None
        return sum(i.path.stat().st_size + len(i.header) for i in self.items)

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        for item in self.items:
            record = SourceRecord(item.name)
            self.records.append(record)
            digest = hashlib.sha256()
            if item.header:
                yield item.header
            try:
                stream: BinaryIO = stdin_stream() if item.path is None else \
                    open(item.path, "rb") if item.pipe else _open_regular(item)
            except OSError as e:
                raise _open_error(item.name, e) from None
            if not item.streamed:
                record.size_when_opened = os.fstat(stream.fileno()).st_size
            try:
                while True:
                    try:
                        block = stream.read(chunk_bytes)
                    except (OSError, ValueError) as e:
                        if item.path is None:  # a file failing mid-read is the reader's error to report
                            raise stdin_unreadable(e) from None
                        raise
                    if not block:
                        break
                    if item.streamed and record.size == 0:  # a file was sniffed when it was opened
                        reason = head_binary_reason(block)
                        if reason is not None:
                            raise UsageError(f"{item.name}: looks like binary data ({reason}); rmt reads text")
                    digest.update(block)
                    record.nul_bytes += block.count(b"\0")  # a text head, then zeros (a preallocated file)
                    record.size += len(block)
                    yield block
            finally:
                if item.path is not None:
                    stream.close()
            record.sha256 = digest.hexdigest()


def _open_regular(item: _Item) -> BinaryIO:
    """A file checked by open_document, opened when its turn comes: without waiting, should it have been replaced
    by a FIFO meanwhile (open() would wait for a writer for ever), and refused unless it is still a regular file."""
    fd = os.open(item.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{shown(item.name)}: is not a regular file now (replaced since it was checked); rmt "
                         f"read it as one")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def open_document(paths: list[str], allow_stdin: bool = True) -> Document:
    """Check every path and list the files to read, in order."""
    paths = path_list(paths)
    if not paths:
        raise UsageError("no input given: name files, folders, or - for standard input")
    if paths.count("-") > 1:
        raise UsageError("standard input (-) can be read only once")
    items: list[_Item] = []
    skipped: list[str] = []
    pipes: set[tuple[int, int]] = set()
    for raw in paths:
        if raw == "":  # Path("") is ".": an empty argument (an unset shell variable) read the whole folder
            raise UsageError("an empty path ('') names no file or folder; write . for the current folder")
        if raw == "-":
            if not allow_stdin:
                raise UsageError("standard input (-) cannot be used here")
            stdin_stream()  # closed (`<&-`): said before anything is read or written
            items.append(_Item(None, "<stdin>"))
            continue
        path = Path(home_path(raw))
        try:
            if path.is_dir():
                found, passed = _walk_folder(path)
                if not found:
                    raise UsageError(f"{shown(raw)}: no readable text files in this folder ({len(passed)} skipped)")
                items.extend(found)
                skipped += [os.path.join(raw, name) for name in passed]
                continue
            if not path.exists():
                raise UsageError(f"{shown(raw)}: {missing_reason(path)}")
            pipe = pipe_identity(path)
            if pipe is not None:  # `rmt ingest <(zcat book.gz)`: read as a stream, like -
                if not allow_stdin:
                    raise UsageError(f"{shown(raw)}: a pipe; name a regular file here")
                if pipe in pipes:
                    raise UsageError(f"{shown(raw)}: the same pipe is named twice; a pipe can be read only once")
                pipes.add(pipe)
                if not os.access(path, os.R_OK):
                    raise UsageError(f"{shown(raw)}: permission denied")
                items.append(_Item(path, raw, pipe=True))
                continue
            if not path.is_file():
                raise UsageError(f"{shown(raw)}: not a regular file (a device or a socket)")
            reason = binary_reason(path)
            if reason is not None:
                raise UsageError(f"{shown(raw)}: looks like a binary file ({reason}); rmt reads text")
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UsageError(f"{shown(raw)}: a loop of symbolic links") from None
            raise _open_error(raw, e) from None
        if not os.access(path, os.R_OK):
            raise UsageError(f"{shown(raw)}: permission denied")
        items.append(_Item(path, raw))
    return Document(items, skipped)


def home_path(raw: str) -> str:
    """`~/x` and `~user/x` as a shell expands them, for a path no shell expanded (quoted, after `--option=`, in a
    recipe or a manifest); `~nosuchuser/x` stays as given (and is then not found)."""
    return os.path.expanduser(raw) if raw.startswith("~") else raw


def read_texts(paths: list[str], warn: Callable[[str], None] | None = None) -> list[tuple[str, str]]:
    """(name, text) of each file the paths name, for training and evaluation text (noise, LM text).

    The same walk and the same decoding as `ingest`: folders in sorted order with .gitignore honoured and
    hidden or binary files skipped; UTF-8 with invalid bytes read as U+FFFD. A model is then trained on text
    decoded exactly as the text it will ingest. Unlike ingest, each file stays its own text (no path headers).
    `warn` is told of NUL bytes after a text beginning (a file with one in its first block is binary: skipped or
    refused), as ingest warns of them.
    """
    texts: list[tuple[str, str]] = []
    if not paths:  # training text may come from a dataset alone
        return texts
    document = open_document(paths, allow_stdin=False)
    if warn is not None and document.skipped:  # a binary file in a folder of noise, said as ingest says it
        warn(f"{len(document.skipped)} hidden, ignored, binary or unreadable files or folders skipped: "
             f"{named_paths(sorted(document.skipped))}")
    for item in document.items:
        try:
            raw = item.path.read_bytes()
        except OSError as e:
            raise _open_error(item.name, e) from None
        decoder = Utf8Stream()
        texts.append((item.name, decoder.decode(raw) + decoder.finish()))
        if warn is not None and b"\0" in raw:
            warn(f"{counted(raw.count(bytes(1)), 'NUL byte')} in {shown(item.name)}, read as text after a text "
                 f"beginning: is it binary data?")
    return texts


class Utf8Stream:
    """Incremental UTF-8 decoding that keeps an unfinished multi-byte sequence for later (it may be continued by
    appended input) and replaces invalid bytes with U+FFFD, counting them."""

    def __init__(self, pending: bytes = b""):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        if pending:
            self._decoder.setstate((pending, 0))
        self.replaced = 0

    def decode(self, data: bytes) -> str:
        text = self._decoder.decode(data)
        self.replaced += text.count("\ufffd")
        return text

    def finish(self) -> str:
        """The end of the input: an unfinished sequence left over is invalid too."""
        text = self._decoder.decode(b"", final=True)
        self.replaced += text.count("\ufffd")
        return text

    @property
    def pending(self) -> bytes:
        return self._decoder.getstate()[0]
