#!/usr/bin/env python3
"""Derive the composer's vocabulary table from the MusicCaps captions.

The embedded composer (metabgm_edge/text/composer.py) writes music descriptions the way the
musicians who wrote MusicCaps do. This script counts, for each term of a curated lexicon
(instruments, descriptors, moods, tempo, dynamics, genres), how many MusicCaps clips mention it
(caption and aspect list, lower-cased, whole words; plural and hyphen variants count as the
term), keeps the terms that at least MIN_COUNT clips use, and counts which descriptor words
musicians put right before each instrument ("sustained strings", "breathy flute"). The result is
committed as metabgm_edge/text/vocabulary.json, so the runtime never needs the CSV.

The output is byte-for-byte reproducible from the same CSV (the file's SHA-256 is recorded).

    python scripts/build_vocabulary.py                      # rewrite the committed table
    python scripts/build_vocabulary.py --check              # exit 1 if the committed table differs

MusicCaps: Agostinelli et al., "MusicLM: Generating Music From Text" (2023), released by Google
under CC BY-SA 4.0. The derived table keeps that attribution and licence.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import hashlib
import io
import json
import lzma
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT / "data" / "musiccaps" / "musiccaps-public-dev.csv"
"""The committed copy (the same bytes as the shared CSV)."""
DEFAULT_OUT = ROOT / "metabgm_edge" / "text" / "vocabulary.json"
MIN_COUNT = 2

# The instruments the procedural synthesizer renders, then others a listener may prefer.
SYNTH_INSTRUMENTS = (
    "piano", "strings", "pad", "bass", "drums", "flute", "guitar",
    "choir", "brass", "bells", "synth", "harp", "cello",
)  # fmt: skip
OTHER_INSTRUMENTS = (
    "organ", "violin", "viola", "percussion", "timpani", "marimba", "trumpet", "horn", "french horn",
    "trombone", "tuba", "accordion", "saxophone", "clarinet", "oboe", "bassoon", "banjo", "harmonica",
    "ukulele", "mandolin", "sitar", "oud", "tabla", "xylophone", "glockenspiel", "vibraphone",
    "music box", "didgeridoo", "harpsichord", "theremin", "keyboard", "electric guitar",
    "acoustic guitar", "upright bass", "double bass", "steel drums", "taiko", "bongos", "shaker",
    "tambourine", "kalimba", "celesta", "bagpipes", "lute", "whistle", "synthesizer", "koto",
)  # fmt: skip
# Variants counted as the term (regular expressions on lower-cased text).
VARIANTS = {
    "strings": r"strings|string section|string ensemble|string orchestra",
    "pad": r"pads?",
    "drums": r"drums?|drumming|drum kit",
    "bells": r"bells?",
    "synth": r"synths?",
    "choir": r"choirs?",
    "synthesizer": r"synthesi[sz]ers?",
    "whistle": r"whistles?|whistling",
}

DESCRIPTORS = (
    "soft", "mellow", "warm", "sustained", "arpeggiated", "plucked", "bowed", "staccato", "pizzicato",
    "tremolo", "legato", "shimmering", "echoing", "reverberant", "distant", "deep", "low", "airy",
    "breathy", "muted", "muffled", "distorted", "buzzy", "fuzzy", "pulsating", "thumping", "booming",
    "punchy", "heavy", "steady", "sparse", "bright", "dark", "hollow", "droning", "haunting", "wide",
    "layered", "delicate", "lush", "metallic", "dissonant", "swelling", "rising", "soaring", "ringing",
    "twinkling", "chiming", "rumbling", "throbbing", "rapid", "syncopated", "repetitive", "simple",
    "subtle", "filtered", "lilting", "flowing", "whispering", "glassy", "light", "aggressive",
    "acoustic", "electric", "wooden", "gentle", "melodic", "rhythmic", "percussive",
)  # fmt: skip
MOODS = (
    "calm", "peaceful", "serene", "tranquil", "relaxing", "soothing", "calming", "dreamy", "ethereal",
    "meditative", "mysterious", "eerie", "ominous", "dark", "sinister", "suspenseful", "tense",
    "haunting", "melancholic", "sad", "lonely", "wistful", "nostalgic", "hopeful", "uplifting",
    "cheerful", "happy", "joyful", "playful", "epic", "dramatic", "heroic", "majestic", "aggressive",
    "energetic", "urgent", "menacing", "mystical", "magical", "whimsical", "cozy", "fiery", "chaotic",
    "powerful", "exciting", "scary", "spooky", "creepy", "sombre", "gloomy", "solemn", "triumphant",
    "adventurous", "restless", "fearful", "emotional", "romantic", "sentimental", "warm", "bright",
    "hypnotic", "lively", "spirited", "intense", "relaxed", "frantic", "desolate", "brooding",
    "otherworldly", "spacious", "vast",
)  # fmt: skip
TEMPO = (
    "slow", "moderate", "medium", "fast", "driving", "uptempo", "steady", "rapid", "slow tempo",
    "medium tempo", "moderate tempo", "fast tempo", "mid-tempo", "bpm",
)  # fmt: skip
DYNAMICS = (
    "soft", "gentle", "quiet", "loud", "intense", "powerful", "subtle", "crescendo", "swelling",
    "building", "dynamic", "calm",
)  # fmt: skip
GENRES = (
    "ambient", "cinematic", "orchestral", "classical", "folk", "celtic", "medieval", "baroque", "jazz",
    "rock", "metal", "pop", "electronic", "techno", "trance", "house", "edm", "dubstep", "hip-hop",
    "reggae", "blues", "country", "ballad", "gospel", "funk", "soul", "latin", "lullaby", "march",
    "waltz", "chiptune", "lo-fi", "new age", "post-rock", "drone", "industrial", "synthwave",
    "minimalist", "world", "soundtrack", "video game", "chamber", "choral", "acoustic", "punk", "indie",
    "experimental", "instrumental", "opera", "tribal",
)  # fmt: skip
CATEGORIES: dict[str, tuple[str, ...]] = {
    "instruments": SYNTH_INSTRUMENTS + OTHER_INSTRUMENTS,
    "descriptors": DESCRIPTORS,
    "moods": MOODS,
    "tempo": TEMPO,
    "dynamics": DYNAMICS,
    "genres": GENRES,
}

ATTRIBUTION = (
    "Counts derived from the MusicCaps captions (Agostinelli et al., 'MusicLM: Generating Music From "
    "Text', 2023), released by Google under CC BY-SA 4.0 "
    "(https://creativecommons.org/licenses/by-sa/4.0/). This derived table is shared under the same "
    "licence."
)


def _body(term: str) -> str:
    if term in VARIANTS:
        return VARIANTS[term]
    parts = [re.escape(p) for p in re.split(r"[\s\-]+", term)]
    return r"[\s\-]?".join(parts) if len(parts) > 1 else parts[0]


def term_pattern(term: str, plural: bool) -> re.Pattern[str]:
    body = _body(term)
    if plural and term not in VARIANTS:
        body = f"(?:{body})(?:e?s)?"
    # No look-behind here: a pattern that starts with its literal text scans much faster.
    # Corpus.clips_matching checks that the match starts a word.
    return re.compile(rf"(?:{body})(?![a-z])")


def read_bytes(path: Path) -> bytes:
    """The CSV's bytes (an ``.xz`` file is decompressed)."""
    raw = path.read_bytes()
    return lzma.decompress(raw) if path.suffix == ".xz" else raw


def csv_name(path: Path) -> str:
    return path.name[: -len(".xz")] if path.suffix == ".xz" else path.name


def read_clips(path: Path) -> list[str]:
    with io.TextIOWrapper(io.BytesIO(read_bytes(path)), newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"caption", "aspect_list"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: missing columns {sorted(missing)}; is this a MusicCaps CSV?")
        return [f"{row['caption']} . {row['aspect_list']}".lower() for row in reader]


class Corpus:
    """All clips in one string, so each term is one regex scan; positions map back to clips."""

    def __init__(self, clips: list[str]) -> None:
        self.text = "\n".join(clips)
        self.starts = [0]
        for clip in clips[:-1]:
            self.starts.append(self.starts[-1] + len(clip) + 1)

    def starts_word(self, index: int) -> bool:
        return index == 0 or not ("a" <= self.text[index - 1] <= "z")

    def clip_of(self, index: int) -> int:
        return bisect.bisect_right(self.starts, index) - 1

    def clips_matching(self, pattern: re.Pattern[str]) -> set[int]:
        """Indexes of the clips with a match that starts a word (no term spans the newlines)."""
        return {self.clip_of(m.start()) for m in pattern.finditer(self.text) if self.starts_word(m.start())}


def count_terms(corpus: Corpus, terms: tuple[str, ...], plural: bool) -> dict[str, int]:
    return {term: len(corpus.clips_matching(term_pattern(term, plural))) for term in dict.fromkeys(terms)}


def collocations(corpus: Corpus, instruments: tuple[str, ...], descriptors: set[str]) -> dict[str, dict]:
    """In how many clips each descriptor word stands right before each instrument."""
    table: dict[str, dict[str, int]] = {}
    for instrument in instruments:
        # Find the instrument, then look at the word before it.
        pattern = re.compile(rf"(?:{_body(instrument)})(?:e?s)?(?![a-z])")
        before = re.compile(r"([a-z]+)[ \-]+$")
        pairs = set()
        for m in pattern.finditer(corpus.text):
            if not corpus.starts_word(m.start()):
                continue
            word = before.search(corpus.text, max(0, m.start() - 40), m.start())
            if word and word.group(1) in descriptors and corpus.starts_word(word.start(1)):
                pairs.add((corpus.clip_of(m.start()), word.group(1)))
        found = Counter(word for _, word in pairs)
        kept = {w: n for w, n in found.items() if n >= MIN_COUNT}
        table[instrument] = dict(sorted(kept.items(), key=lambda item: (-item[1], item[0])))
    return table


def build(csv_path: Path) -> dict:
    clips = read_clips(csv_path)
    corpus = Corpus(clips)
    digest = hashlib.sha256(read_bytes(csv_path)).hexdigest()
    categories: dict[str, dict[str, int]] = {}
    rare: dict[str, dict[str, int]] = {}
    for name, terms in CATEGORIES.items():
        counts = count_terms(corpus, terms, plural=name == "instruments")
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        categories[name] = {t: n for t, n in ordered if n >= MIN_COUNT}
        rare[name] = {t: n for t, n in ordered if n < MIN_COUNT}
    kept_descriptors = set(categories["descriptors"])
    return {
        "attribution": ATTRIBUTION,
        "license": "CC BY-SA 4.0",
        "source": {
            "dataset": "MusicCaps, development split (about 80% of 5,521 captions, fixed by clip id)",
            "file": csv_name(csv_path),
            "sha256": digest,
            "clips": len(clips),
        },
        "method": (
            "count = number of clips whose caption or aspect list mentions the term (lower-cased, "
            f"whole words, plural and hyphen variants included); terms used by fewer than {MIN_COUNT} "
            "clips are listed under 'rare' and not used. 'collocations' counts clips where a descriptor "
            "word stands right before an instrument."
        ),
        "generated_by": "scripts/build_vocabulary.py",
        "min_count": MIN_COUNT,
        "categories": categories,
        "collocations": collocations(corpus, SYNTH_INSTRUMENTS, kept_descriptors),
        "rare": rare,
    }


def render(table: dict) -> str:
    return json.dumps(table, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="MusicCaps CSV (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="table to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"MusicCaps CSV not found at {args.csv}; pass --csv PATH", file=sys.stderr)
        return 2
    text = render(build(args.csv))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run scripts/build_vocabulary.py", file=sys.stderr)
            return 1
        print(f"{args.out} matches {args.csv.name}")
        return 0
    args.out.write_text(text, encoding="utf-8")
    counts = ", ".join(f"{k} {len(v)}" for k, v in build_summary(text).items())
    print(f"wrote {args.out} ({counts})")
    return 0


def build_summary(text: str) -> dict[str, dict]:
    return json.loads(text)["categories"]


if __name__ == "__main__":
    sys.exit(main())
