"""How a listener's analyzer hears a render: librosa's beat tracker, RMS, spectral centroid, a
Krumhansl-Kessler key estimate and HPSS percussive energy; and the groups of MusicCaps captions
these are measured over, chosen by the captions' own aspect tags.

Used by tests/test_listening.py, and runnable on any MusicCaps-format CSV (for example a held-out
split) to print the figures:

    python tests/listening.py                                  # the committed subset (tests/data)
    python tests/listening.py --csv musiccaps-public-test.csv  # the same groups, chosen from another CSV
    python tests/listening.py --write-subset                   # rebuild tests/data from the dev CSV

Groups are chosen by rule, never by hand: a caption belongs to a group when one of its aspect tags
is one of the group's words, alone or followed by a plain noun ("happy mood", "slow tempo"); a
caption in both groups of a contrast is left out of both; from each group the first ``per_group``
captions in the order of SHA-256(ytid) are taken. Modes come from the caption text ("in a minor
key", "major chords"), since few aspect lists name one.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import io
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SR = 32000
HERE = Path(__file__).resolve().parent
SUBSET = HERE / "data" / "musiccaps-listening.csv"
DEV_CSV = HERE.parent / "data" / "musiccaps" / "musiccaps-public-dev.csv"
PER_GROUP = 36

# --- the groups ---------------------------------------------------------------------------------

GROUP_WORDS: dict[str, tuple[str, ...]] = {
    "fast": ("fast", "uptempo", "up-tempo", "up tempo", "fast-paced", "fast paced", "very fast", "quick"),
    "slow": ("slow", "very slow", "slower", "slow-paced", "slow paced"),
    "loud": ("loud", "very loud", "energetic", "high energy", "high-energy"),
    "soft": ("soft", "mellow", "quiet"),
    "bright": ("bright", "happy", "cheerful", "joyful"),
    "dark": ("dark", "sad", "melancholic", "gloomy"),
}
_NOUNS = ("", "mood", "atmosphere", "vibe", "vibes", "feel", "feeling", "song", "music", "tone", "tempo",
          "sound", "sounding")  # fmt: skip
CONTRASTS: tuple[tuple[str, str], ...] = (("fast", "slow"), ("loud", "soft"), ("bright", "dark"))
_MODE_RE = re.compile(
    r"\b(?:in (?:a |the )?(major|minor)\b|(major|minor)[ -](?:keys?|scales?|chords?|tonality|modes?|"
    r"progressions?|harmon(?:y|ies)|melod(?:y|ies)|composition|third)\b)",
    re.I,
)


@dataclass(frozen=True)
class Caption:
    ytid: str
    group: str
    caption: str
    aspects: str


def tags_of(aspect_list: str) -> list[str]:
    try:
        items = ast.literal_eval(aspect_list)
    except (ValueError, SyntaxError):
        return []
    return [str(t).lower().strip() for t in items] if isinstance(items, list | tuple) else []


def in_group(tags: Iterable[str], words: tuple[str, ...]) -> bool:
    wanted = {f"{w} {n}".strip() for w in words for n in _NOUNS}
    return any(t in wanted for t in tags)


def mode_named(caption: str) -> str | None:
    """The mode a caption names ("in a minor key", "major chords"), None when none or both."""
    found = {(a or b).lower() for a, b in _MODE_RE.findall(caption)}
    return found.pop() if len(found) == 1 else None


def _order(ytid: str) -> str:
    return hashlib.sha256(ytid.encode()).hexdigest()


def choose_groups(rows: list[dict[str, str]], per_group: int = PER_GROUP) -> list[Caption]:
    """The caption groups of a MusicCaps CSV's rows, chosen by rule (see the module docstring)."""
    out: list[Caption] = []
    tagged = [(r, tags_of(r.get("aspect_list", ""))) for r in rows]
    for a, b in CONTRASTS:
        in_a = {r["ytid"] for r, t in tagged if in_group(t, GROUP_WORDS[a])}
        in_b = {r["ytid"] for r, t in tagged if in_group(t, GROUP_WORDS[b])}
        for name, ids, other in ((a, in_a, in_b), (b, in_b, in_a)):
            chosen = sorted(
                (r for r, _ in tagged if r["ytid"] in ids - other), key=lambda r: _order(r["ytid"])
            )
            out += [Caption(r["ytid"], name, r["caption"], r["aspect_list"]) for r in chosen[:per_group]]
    for mode in ("major", "minor"):
        chosen = sorted(
            (r for r in rows if mode_named(r["caption"]) == mode), key=lambda r: _order(r["ytid"])
        )
        out += [Caption(r["ytid"], mode, r["caption"], r["aspect_list"]) for r in chosen[:per_group]]
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def load_subset(path: Path = SUBSET) -> list[Caption]:
    """The committed subset: the groups chosen from the MusicCaps dev split."""
    text = path.read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return [
        Caption(r["ytid"], r["group"], r["caption"], r["aspect_list"])
        for r in csv.DictReader(io.StringIO(body))
    ]


SUBSET_HEADER = """\
# MusicCaps captions (Agostinelli et al., "MusicLM: Generating Music From Text", 2023, Google),
# development split, licensed CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).
# This subset is shared under the same licence. Columns ytid, aspect_list and caption are the
# original ones; group is the listening group chosen by tests/listening.py (by rule, from the
# aspect tags and, for modes, from the caption text). Rebuild: python tests/listening.py --write-subset
"""


def write_subset(captions: list[Caption], path: Path = SUBSET) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["ytid", "group", "aspect_list", "caption"])
    for c in captions:
        writer.writerow([c.ytid, c.group, c.aspects, c.caption])
    path.write_text(SUBSET_HEADER + buf.getvalue(), encoding="utf-8")


# --- the measures ---------------------------------------------------------------------------------


def mono(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float32)
    return x.mean(axis=1) if x.ndim == 2 else x


def heard_tempo(audio: np.ndarray) -> float:
    """The tempo librosa's beat tracker hears (its defaults: 120 BPM prior, one octave wide)."""
    import librosa

    tempo, _ = librosa.beat.beat_track(y=mono(audio), sr=SR)
    return float(np.atleast_1d(tempo)[0])


def rms(audio: np.ndarray) -> float:
    x = mono(audio).astype(np.float64)
    return float(np.sqrt(np.mean(x**2)))


def centroid(audio: np.ndarray) -> float:
    """Mean spectral centroid in Hz over the frames that sound (within 40 dB of the loudest)."""
    import librosa

    y = mono(audio)
    c = librosa.feature.spectral_centroid(y=y, sr=SR)[0]
    e = librosa.feature.rms(y=y)[0]
    n = min(c.shape[0], e.shape[0])
    c, e = c[:n], e[:n]
    ok = e > e.max() * 0.01
    return float(np.mean(c[ok])) if ok.any() else 0.0


_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def key_of(audio: np.ndarray, *, method: str = "cqt") -> tuple[int, str]:
    """Krumhansl-Kessler key estimate: the mean of librosa's constant-Q chroma correlated with the
    24 rotated Krumhansl-Kessler profiles; (tonic pitch class, "major"/"minor"). ``method="stft"``
    uses the STFT chroma instead (whose 4 Hz bins smear bass notes into their neighbours)."""
    import librosa

    y = mono(audio)
    if method == "stft":
        chroma = librosa.feature.chroma_stft(y=y, sr=SR, n_fft=8192, hop_length=2048).mean(axis=1)
    else:
        chroma = librosa.feature.chroma_cqt(y=y, sr=SR).mean(axis=1)
    best = max(
        (float(np.corrcoef(chroma, np.roll(profile, t))[0, 1]), t, mode)
        for t in range(12)
        for mode, profile in (("major", _KK_MAJOR), ("minor", _KK_MINOR))
    )
    return best[1], best[2]


def percussive_share(audio: np.ndarray) -> float:
    """Energy of librosa's HPSS percussive part over the energy of both parts."""
    import librosa

    h, p = librosa.effects.hpss(mono(audio))
    eh, ep = float(np.sum(h.astype(np.float64) ** 2)), float(np.sum(p.astype(np.float64) ** 2))
    return ep / max(eh + ep, 1e-20)


def within(heard: float, asked: float, tolerance: float = 0.08) -> bool:
    """The heard tempo is the asked one (not its half or double) within ``tolerance``."""
    return abs(heard / asked - 1.0) <= tolerance


# --- descriptions that state a BPM ------------------------------------------------------------------

_BIOMES = ("plains", "forest", "dark_forest", "taiga", "jungle", "swamp", "desert", "snowy_plains", "ocean",
           "cherry_grove", "dripstone_caves", "deep_dark", "nether_wastes", "the_end", "mushroom_fields",
           "savanna", "badlands", "meadow", "lush_caves", "river")  # fmt: skip
_MOBS = ("zombie", "skeleton", "creeper", "spider", "enderman", "witch", "blaze", "piglin")


def scene(index: int) -> dict:
    """A game state for the composer, spread over biomes, time, weather, movement and fights."""
    biome = _BIOMES[index % len(_BIOMES)]
    dimension = {"nether_wastes": "the_nether", "the_end": "the_end"}.get(biome, "overworld")
    data: dict = {
        "scene": {"biome": biome, "dimension": dimension},
        "time": {"ticks": (0, 6000, 12500, 18000)[(index // 3) % 4]},
        "weather": {"state": ("clear", "rain", "clear", "thunder", "snow")[(index // 2) % 5]},
        "movement": {"state": ("walking", "still", "running", "sneaking")[(index // 5) % 4]},
    }
    if biome in ("dripstone_caves", "deep_dark", "lush_caves"):
        data["position"] = {"x": 0.0, "y": -20.0, "z": 0.0, "depth": 30.0}
    if index % 4 == 3:  # a fight every fourth scene
        mob = _MOBS[index % len(_MOBS)]
        data["health"] = {"value": (4.0, 11.0, 17.0)[index % 3], "max": 20.0}
        data["hostiles"] = [{"name": mob, "distance": 3.0}]
        data["attacked"] = {"damage": 2.0, "attacker": mob, "seconds_ago": 1.0}
    return data


def compose(data: dict, seed: int = 0) -> str:
    """The composer's description of a game state, both stages as ``play`` runs them."""
    from metabgm_edge.characterize import characterize, in_combat, scene_data
    from metabgm_edge.state import state_from_dict
    from metabgm_edge.text import StageRequest
    from metabgm_edge.text.composer import Composer

    state = state_from_dict(data)
    combat = in_combat(state)
    characterized = characterize(scene_data(state), combat)
    composer = Composer()

    def stage(name: str, narrative: str | None = None) -> str:
        request = StageRequest(stage=name, messages=[], characterized=characterized, combat=combat, seed=seed,
                               narrative=narrative)  # fmt: skip
        return composer.generate(request)

    return stage("description", stage("narrative"))


def stated_bpm(text: str) -> float:
    found = re.findall(r"\b(\d{2,3}) BPM\b", text)
    assert len(found) == 1, text
    return float(found[0])


def composer_descriptions(count: int = 40) -> list[str]:
    return [compose(scene(i), seed=i) for i in range(count)]


COMBAT_SCENES: dict[str, dict] = {
    "zombie in a forest": {
        "scene": {"biome": "forest"}, "time": {"ticks": 6000}, "weather": {"state": "clear"},
        "temperature": 0.7, "movement": {"state": "walking", "speed": 1.4},
        "health": {"value": 16, "max": 20},
        "hostiles": [{"name": "zombie", "distance": 3.5}],
        "attacked": {"damage": 2, "attacker": "zombie", "seconds_ago": 1.0},
    },
    "low health": {
        "scene": {"biome": "forest"}, "time": {"ticks": 6000}, "health": {"value": 3, "max": 20},
        "hostiles": [{"name": "zombie", "distance": 3.5}],
        "attacked": {"damage": 2, "attacker": "zombie", "seconds_ago": 1.0},
    },
    "skeletons at night": {
        "scene": {"biome": "plains"}, "time": {"ticks": 18000}, "health": {"value": 18, "max": 20},
        "hostiles": [{"name": "skeleton", "distance": 6}, {"name": "creeper", "distance": 2}],
    },
    "blaze in the nether": {
        "scene": {"biome": "nether_wastes", "dimension": "the_nether"}, "health": {"value": 12, "max": 20},
        "hostiles": [{"name": "blaze", "distance": 5}],
        "attacked": {"damage": 3, "attacker": "blaze", "seconds_ago": 0.5},
    },
}  # fmt: skip


def with_bpm(caption: Caption) -> tuple[str, float]:
    """A caption with a tempo sentence appended, the BPM drawn from its id (50..180)."""
    bpm = 50 + int(_order(caption.ytid)[:8], 16) % 131
    return f"{caption.caption} The tempo is {bpm} BPM.", float(bpm)


# --- the figures ---------------------------------------------------------------------------------


@dataclass
class Heard:
    tempo: float
    rms: float
    centroid: float
    mode: str
    percussive: float


def listen(audio: np.ndarray, *, percussive: bool = False) -> Heard:
    """Every measure (HPSS, the slow one, only when ``percussive``)."""
    share = percussive_share(audio) if percussive else float("nan")
    return Heard(heard_tempo(audio), rms(audio), centroid(audio), key_of(audio)[1], share)


def figures(captions: list[Caption], render: Callable[[str, int], np.ndarray]) -> dict[str, float]:
    """Per group medians, the contrasts the issue names, the share of stated BPMs heard within 8 %
    and the combat descriptions' heard BPM and percussive share, for the captions given."""
    memo: dict[tuple[str, int], np.ndarray] = {}
    plain = render

    def render(text: str, seed: int) -> np.ndarray:  # each render once
        if (text, seed) not in memo:
            memo[(text, seed)] = plain(text, seed)
        return memo[(text, seed)]

    heard: dict[str, list[Heard]] = {}
    for c in captions:
        heard.setdefault(c.group, []).append(listen(render(c.caption, 0)))
    out: dict[str, float] = {}
    for name, items in heard.items():
        out[f"{name}.n"] = len(items)
        out[f"{name}.tempo"] = float(np.median([h.tempo for h in items]))
        out[f"{name}.rms"] = float(np.median([h.rms for h in items]))
        out[f"{name}.centroid"] = float(np.median([h.centroid for h in items]))
    for mode in ("major", "minor"):
        if mode in heard:
            out[f"{mode}.mode_accuracy"] = float(np.mean([h.mode == mode for h in heard[mode]]))
    modes = [(h.mode == m) for m in ("major", "minor") for h in heard.get(m, [])]
    if modes:
        out["mode_accuracy"] = float(np.mean(modes))
        out["mode_accuracy (stft chroma)"] = float(np.mean(
            [key_of(render(c.caption, 0), method="stft")[1] == c.group for c in captions if c.group in heard
             and c.group in ("major", "minor")]
        ))  # fmt: skip
    for a, b, key in (("fast", "slow", "tempo"), ("loud", "soft", "rms"), ("bright", "dark", "centroid")):
        if a in heard and b in heard:
            out[f"{a}/{b}.{key}_ratio"] = out[f"{a}.{key}"] / max(out[f"{b}.{key}"], 1e-12)
    composed = composer_descriptions()
    out["composer_bpm.n"] = len(composed)
    out["composer_bpm.within_8%"] = float(np.mean(
        [within(heard_tempo(render(d, i)), stated_bpm(d)) for i, d in enumerate(composed)]
    ))  # fmt: skip
    stated = [with_bpm(c) for c in captions if c.group in ("fast", "slow")]
    out["caption_bpm.n"] = len(stated)
    out["caption_bpm.within_8%"] = float(
        np.mean([within(heard_tempo(render(d, 0)), bpm) for d, bpm in stated])
    )
    for name, data in COMBAT_SCENES.items():
        for seed in range(2):
            text = compose(data, seed)
            audio = render(text, seed)
            key = f"combat {name} #{seed}"
            out[f"{key}.bpm"] = stated_bpm(text)
            out[f"{key}.heard"] = heard_tempo(audio)
            out[f"{key}.percussive"] = percussive_share(audio)
    return out


def _synth_render(seconds: float = 10.0) -> Callable[[str], np.ndarray]:
    sys.path.insert(0, str(HERE))
    from audio_helpers import render

    from metabgm_edge.audio.procedural.synth import ProceduralSynth

    synth = ProceduralSynth()

    def run(description: str, seed: int) -> np.ndarray:
        return render(synth, description, seconds, None, seed=seed)[0]

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, help="a MusicCaps-format CSV to choose the groups from")
    parser.add_argument("--per-group", type=int, default=PER_GROUP)
    parser.add_argument("--write-subset", action="store_true", help=f"rebuild {SUBSET} from the dev CSV")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.write_subset:
        write_subset(choose_groups(read_rows(args.csv or DEV_CSV), args.per_group))
        print(f"wrote {SUBSET}")
        return 0
    captions = choose_groups(read_rows(args.csv), args.per_group) if args.csv else load_subset()
    for name, value in figures(captions, _synth_render(args.seconds)).items():
        print(f"{name:28s} {value:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
