"""The text and audio deployments seen from a session: Ray Serve handles behind the text and
audio interfaces (:class:`~metabgm_edge.text.TextBackend`, :class:`~metabgm_edge.audio.AudioBackend`).

A session calls them exactly as it calls a local backend, on its worker threads, with its own
deadlines; each call is one request to the deployment, which batches concurrent requests from
all players (``@serve.batch``) when its backend gains from it. A replica that dies mid-request
makes the call raise (the session's named fallback plays); Ray starts a new replica and the
next calls go there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Final

from metabgm_edge.audio.interface import Anchor, AudioChunk, AudioRequest, interleave
from metabgm_edge.text import StageRequest

log = logging.getLogger(__name__)

CALL_TIMEOUT_S: Final = 120.0
"""A call abandoned by its session (deadline) still ends by itself after this long."""


class RemoteText:
    """A :class:`~metabgm_edge.text.TextBackend` that is the ``Text`` deployment."""

    batches = True
    """The deployment batches across sessions; one session's requests go one at a time."""

    def __init__(self, handle: Any, info: dict[str, Any]) -> None:
        self._handle = handle
        self.info = info
        self.name = f"{info['name']} (Ray Serve)"

    def generate(self, request: StageRequest) -> str:
        return str(self._handle.generate.remote(request).result(timeout_s=CALL_TIMEOUT_S))

    def generate_batch(self, requests: Sequence[StageRequest]) -> list[str]:
        responses = [self._handle.generate.remote(r) for r in requests]
        return [str(r.result(timeout_s=CALL_TIMEOUT_S)) for r in responses]


class RemoteAudio:
    """An :class:`~metabgm_edge.audio.AudioBackend` that is the ``Audio`` deployment: chunks are
    streamed back as the replica yields them."""

    def __init__(self, handle: Any, info: dict[str, Any]) -> None:
        self._handle = handle.options(stream=True)
        self._unary = handle
        self.info = info
        self.name = f"{info['name']} (Ray Serve)"
        self.kind = str(info["kind"])
        self.sample_rate = int(info["sample_rate"])
        self.channels = int(info["channels"])
        self.batches = bool(info["batches"])

    def stream(self, request: AudioRequest) -> Iterator[AudioChunk]:
        responses = self._handle.stream.remote(request)
        try:
            for chunk in responses:
                yield chunk
                if chunk.last:
                    return
        finally:
            responses.cancel()

    def stream_batch(self, requests: Sequence[AudioRequest]) -> Iterator[list[AudioChunk | None]]:
        return interleave([self.stream(r) for r in requests])

    def realtime_factor(self) -> float:
        return float(self.info["realtime_factor"])

    def anchor_from_bytes(self, data: bytes) -> Anchor:
        """Decoded by the replica's own backend (this process knows no backend's anchor type)."""
        anchor: Anchor = self._unary.anchor_from_bytes.remote(data).result(timeout_s=CALL_TIMEOUT_S)
        return anchor
