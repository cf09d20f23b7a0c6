"""The embedded text backend: deterministic composer rules, no model.

Stage 1 ("narrative") imagines the scene as a real place (:mod:`.narrative`). Stage 2
("description") writes at most 20 words of music description: tempo in words and BPM, key and
mode, instruments with how they are played, dynamics and mood, the way MusicCaps musicians write
("A slow ambient piece in D minor, 64 BPM, with droning pad, echoing bells and low cello; soft,
mysterious."). The plan behind it comes from the structured state (:mod:`.score`), so the rules
need not parse the narrative; the narrative only seeds the wording, which chains the two stages.
"direct" (the paper's ablation) goes from the state to a plainer description in one step.

Determinism: the same request (state, stage, narrative, profile, seed) gives the same text, in any
process. Another seed gives other wording and a slightly different arrangement; key and tempo
depend on the scene alone, so a scene that holds keeps its key while the scheduler's per-segment
seed keeps the wording moving.

The words a synthesizer reads are kept unambiguous: exactly one tempo word (slow, moderate, fast,
driving) and one dynamics word (soft, gentle, loud, intense) per description, BPM as "72 BPM",
the key as "D minor", and instrument names from :data:`metabgm_edge.music_words.WRITTEN_INSTRUMENTS`
(the vocabulary the synthesizer reads).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import zlib
from collections.abc import Sequence
from typing import Final

from metabgm_edge.text import StageRequest
from metabgm_edge.text.music_plan import Avoid, Plan, Voice, plan_music
from metabgm_edge.text.narrative import write_narrative
from metabgm_edge.text.scene_view import SceneView, read_scene
from metabgm_edge.text.vocabulary import Vocabulary, load_vocabulary

log = logging.getLogger(__name__)

MAX_WORDS: Final = 20

# Description shapes. Slots: {tempo} {Tempo} {bpm} {key} {genre_} (genre and a space, or nothing)
# {inst} {Inst} {dyn} {Dyn} {moods} {Moods}. Each states tempo, key, instruments, dynamics, mood.
TEMPLATES: Final = (
    "A {tempo} {genre_}piece in {key}, {bpm}, with {inst}; {dyn}, {moods}.",
    "{Tempo} {genre_}music at {bpm} in {key}: {inst}. {Dyn}, {moods}.",
    "{A_dyn}, {moods} {genre_}piece in {key} at a {tempo} {bpm}, featuring {inst}.",
    "A {tempo} {genre_}arrangement in {key} at {bpm} for {inst}; {dyn}, {moods}.",
    "This {dyn} {genre_}track in {key} moves at a {tempo} {bpm} with {inst}; {moods}.",
    "{Tempo}, {dyn} {genre_}piece in {key} at {bpm}: {inst}. The mood is {moods}.",
)
DIRECT_TEMPLATE: Final = "{Tempo} {genre_}music in {key} at {bpm} with {inst}; {dyn} and {moods}."
FALLBACK: Final = {
    "narrative": "A lone traveler stands in a quiet land, the air mild and still.",
    "description": "A slow ambient piece in C major, 72 BPM, with mellow piano and warm pad; gentle, calm.",
}


def words(text: str) -> int:
    return len(text.split())


def _seed_rng(*parts: object) -> random.Random:
    """A generator seeded from text: the same in every process (no hash randomization)."""
    return random.Random("|".join(str(p) for p in parts))


def _signature(view: SceneView) -> str:
    """The coarse scene: what the music depends on, without coordinates or exact numbers."""
    ratio = view.health_ratio
    health = None if ratio is None else "low" if ratio < 0.35 else "hurt" if ratio < 0.6 else "fine"
    return ":".join(
        str(x)
        for x in (
            view.biome_id, view.dimension, view.phase, view.weather, view.feel, view.combat,
            view.movement, sorted(view.flags), view.underground, health,
            tuple(n for n, _ in view.hostiles[:3]), len(view.biomes_visited) > 1,
        )
    )  # fmt: skip


class Composer:
    """Deterministic composer rules: the default text backend, and every backend's fallback."""

    name = "composer"
    batches = False
    """Rules take microseconds: nothing to gain from batching."""

    def __init__(self, vocabulary: Vocabulary | None = None) -> None:
        self.vocabulary = vocabulary if vocabulary is not None else load_vocabulary()

    def generate_batch(self, requests: Sequence[StageRequest]) -> list[str]:
        return [self.generate(r) for r in requests]

    def generate(self, request: StageRequest) -> str:
        if request.stage not in ("narrative", "description", "direct"):
            raise ValueError(f"unknown stage {request.stage!r}: use narrative, description or direct")
        try:
            view = read_scene(request.characterized, request.combat)
            if request.stage == "narrative":
                return write_narrative(view, _seed_rng(request.seed, "narrative", _signature(view)))
            return self.describe(view, request)
        except Exception:  # the rules must never stop the music: log and use the named fallback
            log.exception("composer rules failed on %s stage; using the fixed fallback text", request.stage)
            return FALLBACK["narrative" if request.stage == "narrative" else "description"]

    def plan(self, view: SceneView, request: StageRequest) -> Plan:
        rng = _seed_rng(request.seed, "plan", _signature(view), request.profile)
        return plan_music(view, request.profile, self.vocabulary, rng)

    def describe(self, view: SceneView, request: StageRequest) -> str:
        plan = self.plan(view, request)
        avoid = Avoid(request.profile.avoided())
        if request.stage == "direct":
            text = _fit(DIRECT_TEMPLATE, plan, plain=True)
        else:
            # The narrative seeds the wording: the same story gives the same description.
            crc = zlib.crc32((request.narrative or "").encode())
            rng = _seed_rng(request.seed, "words", crc, _signature(view))
            order = rng.sample(TEMPLATES, len(TEMPLATES))
            usable = [t for t in order if not avoid(re.sub(r"\{\w+\}", " ", t))] or [DIRECT_TEMPLATE]
            plan = _shuffle_voices(plan, rng)
            text = _fit(usable[0], plan, plain=False)
        return _scrub(text, avoid)


def _shuffle_voices(plan: Plan, rng: random.Random) -> Plan:
    """Vary the order instruments are named in; preferred ones stay first."""
    fixed = [v for v in plan.voices if v.preferred]
    rest = [v for v in plan.voices if not v.preferred]
    rng.shuffle(rest)
    return dataclasses.replace(plan, voices=tuple(fixed + rest))


def _voice(voice: Voice, with_descriptor: bool) -> str:
    return (
        f"{voice.descriptor} {voice.instrument}" if with_descriptor and voice.descriptor else voice.instrument
    )


def _join(items: list[str]) -> str:
    if not items:
        return "a simple melody"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _render(
    template: str, plan: Plan, voices: list[tuple[Voice, bool]], moods: list[str], genre: bool
) -> str:
    inst = _join([_voice(v, d) for v, d in voices])
    mood_text = " and ".join(moods) if len(moods) == 2 else moods[0]
    text = template.format(
        tempo=plan.tempo, Tempo=plan.tempo.capitalize(), bpm=f"{plan.bpm} BPM", key=plan.key,
        genre_=f"{plan.genre} " if genre and plan.genre else "",
        inst=inst, Inst=inst[0].upper() + inst[1:], dyn=plan.dynamics, Dyn=plan.dynamics.capitalize(),
        A_dyn=("An " if plan.dynamics[0] in "aeiou" else "A ") + plan.dynamics,
        moods=mood_text, Moods=mood_text.capitalize(),
    )  # fmt: skip
    return " ".join(text.split())


def _fit(template: str, plan: Plan, *, plain: bool) -> str:
    """Render, then drop the least important details until the text has at most 20 words.

    Order of cuts: the last instrument's descriptor, the second mood, then descriptors from the
    back, instruments the listener did not ask for beyond the first, a genre they did not ask for."""
    voices = [(v, not (plain and i > 0)) for i, v in enumerate(plan.voices)]
    moods = list(plan.moods[:1] if plain else plan.moods[:2])
    genre = True
    text = _render(template, plan, voices, moods, genre)
    cuts = 0
    while words(text) > MAX_WORDS:
        cuts += 1
        if cuts == 1 and len(voices) > 2 and voices[-1][1] and not voices[-1][0].preferred:
            voices[-1] = (voices[-1][0], False)
        elif len(moods) > 1:
            moods.pop()
        elif any(d and not v.preferred for v, d in voices[1:]):
            i = max(i for i, (v, d) in enumerate(voices) if d and not v.preferred and i > 0)
            voices[i] = (voices[i][0], False)
        elif len(voices) > 1 and any(not v.preferred for v, _ in voices[1:]):
            i = max(i for i, (v, _) in enumerate(voices) if not v.preferred and i > 0)
            voices.pop(i)
        elif genre and not plan.genre_preferred and plan.genre:
            genre = False
        elif any(d for _, d in voices):
            i = max(i for i, (_, d) in enumerate(voices) if d)
            voices[i] = (voices[i][0], False)
        elif len(voices) > 1:
            voices.pop()
        elif template != DIRECT_TEMPLATE:
            template = DIRECT_TEMPLATE
        else:
            log.warning("description still over %d words after every cut; truncating: %r", MAX_WORDS, text)
            return " ".join(text.split()[:MAX_WORDS]).rstrip(",;:") + "."
        text = _render(template, plan, voices, moods, genre)
    if cuts:
        log.debug("description trimmed %d times to fit %d words", cuts, MAX_WORDS)
    return text


def _scrub(text: str, avoid: Avoid) -> str:
    """Last guard for the avoid list: drop any word that still matches it (logged)."""
    if not avoid(text):
        return text
    kept = [w for w in text.split() if not avoid(w)]
    log.warning("removed avoided words from the description: %r", text)
    return " ".join(kept)
