"""A progress bar on standard error for long CLI work (a large ``numbers import``, a month's
``report``): drawn only on a terminal unless asked for, redrawn at most ten times a second,
so a pipe or a log gets nothing and a fast run costs nothing."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

MODES = ("auto", "always", "never")
_WIDTH = 30
_EVERY = 0.1  # seconds between redraws


def wanted(mode: str, stream: TextIO) -> bool:
    """``--progress auto`` draws on a terminal only; ``always`` and ``never`` say so."""
    if mode == "auto":
        return stream.isatty()
    return mode == "always"


class Progress:
    """``label [#####-----]  45%  22,500/50,000``; a total of 0 means unknown (a count)."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = max(0, total)
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._clock = clock
        self._started = clock()
        self._drawn = float("-inf")
        self._closed = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._enabled and self._clock() - self._drawn >= _EVERY:
            self._draw()

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """``items`` unchanged, counting each; the bar is finished when they run out."""
        for item in items:
            yield item
            self.advance()
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._enabled:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self) -> None:
        self._drawn = now = self._clock()
        took = f"{now - self._started:.1f}s"
        if self.total:
            share = min(1.0, self.done / self.total)
            bar = "#" * round(share * _WIDTH)
            text = (f"{self.label} [{bar:-<{_WIDTH}}] {share:4.0%}  "
                    f"{self.done:,}/{self.total:,}  {took}")
        else:
            text = f"{self.label}  {self.done:,}  {took}"
        self._stream.write("\r" + text)
        self._stream.flush()
