"""Replay a recorded session: ``replay:FILE.jsonl``.

One live-state message per line, each with ``"t"``: seconds since the recording started
(``metabgm-edge record`` writes such files). With the real clock the session replays in its
original timing; with ``--fast`` as fast as possible. Lines that fail validation are skipped,
counted and logged with their line number; they never stop the replay.
"""

from __future__ import annotations

import bisect
import logging
from pathlib import Path

from metabgm_edge.errors import MessageError, SourceError
from metabgm_edge.sources import Source
from metabgm_edge.state import MAX_MESSAGE_BYTES, SceneState, parse_message

log = logging.getLogger(__name__)


class ReplaySource(Source):
    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.uri = f"replay:{path}"
        self.path = Path(path)
        self._times: list[float] = []
        self._states: list[SceneState] = []

    def start(self) -> None:
        try:
            fh = self.path.open("rb")
        except OSError as exc:
            raise SourceError(f"cannot open replay file {self.path}: {exc.strerror}") from None
        with fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    state, env = parse_message(line[: MAX_MESSAGE_BYTES + 1].rstrip(b"\r\n"))
                    if env.t is None or env.t < 0:
                        raise MessageError("missing_time", 'each replay line needs "t" >= 0 (seconds)')
                    if self._times and env.t < self._times[-1]:
                        raise MessageError("time_goes_back", f"t={env.t} after t={self._times[-1]}")
                except MessageError as exc:
                    self._count(exc.reason)
                    log.warning("%s:%d: skipped: %s", self.path, lineno, exc)
                    continue
                self._count(None)
                self._times.append(env.t)
                self._states.append(state)
        if not self._states:
            raise SourceError(f"replay file {self.path} holds no valid message")
        log.info("%s: %d messages over %.1f s", self.path, len(self._states), self._times[-1])
        self._end = self._times[-1]
        self._now = 0.0

    def sample(self, now: float) -> SceneState | None:
        self._now = now
        i = bisect.bisect_right(self._times, now) - 1
        return self._states[max(i, 0)]

    @property
    def finished(self) -> bool:
        return bool(self._states) and self._now >= self._end
