"""Progress bars with ETA (rich) for the long stages: training steps, calibration, conversion, evaluation.

A bar is drawn on a terminal while its stage runs and erased when it ends (the stage then says what it
did in one line), so a command's output stays short; elsewhere (a pipe, a log) nothing is drawn. One bar
at a time: a stage inside another one's bar runs without its own.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Optional, TypeVar

from rich import get_console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
_active = False


class Bar:
    """One stage's bar: `advance()` per unit of work; `update()` sets the total or the description."""

    def __init__(self, progress: Optional[Progress] = None, task: Optional[TaskID] = None):
        self._progress, self._task = progress, task
        self.total: Optional[float] = None

    def advance(self, amount: float = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)

    def update(self, total: Optional[float] = None, description: Optional[str] = None) -> None:
        if total is not None:
            self.total = total
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total, description=description)


@contextmanager
def stage(description: str, total: Optional[float] = None) -> Iterator[Bar]:
    """A bar for the block: counted with ETA when `total` is known (now or via `Bar.update`), else a
    spinner with the elapsed time. Drawn on a terminal only."""
    global _active
    if _active:
        yield Bar()
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    _active = True
    try:
        with Progress(*columns, transient=True, disable=not get_console().is_terminal) as progress:
            bar = Bar(progress, progress.add_task(description, total=total))
            bar.total = total
            yield bar
    finally:
        _active = False


class Tracked(Sequence[T]):
    """`items` as a sequence whose iteration advances a bar (for APIs that take a sequence of frames)."""

    def __init__(self, items: Sequence[T], bar: Bar):
        self._items, self._bar = items, bar

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):  # type: ignore[override]
        return self._items[index]

    def __iter__(self) -> Iterator[T]:
        for item in self._items:
            yield item
            self._bar.advance()
