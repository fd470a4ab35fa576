"""Long operations are generators that yield progress and *return* their result (the convention of superqt's
GeneratorWorker): `finish` runs one to its end and hands back what it returned, in one place for every caller
(the command line, the window's engine thread, the labeling session, bench, tools)."""
from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["finish"]

R = TypeVar("R")


def finish(run: Generator[Any, Any, R], on_progress: Callable[[Any], object] | None = None) -> R:
    """Drive `run` to its end, passing each progress item to on_progress; returns the generator's result."""
    while True:
        try:
            item = next(run)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(item)
