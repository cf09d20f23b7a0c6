"""The Ray Serve application of ``metabgm-edge serve``: three deployments.

- ``Text``: the text stages' backend (the composer rules or an LLM bundle), shared by all
  players. Concurrent requests from several players are gathered by ``@serve.batch`` and handed
  to the backend's ``generate_batch`` as one call: an LLM (``TextBackend.batches``) decodes them
  as one batch; the composer answers them one after another (nothing to gain, nothing lost).
- ``Audio``: the audio backend (the synthesizer or a MusicGen bundle), shared the same way: the
  gathered segments go to ``stream_batch`` (a batching backend runs them together; the others
  interleave their streams), and each player's chunks stream back as they come.

``max_batch_size: 1`` in a deployment's ``user_config`` turns batching off (each request is one
call). Every replica counts its calls by size (``info()["batch_sizes"]``; ``serve`` prints them).
- ``Players``: the ingress. It owns the live source all games send to, one session per player
  (:class:`~metabgm_edge.serve.host.PlayerHost`), and the WebSocket server the players listen on;
  the sessions call ``Text`` and ``Audio`` through their handles.

Replicas and resources come from a Ray Serve config file (``deployments:`` by these names: see
``metabgm_edge/serve/serve.yaml``); ``max_batch_size`` and ``batch_wait_timeout_s`` are each
deployment's ``user_config`` (``max_batch_size: 1`` turns batching off). Metrics (Ray's own
``ray_serve_*``, e.g. batch sizes and queue lengths, plus ``metabgm_*``: segments, deadline
misses, players, batch sizes per deployment) go to Ray's metrics endpoint and dashboard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator
from typing import Any, Final

from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from metabgm_edge.audio import AudioChunk, AudioRequest
from metabgm_edge.text import StageRequest

log = logging.getLogger("metabgm_edge.serve")

BATCH_BUCKETS: Final = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
_END: Final = object()


def _next(iterator: Any, lock: threading.Lock) -> Any:
    with lock:
        return next(iterator, _END)


class _Batching:
    """``user_config``: ``max_batch_size`` (1: off) and ``batch_wait_timeout_s``."""

    max_batch_size = 8
    batch_wait_timeout_s = 0.05

    def _configure(self, method: Any, config: dict[str, Any] | None) -> None:
        config = config or {}
        self.max_batch_size = int(config.get("max_batch_size", self.max_batch_size))
        self.batch_wait_timeout_s = float(config.get("batch_wait_timeout_s", self.batch_wait_timeout_s))
        if self.max_batch_size < 1 or not 0 <= self.batch_wait_timeout_s <= 10:
            raise ValueError("need max_batch_size >= 1 and 0 <= batch_wait_timeout_s <= 10")
        method.set_max_batch_size(self.max_batch_size)
        method.set_batch_wait_timeout_s(self.batch_wait_timeout_s)


@serve.deployment(name="Text", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class TextDeployment(_Batching):
    def __init__(self, backend: str = "composer", threads: int | None = None) -> None:
        from metabgm_edge.text import open_text_backend

        if backend not in ("composer", "", None) and threads is not None:
            from metabgm_edge.text.llm import LLMText

            self.backend: Any = LLMText.load(backend, threads=threads)
        else:
            self.backend = open_text_backend(backend)
        self._lock = threading.Lock()
        self._sizes = Histogram("metabgm_batch_size", description="Requests per backend call",
                                boundaries=BATCH_BUCKETS, tag_keys=("backend",))  # fmt: skip
        self._sizes.set_default_tags({"backend": "text"})
        self._in_flight = 0
        self._in_flight_gauge = Gauge("metabgm_in_flight", description="Requests inside the replica",
                                      tag_keys=("backend",))  # fmt: skip
        self._in_flight_gauge.set_default_tags({"backend": "text"})
        self.batch_log: list[int] = []
        log.info("Text replica: %s (batches: %s)", self.backend.name, self.backend.batches)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._configure(self._batched, config)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.backend.name,
            "batches": bool(self.backend.batches),
            "max_batch_size": self.max_batch_size,
            "pid": os.getpid(),
            "in_flight": self._in_flight,
            "batch_sizes": list(self.batch_log[-1000:]),
        }

    def _call(self, requests: list[StageRequest]) -> list[str]:
        self._sizes.observe(len(requests))
        self.batch_log.append(len(requests))
        with self._lock:
            return self.backend.generate_batch(requests)

    async def generate(self, request: StageRequest) -> str:
        self._in_flight += 1
        self._in_flight_gauge.set(self._in_flight)
        try:
            if self.max_batch_size > 1:
                return await self._batched(request)
            return (await asyncio.to_thread(self._call, [request]))[0]
        finally:
            self._in_flight -= 1
            self._in_flight_gauge.set(self._in_flight)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _batched(self, requests: list[StageRequest]) -> list[str]:
        return await asyncio.to_thread(self._call, requests)


@serve.deployment(name="Audio", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class AudioDeployment(_Batching):
    max_batch_size = 4

    def __init__(self, backend: str = "synth", threads: int | None = None) -> None:
        from metabgm_edge.audio import open_audio_backend

        options = {"threads": threads} if threads is not None and backend != "synth" else {}
        self.backend: Any = open_audio_backend(backend, **options)
        self._lock = threading.Lock()
        self._speed = float(self.backend.realtime_factor())
        self._sizes = Histogram("metabgm_batch_size", description="Requests per backend call",
                                boundaries=BATCH_BUCKETS, tag_keys=("backend",))  # fmt: skip
        self._sizes.set_default_tags({"backend": "audio"})
        self._in_flight = 0
        self._in_flight_gauge = Gauge("metabgm_in_flight", description="Requests inside the replica",
                                      tag_keys=("backend",))  # fmt: skip
        self._in_flight_gauge.set_default_tags({"backend": "audio"})
        self.batch_log: list[int] = []
        log.info("Audio replica: %s, %.1fx real time (batches: %s)", self.backend.name, self._speed,
                 self.backend.batches)  # fmt: skip

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._configure(self._batched, config)

    def info(self) -> dict[str, Any]:
        b = self.backend
        return {
            "name": b.name,
            "kind": b.kind,
            "sample_rate": b.sample_rate,
            "channels": b.channels,
            "batches": bool(b.batches),
            "max_batch_size": self.max_batch_size,
            "realtime_factor": self._speed,
            "pid": os.getpid(),
            "in_flight": self._in_flight,
            "batch_sizes": list(self.batch_log[-1000:]),
        }

    def anchor_from_bytes(self, data: bytes) -> Any:
        return self.backend.anchor_from_bytes(data)

    async def stream(self, request: AudioRequest) -> AsyncIterator[AudioChunk]:
        self._in_flight += 1
        self._in_flight_gauge.set(self._in_flight)
        try:
            async for chunk in self._stream(request):
                yield chunk
        finally:
            self._in_flight -= 1
            self._in_flight_gauge.set(self._in_flight)

    async def _stream(self, request: AudioRequest) -> AsyncIterator[AudioChunk]:
        if self.max_batch_size > 1:
            async for chunk in self._batched(request):
                if chunk is not None:
                    yield chunk
            return
        self._sizes.observe(1)
        self.batch_log.append(1)
        chunks = self.backend.stream(request)
        while True:
            chunk = await asyncio.to_thread(_next, chunks, self._lock)
            if chunk is _END:
                return
            yield chunk

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def _batched(self, requests: list[AudioRequest]) -> AsyncIterator[list[Any]]:
        self._sizes.observe(len(requests))
        self.batch_log.append(len(requests))
        steps = self.backend.stream_batch(requests)
        done = [False] * len(requests)
        while True:
            step = await asyncio.to_thread(_next, steps, self._lock)
            if step is _END:
                return
            out: list[Any] = []
            for i, chunk in enumerate(step):
                if done[i]:
                    out.append(StopIteration)
                    continue
                out.append(chunk)
                if chunk is not None and chunk.last:
                    done[i] = True
            yield out


@serve.deployment(
    name="Players", num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16
)
class PlayersDeployment:
    """The ingress: every player's session, the source they send to, the server they listen on."""

    def __init__(self, text_handle: Any, audio_handle: Any, args: dict[str, Any]) -> None:
        from metabgm_edge.serve.host import PlayerHost
        from metabgm_edge.serve.options import ServeArgs, build_host

        self.args = ServeArgs.from_dict(args)
        self._text_handle, self._audio_handle = text_handle, audio_handle
        self.host: PlayerHost | None = None
        self.error: str | None = None
        self._segments = Counter("metabgm_segments", description="Segments queued", tag_keys=("player",))
        self._misses = Counter("metabgm_deadline_misses", description="Segments late", tag_keys=("player",))
        self._fallbacks = Counter(
            "metabgm_fallbacks", description="Fallbacks used", tag_keys=("player", "reason")
        )
        self._players = Gauge("metabgm_players", description="Players with a session")
        self._processing = Histogram(
            "metabgm_segment_seconds", description="State to audio queued",
            boundaries=[0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 10, 15], tag_keys=("player",),
        )  # fmt: skip
        # The handles are called from the sessions' threads; their first call (info) must not run
        # on the replica's event loop, so the host starts on a thread of its own.
        self._ready = threading.Event()
        threading.Thread(target=self._start, args=(build_host,), name="metabgm-host", daemon=True).start()

    def _start(self, build_host: Any) -> None:
        from metabgm_edge.serve.remote import RemoteAudio, RemoteText

        try:
            text = RemoteText(self._text_handle, self._text_handle.info.remote().result(timeout_s=600))
            audio = RemoteAudio(self._audio_handle, self._audio_handle.info.remote().result(timeout_s=600))
            host = build_host(self.args, text, audio)
            host.on_segment = self._record
            host.start()
            self.host = host
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the Players deployment could not start")
        finally:
            self._ready.set()

    def _record(self, player: str, rec: Any) -> None:
        tags = {"player": player}
        self._segments.inc(1, tags)
        if rec.missed_deadline:
            self._misses.inc(1, tags)
        for reason in rec.fallbacks:
            self._fallbacks.inc(1, {"player": player, "reason": reason})
        self._processing.observe(rec.timings.get("total", 0.0), tags)
        if self.host is not None:
            self._players.set(len(self.host.players()))

    def check_health(self) -> None:
        if self.error is not None:
            raise RuntimeError(self.error)

    async def status(self) -> dict[str, Any]:
        import msgspec

        await asyncio.to_thread(self._ready.wait, 600)
        if self.host is None:
            return {"error": self.error or "not started"}
        status = msgspec.to_builtins(self.host.status())
        status["audio_url"] = self.host.server.url("PLAYER")
        status["forget_s"] = float(getattr(self.host.source, "forget_after", 0.0) or 0.0)
        status["tokens"] = {p["player"]: self.host.server.token(p["player"]) for p in status["players"]}
        return status

    async def backends(self) -> dict[str, Any]:
        """The text and audio replicas' info (names, pids, batch sizes seen)."""
        text, audio = self._text_handle.info.remote(), self._audio_handle.info.remote()
        return {"text": await text, "audio": await audio}

    def __del__(self) -> None:
        if getattr(self, "host", None) is not None:
            self.host.stop()  # type: ignore[union-attr]


def build(args: dict[str, Any]) -> Any:
    """The application (Ray Serve's ``import_path: metabgm_edge.serve.app:build``, ``args:``)."""
    from metabgm_edge.serve.options import ServeArgs

    parsed = ServeArgs.from_dict(args)
    text = TextDeployment.bind(parsed.text, parsed.text_threads)
    audio = AudioDeployment.bind(parsed.audio, parsed.audio_threads)
    return PlayersDeployment.bind(text, audio, parsed.to_dict())
