"""The one progress bar of long work (train, ingest, perplexity, eval): on stderr, with tokens per second.

`ProgressBar(console, label, total)` is a context manager; a `None` console (quiet, or not the main process)
makes every call a no-op, so callers never branch on whether a bar is shown.
"""

from __future__ import annotations

import time


class ProgressBar:
    def __init__(self, console, label: str, total: float | None = None, completed: float = 0,
                 keep: bool = False, count: bool = False):
        """`keep`: leave the finished bar on screen (training); `count`: show done/total and the time left
        (steps) instead of a percentage (bytes, tokens)."""
        self.console, self.label, self.total, self.completed = console, label, total, completed
        self.keep, self.count = keep, count
        self._bar = None
        self._started = time.perf_counter()

    def __enter__(self) -> ProgressBar:
        # A transient bar on a stderr that is no terminal would show nothing but leave a blank line behind
        if self.console is None or not (self.keep or self.console.is_terminal):
            return self
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        columns = [TextColumn("{task.description}"), BarColumn(),
                   MofNCompleteColumn() if self.count else TaskProgressColumn(), TextColumn("{task.fields[stats]}"),
                   TimeRemainingColumn() if self.count else TimeElapsedColumn()]
        self._bar = Progress(*columns, console=self.console, transient=not self.keep)
        self._bar.__enter__()
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.completed, stats="")
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def speed(self, tokens: float) -> str:
        """Tokens per second since the bar started, as the stats show it."""
        return f"{tokens / max(time.perf_counter() - self._started, 1e-9):,.0f} tok/s"

    def update(self, completed: float | None = None, advance: float | None = None, total: float | None = None,
               label: str | None = None, stats: str | None = None) -> None:
        if self._bar is None:
            return
        fields = {k: v for k, v in (("completed", completed), ("advance", advance), ("total", total),
                                    ("description", label), ("stats", stats)) if v is not None}
        self._bar.update(self._task, **fields)
