"""From a state to a music description (paper II-C).

``two-stage`` (the paper's method): characterize -> stage 1 narrative -> stage 2 description.
``direct`` (the paper's ablation): characterize -> description in one request.

Every backend's final description is cleaned, checked against the listener profile's avoid
lists and cut to :data:`MAX_WORDS` words; a cut is logged and reported in the result.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from metabgm_edge.characterize import characterize, in_combat, info_str, scene_data
from metabgm_edge.errors import BackendError
from metabgm_edge.listener_profile import DEFAULT_PROFILE, Profile
from metabgm_edge.state import SceneState, Window
from metabgm_edge.text import ChatMessage, Stage, StageRequest, TextBackend

log = logging.getLogger(__name__)

MAX_WORDS: Final = 20
NARRATIVE_TOKENS: Final = 80
"""Two or three sentences; the budget that keeps both stages of a segment near 2.5 s on 2 CPU cores."""
DESCRIPTION_TOKENS: Final = 40
"""20 words are about 26-30 tokens; the rest is margin before the cut."""
Mode = Literal["two-stage", "direct"]
MODES: Final = ("two-stage", "direct")

StageRunner = Callable[[TextBackend, StageRequest], str]
"""Runs one stage on a backend. The scheduler passes one that enforces deadlines and falls back."""


class DescribeResult(msgspec.Struct, kw_only=True):
    mode: str
    backend: str
    combat: bool
    characterized: dict[str, Any]
    info_str: str
    narrative: str | None
    description: str
    timings: dict[str, float]
    """Seconds per step: characterize, narrative, description (or direct)."""
    cut: bool = False
    """True when the description was longer than MAX_WORDS and was cut."""
    seed: int = 0


@functools.cache
def prompt_template(name: str) -> str:
    """A template from prompts/: packaged in the wheel, or beside the package in a checkout."""
    packaged = resources.files("metabgm_edge").joinpath("prompts", f"{name}.txt")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parent.parent / "prompts" / f"{name}.txt"
    return checkout.read_text(encoding="utf-8")


def render_prompt(
    stage: Stage, *, info: str = "", narrative: str = "", profile: Profile = DEFAULT_PROFILE
) -> str:
    text = prompt_template(stage)
    text = text.replace("{info_str}", info).replace("{scene}", narrative)
    line = profile.prompt_line()
    if line and stage != "narrative":
        text = f"{text}\n{line}"
    return text


_PREFIX = re.compile(r"^\s*(?:music description|description|narrative|scene|answer)\s*:\s*", re.IGNORECASE)


def clean_text(text: str) -> str:
    """One paragraph without surrounding quotes or a leading label such as "Description:"."""
    text = " ".join(text.split())
    text = _PREFIX.sub("", text)
    return text.strip().strip('"').strip("'").strip()


def limit_words(text: str, limit: int = MAX_WORDS) -> tuple[str, bool]:
    words = text.split()
    if len(words) <= limit:
        return text, False
    cut = " ".join(words[:limit]).rstrip(",;:-")
    if not cut.endswith((".", "!", "?")):
        cut += "."
    return cut, True


_SEPARATOR = re.compile(
    r"(\s*(?:[,;:()]|\.(?=\s|$)|\b(?:and|with|featuring|plus|over|under)\b)\s*)", re.IGNORECASE
)
_ITEM_WORDS: Final = 5
"""A list item with an avoided word and at most this many words goes as a whole ("a string quartet")."""


def enforce_profile(text: str, profile: Profile) -> str:
    """Take what the listener avoids out of a description (a backend may ignore the prompt's
    request): any word form or synonym of an avoided instrument or genre (see
    :meth:`Profile.avoided`). A short list item that holds one ("thumping drums", "a string
    quartet") goes as a whole, with its separator; in a longer phrase only the words go."""
    matcher = profile.matcher()
    if matcher is None or not matcher.search(text):
        return text
    found = sorted({m.group(0).lower() for m in matcher.finditer(text)})
    log.info("profile %s: removed avoided %s from the description", profile.name, ", ".join(map(repr, found)))
    parts = _SEPARATOR.split(text)  # items at even indexes, separators at odd ones
    for i in range(0, len(parts), 2):
        item = parts[i]
        if not matcher.search(item):
            continue
        if len(item.split()) <= _ITEM_WORDS:
            parts[i] = ""
            # Drop the separator after it (or, at the end, the one before it) unless it ends a sentence.
            if i + 1 < len(parts) and parts[i + 1].strip() not in (".", ")"):
                parts[i + 1] = " " if parts[i + 1].strip() in ("and", "with", "featuring", "plus") else ""
            elif i - 1 >= 0 and parts[i - 1].strip() not in (":", "("):
                parts[i - 1] = ""
        else:
            parts[i] = matcher.sub("", item)
    text = "".join(parts)
    text = re.sub(r"\s+([,.;:)])", r"\1", " ".join(text.split()))
    text = re.sub(r"(?:,\s*){2,}", ", ", text)
    text = re.sub(r"\b(and|with|featuring|plus)\s+(?=[,.;:]|and\b|with\b|$)", "", text, flags=re.IGNORECASE)
    text = re.sub(r"([:;,])\s*([.;,])", r"\2", text)
    text = re.sub(r"\(\s*\)", "", text)
    return " ".join(text.split()).strip(" ,;:")


def _call(backend: TextBackend, request: StageRequest) -> str:
    return backend.generate(request)


def _text_of(raw: str, backend: TextBackend, stage: str) -> str:
    text = clean_text(raw)
    if not text:
        raise BackendError(f"{backend.name} wrote no text for the {stage} stage")
    return text


def describe(
    scene: SceneState | Window,
    backend: TextBackend,
    *,
    mode: Mode = "two-stage",
    profile: Profile = DEFAULT_PROFILE,
    seed: int = 0,
    run_stage: StageRunner = _call,
) -> DescribeResult:
    """Characterize ``scene`` and run the stages on ``backend``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if isinstance(scene, Window):
        combat, data = scene.combat, scene_data(scene.latest, scene)
    else:
        combat, data = in_combat(scene), scene_data(scene)
    characterized = characterize(data, combat)
    info = info_str(characterized)
    timings["characterize"] = time.perf_counter() - t0

    def request(stage: Stage, prompt: str, narrative: str | None = None) -> StageRequest:
        return StageRequest(
            stage=stage,
            messages=[ChatMessage("user", prompt)],
            characterized=characterized,
            combat=combat,
            narrative=narrative,
            profile=profile,
            seed=seed,
            max_new_tokens=NARRATIVE_TOKENS if stage == "narrative" else DESCRIPTION_TOKENS,
        )

    narrative: str | None = None
    if mode == "two-stage":
        t0 = time.perf_counter()
        raw = run_stage(backend, request("narrative", render_prompt("narrative", info=info)))
        narrative = _text_of(raw, backend, "narrative")
        timings["narrative"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        prompt = render_prompt("description", narrative=narrative, profile=profile)
        raw = run_stage(backend, request("description", prompt, narrative))
        timings["description"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        raw = run_stage(backend, request("direct", render_prompt("direct", info=info, profile=profile)))
        timings["direct"] = time.perf_counter() - t0
    description, cut = limit_words(enforce_profile(_text_of(raw, backend, mode), profile))
    if cut:
        log.info("description cut to %d words (%s wrote %d)", MAX_WORDS, backend.name, len(raw.split()))
    return DescribeResult(
        mode=mode,
        backend=backend.name,
        combat=combat,
        characterized=characterized,
        info_str=info,
        narrative=narrative,
        description=description,
        timings=timings,
        cut=cut,
        seed=seed,
    )
