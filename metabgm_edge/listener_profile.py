"""Listener profile: the personalization the paper's title promises.

A small TOML or JSON file::

    name = "calm-explorer"
    prefer_genres = ["ambient", "folk"]
    avoid_genres = ["metal"]
    prefer_instruments = ["piano", "flute"]
    avoid_instruments = ["drums"]
    intensity = 0.3   # 0 gentle .. 1 intense; scales dynamics and tempo

It conditions stage 2 for every text backend: the composer rules read it directly, an LLM gets it
as one line appended to the prompt, and the final description is checked against the avoid lists.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from metabgm_edge.errors import MetabgmError
from metabgm_edge.paths import find_profile

Word = Annotated[str, Meta(min_length=1, max_length=32)]
Words = Annotated[list[Word], Meta(max_length=16)]


class Profile(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: str = "default"
    prefer_genres: Words = msgspec.field(default_factory=list)
    avoid_genres: Words = msgspec.field(default_factory=list)
    prefer_instruments: Words = msgspec.field(default_factory=list)
    avoid_instruments: Words = msgspec.field(default_factory=list)
    intensity: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5

    @property
    def is_default(self) -> bool:
        return self == DEFAULT_PROFILE

    def avoided(self) -> list[str]:
        return [w.lower() for w in (*self.avoid_genres, *self.avoid_instruments)]

    def prompt_line(self) -> str:
        """One sentence for an LLM's stage-2 prompt; empty for the default profile."""
        if self.is_default:
            return ""
        parts: list[str] = []
        if self.prefer_genres:
            parts.append("prefers " + ", ".join(self.prefer_genres))
        if self.prefer_instruments:
            parts.append("likes " + ", ".join(self.prefer_instruments))
        avoid = [*self.avoid_genres, *self.avoid_instruments]
        if avoid:
            parts.append("never use " + ", ".join(avoid))
        level = "gentle" if self.intensity < 0.34 else "intense" if self.intensity > 0.66 else "moderate"
        parts.append(f"wants {level} intensity")
        return "The listener " + "; ".join(parts) + "."


DEFAULT_PROFILE = Profile()


def load_profile(path: str | Path | None) -> Profile:
    if path is None:
        return DEFAULT_PROFILE
    path = find_profile(path)  # a bare name: that profile in the profiles folder
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MetabgmError(f"cannot read profile {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode()) if path.suffix != ".json" else msgspec.json.decode(raw)
        return msgspec.convert(data, Profile)
    except (tomllib.TOMLDecodeError, msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MetabgmError(f"invalid profile {path}: {exc}") from None
