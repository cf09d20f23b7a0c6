"""Rate-limited logging of rejected live messages, shared by every live source."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

LOG_FIRST = 5
"""Rejections logged in full per reason and window; the rest go into the window's summary."""
LOG_WINDOW = 60.0
DETAIL_CHARS = 200


class RejectLog:
    """Rate-limited logging of rejections, so a flood of bad messages cannot fill the disk.

    Per window of ``window`` seconds the first ``first`` events of each reason are logged in full;
    later ones are only counted and reported in one summary line when the window has passed (at
    the next event) or at :meth:`flush` (called by ``close()``).
    """

    def __init__(
        self,
        logger: logging.Logger,
        label: Callable[[], str],
        *,
        first: int = LOG_FIRST,
        window: float = LOG_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._label = label
        self._first = first
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._logged: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()

    def __call__(
        self, reason: str, message: str, *, level: int = logging.WARNING, exc_info: bool = False
    ) -> None:
        with self._lock:
            summary = self._roll() if self._clock() - self._start >= self._window else None
            shown = self._logged[reason] < self._first
            if shown:
                self._logged[reason] += 1
                last = self._logged[reason] == self._first
            else:
                self._suppressed[reason] += 1
        if summary:
            self._logger.warning("%s", summary)
        if shown:
            tail = f" (further {reason!r} events are summarised every {self._window:g} s)" if last else ""
            self._logger.log(level, "%s: %s%s", self._label(), _printable(message), tail, exc_info=exc_info)

    def flush(self) -> None:
        """Log the summary of suppressed events now, if there are any."""
        with self._lock:
            summary = self._roll()
        if summary:
            self._logger.warning("%s", summary)

    def _roll(self) -> str | None:
        now = self._clock()
        elapsed = now - self._start
        suppressed, self._suppressed = self._suppressed, Counter()
        self._logged.clear()
        self._start = now
        if not suppressed:
            return None
        counts = ", ".join(f"{reason} x{n}" for reason, n in suppressed.most_common())
        total = sum(suppressed.values())
        return f"{self._label()}: {total} more rejections in the last {elapsed:.0f} s: {counts}"


def _printable(text: str) -> str:
    """One log line: control characters from the sender escaped."""
    from metabgm_edge.state import printable

    return printable(text)
