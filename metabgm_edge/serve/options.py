"""The arguments of the ``serve`` application (the config file's ``args:``), and the host they build."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from metabgm_edge.errors import MetabgmError


class ServeArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    source: str = "udp://127.0.0.1:7717"
    """Where every player's game sends its states (udp://, ws:// or minecraft://); each message names
    its ``player``."""
    audio_listen: str = "127.0.0.1:8765"
    """Where players connect for their music: ws://HOST:PORT/PLAYER (loopback unless set)."""
    audio_secret: str = ""
    """Makes each player's token (HMAC); ``serve`` makes a random one when empty."""
    audio_format: Literal["opus", "flac", "pcm16"] = "opus"
    """Sent to a client that does not ask for a format."""
    text: str = "composer"
    """The Text deployment's backend: composer or an LLM bundle folder."""
    audio: str = "synth"
    """The Audio deployment's backend: synth or a MusicGen bundle folder."""
    text_threads: int | None = None
    audio_threads: int | None = None
    interval: float = 10.0
    deadline: float | None = None
    crossfade: float = 0.5
    sample_period: float = 1.0
    text_share: float = 0.6
    mode: Literal["two-stage", "direct"] = "two-stage"
    seed: int = 0
    transitions: bool = True
    forget: float = 30.0
    """Seconds after which a player not heard from is forgotten (its session ends)."""
    retry_audio_after: float = 30.0
    """After the audio deployment failed a player's segments 3 times in a row the synthesizer plays
    for this long, then the deployment gets another try."""
    profile: str | None = None

    @classmethod
    def from_dict(cls, args: dict[str, Any] | None) -> ServeArgs:
        try:
            return msgspec.convert(dict(args or {}), cls)
        except msgspec.ValidationError as exc:
            raise MetabgmError(f"serve config, args: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    def listen_address(self) -> tuple[str, int]:
        host, sep, port = self.audio_listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise MetabgmError(f"audio_listen={self.audio_listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
        return (host.strip("[]") or "127.0.0.1"), int(port)


def build_host(args: ServeArgs, text: Any, audio: Any) -> Any:
    """The :class:`~metabgm_edge.serve.host.PlayerHost` these arguments describe, on these backends."""
    from metabgm_edge.audio import open_audio_backend
    from metabgm_edge.listener_profile import load_profile
    from metabgm_edge.scheduler import PlayOptions
    from metabgm_edge.serve.host import PlayerHost
    from metabgm_edge.serve.stream import AudioServer
    from metabgm_edge.sources import LiveSource, open_source

    source = open_source(args.source, seed=args.seed)
    if not isinstance(source, LiveSource):
        raise MetabgmError(
            f"serve needs a live source that players send to (udp://, ws://, minecraft://), not {args.source}"
        )
    if "forget=" not in args.source:
        source.forget_after = args.forget
    host, port = args.listen_address()
    if not args.audio_secret:
        raise MetabgmError("serve config, args: audio_secret is empty (serve makes one when it starts)")
    server = AudioServer(host, port, secret=args.audio_secret.encode(), default_format=args.audio_format)
    options = PlayOptions(
        interval=args.interval, sample_period=args.sample_period, deadline=args.deadline,
        crossfade=args.crossfade, text_share=args.text_share, mode=args.mode, seed=args.seed,
        transitions=args.transitions, retry_audio_after=args.retry_audio_after,
    )  # fmt: skip
    return PlayerHost(source, text, audio, server, options=options, profile=load_profile(args.profile),
                      fallback_audio=lambda: open_audio_backend("synth"))  # fmt: skip
