"""Errors that the CLI turns into one clear line and an exit code (never a traceback)."""


# Signals that stop rmt as Ctrl-C (SIGINT) does: temporaries removed, a training run saved, exit 130. SIGTERM is
# what timeout(1), systemd and batch schedulers send; SIGHUP, what a closed terminal or ssh session sends.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def stop_signals() -> list:
    """STOP_SIGNALS as this system's signal numbers (Windows has no SIGHUP), but those this process ignores: an
    ignored signal stays ignored (`nohup` ignores SIGHUP, a script's background job SIGINT)."""
    import signal

    numbers = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]
    return [number for number in numbers if signal.getsignal(number) is not signal.SIG_IGN]


class StopFlag:
    """Inside, a first Ctrl-C (or SIGTERM, or SIGHUP) only sets `stop`, so that what is under way ends whole (a
    training step and its checkpoint, a gather of every process's results); a second one stops at once."""

    SIGNALS = tuple(stop_signals())

    def __init__(self, on_first=None):
        self.stop = False
        self._previous: dict = {}
        self._on_first = on_first  # says what happens now: a stage's evaluation may take a while to finish

    def __enter__(self):
        def handler(signum, frame):
            if self.stop:
                raise KeyboardInterrupt
            self.stop = True
            if self._on_first is not None:
                self._on_first()

        try:
            import signal

            self._previous = {s: signal.signal(s, handler) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc):
        import signal

        for s, previous in self._previous.items():
            signal.signal(s, previous)


def stop_like_ctrl_c() -> None:
    """`kill PID` (SIGTERM, as timeout(1), systemd and batch schedulers send it) or a closed terminal (SIGHUP)
    stops rmt as Ctrl-C does: temporaries removed, a training run saved, exit 130. Installed first thing, so that a
    signal while the libraries load is an interrupt too."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        for number in stop_signals():
            if number != signal.SIGINT:  # Python's own handler raises KeyboardInterrupt
                signal.signal(number, interrupt)
    except ValueError:  # not the main thread (rmt called from a library's worker thread): leave it alone
        pass


def ignore_stop_signals() -> None:
    """Once the exit code is decided: a signal while the interpreter shuts down (a few tenths of a second after
    the output is out) would end the process by the signal instead of with that code."""
    import signal

    try:
        for number in stop_signals():
            signal.signal(number, signal.SIG_IGN)
    except ValueError:
        pass


# What a model whose arithmetic broke (a NaN or zero in its config) is told, wherever its numbers come out.
NON_FINITE_SCORES = "the model produced non-finite scores (NaN or infinity); is its config sound?"


class RMTError(Exception):
    """A failure at run time (exit 1)."""

    exit_code = 1


class UsageError(RMTError):
    """Bad usage or bad input: a recipe, a path, a file the user gave us (exit 2)."""

    exit_code = 2


def shown(text: object, limit: int = 200) -> str:
    """Text from a file or a path made safe for a one-line message: newlines and control characters escaped (as
    repr escapes them), and cut to `limit` characters, so a crafted file cannot break or flood the terminal."""
    text = str(text)
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def unicode_text(text: object) -> str:
    """`text` as valid Unicode: a byte of a file name that is not UTF-8 (`o\\xe9.st`, which Python holds as the lone
    surrogate U+DCE9) becomes the text `\\udce9`, as error lines write it; JSON's own `\\udce9` escape would be a lone
    surrogate, which strict parsers refuse (the thirteenth review)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def named_paths(paths: list[str], most: int = 3) -> str:
    """A few paths for a one-line message: the first `most`, then how many more."""
    named = ", ".join(shown(p, 120) for p in paths[:most])
    return named + (f" and {len(paths) - most} more" if len(paths) > most else "")


def one_line(text: object) -> str:
    """A whole message on one terminal line: control characters escaped, nothing cut."""
    return shown(text, limit=1_000_000)


def error_line(error: BaseException) -> str:
    """An exception's message on one line (its lines joined), escaped and cut: it may quote text from a file."""
    return shown(" ".join(str(error).split())) if str(error).strip() else type(error).__name__


def write_failure(error: BaseException) -> str:
    """Why a file could not be written (a full disk, a size limit), on one line: an OSError's reason, or a
    safetensors error's (it raises its own type, not OSError) without its prefix."""
    if isinstance(error, OSError) and error.strerror:
        return shown(error.strerror)
    return shown(error_line(error).removeprefix("Error while serializing: "))


def json_loads(text: str | bytes):
    """json.loads for a file rmt did not necessarily write: nesting too deep for the parser (it recurses, so a few
    kB of `[[[[` raise RecursionError, which handlers of bad JSON missed) is a ValueError, as other invalid JSON."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def json_object(raw: bytes, where: str, name: str) -> dict:
    """The JSON object a settings file `name` (config.json, rmt.json, ...) holds, or a UsageError line saying why
    it holds none."""
    import json

    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{where}: {name} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{where}: {name} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise UsageError(f"{where}: {name} is nested too deeply to be a setting") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: {name} must hold a JSON object {{...}} at the top level, not a "
                         f"{type(data).__name__}")
    return data


def counted(number: int, noun: str) -> str:
    """"1 segment", "2,048 segments": a count and its noun, in the plural unless the count is one."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def path_argument(value, what: str):
    """A path the Python API was given: a str or an os.PathLike, returned as it is; anything else (None, a number)
    is a UsageError naming `what`, not a TypeError from deep inside pathlib."""
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{what}: a path (str or os.PathLike), not {type(value).__name__}")
    name = os.fspath(value)
    if not name:  # Path("") is ".": the current folder, which nobody meant
        raise UsageError(f"{what}: an empty path ('') names no file or folder")
    if ("\0" if isinstance(name, str) else b"\0") in name:  # the system would raise a ValueError
        raise UsageError(f"{what}: {shown(name, 80)}: holds a NUL character, which no file name can")
    return value


def callback_argument(value, what: str):
    """A callback the Python API was given: None or something callable, else a UsageError now (not a TypeError at
    its first call, after work)."""
    if value is not None and not callable(value):
        raise UsageError(f"{what}: a function (or None), not {type(value).__name__}")
    return value


def bool_argument(value, what: str) -> bool:
    """A switch the Python API was given: True or False (force="no" forced), else a UsageError."""
    if not isinstance(value, bool):
        raise UsageError(f"{what}: True or False, not {type(value).__name__}")
    return value


def whole_number_argument(value, what: str, low: int = 1) -> int:
    """A count the Python API was given: an int (not a bool, not 2.5) of at least `low`, else a UsageError."""
    if type(value) is not int or value < low:
        raise UsageError(f"{what} {shown(repr(value), 40)}: a whole number, at least {low}")
    return value
