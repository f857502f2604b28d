"""Errors that the CLI turns into one clear line and an exit code (never a traceback)."""


class RMTError(Exception):
    """A failure at run time (exit 1)."""

    exit_code = 1


class UsageError(RMTError):
    """Bad usage or bad input: a recipe, a path, a file the user gave us (exit 2)."""

    exit_code = 2
