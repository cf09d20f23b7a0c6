"""One vocabulary of music words (metabgm_edge.music_words) for the composer and the
synthesizer's parser: what the composer writes is read back as it meant it, and the reader works
on word forms and their combinations, not on a list of phrases."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from metabgm_edge import music_words as mw
from metabgm_edge.audio.procedural.musicparse import parse_description
from metabgm_edge.text import music_plan

ROOT = Path(__file__).resolve().parent.parent


def test_composer_and_parser_share_one_table() -> None:
    assert music_plan.TEMPO_WORDS is mw.WRITTEN_TEMPO
    assert music_plan.DYNAMICS_WORDS is mw.WRITTEN_DYNAMICS
    assert music_plan.tempo_word is mw.tempo_word and music_plan.dynamics_word is mw.dynamics_word
    assert music_plan.SYNTH_INSTRUMENTS is mw.WRITTEN_INSTRUMENTS
    # No second copy of a word table in either module: no dict literal keyed by music words.
    words = {*mw.INSTRUMENT_WORDS, *mw.TEMPO_WORDS, *mw.DYNAMICS, *mw.MOODS, *mw.GENRES, *mw.TIMBRE_WORDS}
    words -= set(mw.VOICES)  # per-voice data (ranges, timbres) is the synthesizer's own
    for path in ("metabgm_edge/text/music_plan.py", "metabgm_edge/audio/procedural/musicparse.py",
                 "metabgm_edge/audio/procedural/synth.py"):  # fmt: skip
        tree = ast.parse((ROOT / path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict) and len(node.keys) >= 10:
                keys = [
                    k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
                ]
                shared = sum(k in words for k in keys)
                assert shared < 0.5 * len(node.keys), f"{path}:{node.lineno} holds a word table of its own"


@pytest.mark.parametrize("bpm", range(40, 201, 3))
def test_every_written_tempo_word_reads_back_in_its_range(bpm: int) -> None:
    word = mw.tempo_word(bpm)
    entry = mw.TEMPO_WORDS[word]
    assert entry.lo <= bpm <= entry.hi, (bpm, word)
    read = parse_description(f"a {word} piece for piano").tempo
    assert read is not None and entry.lo <= read <= entry.hi, (word, read)


def test_written_tempo_words_are_ordered_and_driving_is_the_fastest() -> None:
    read = [parse_description(f"{w} piano").tempo for w in mw.WRITTEN_TEMPO]
    assert read == sorted(read) and len(set(read)) == 4
    assert parse_description("driving drums").tempo > parse_description("fast drums").tempo >= 107  # type: ignore[operator]


@pytest.mark.parametrize("energy", [i / 20 for i in range(21)])
def test_every_written_dynamics_word_reads_back_on_its_side(energy: float) -> None:
    word = mw.dynamics_word(energy)
    level = parse_description(f"{word} piano").dynamics
    assert level is not None and (level < 0.55) == (word in ("soft", "gentle")), (word, level)


def test_every_instrument_name_is_a_voice_and_reads_back() -> None:
    assert set(mw.INSTRUMENT_WORDS.values()) <= set(mw.VOICES)
    for name, voice in mw.INSTRUMENT_WORDS.items():
        spec = parse_description(f"a piece with {name} and nothing else")
        assert voice in spec.named_instruments, (name, spec.named_instruments)


def test_word_forms_not_phrases() -> None:
    """Inflections and degrees of the same words read the same way."""
    sad = [parse_description(t) for t in ("sad piano", "sadly played piano", "a piano full of sadness")]
    assert all(s.mode_hint == "minor" for s in sad)
    happy = [
        parse_description(t)
        for t in ("happy flute", "a flute played happily", "joyous flute", "cheery flute")
    ]
    assert all(s.mode_hint == "major" for s in happy)
    very = parse_description("very fast drums").tempo
    fast = parse_description("fast drums").tempo
    slightly = parse_description("slightly fast drums").tempo
    assert very > fast > slightly  # type: ignore[operator]
    assert parse_description("the tempo is slow").tempo == parse_description("slow tempo").tempo
    assert parse_description("medium volume, piano").tempo is None  # "medium" is a tempo only with "tempo"
    assert parse_description("medium tempo piano").tempo == mw.TEMPO_WORDS["medium"].typical


def test_combinations_are_weighed() -> None:
    # A genre places a tempo word within its range: fast metal is faster than fast folk.
    metal = parse_description("fast heavy metal with drums").tempo
    folk = parse_description("fast folk with guitar").tempo
    assert metal > folk and all(107 <= t <= 134 for t in (metal, folk))  # type: ignore[operator]
    # "medium to uptempo" lies between its two words.
    mid = parse_description("medium to uptempo song").tempo
    assert mw.TEMPO_WORDS["medium"].typical < mid < mw.TEMPO_WORDS["uptempo"].typical  # type: ignore[operator]
    # Valence adds up: sad words outweigh a genre's lean.
    assert parse_description("a sad, melancholic pop song").mode_hint == "minor"
    assert parse_description("a happy reggae tune").mode_hint == "major"
    # Negation: "not fast" is not a fast tempo, "no drums" refuses them, "instrumental" refuses voices.
    assert parse_description("not fast, piano").tempo is None
    assert parse_description("rock song without drums").drums is False
    assert "voice" not in parse_description("an instrumental with guitar and vocals").instruments
    # "low quality" says nothing about the timbre; "low, muffled" does.
    assert parse_description("low quality recording of a piano").brightness is None
    assert parse_description("low, muffled piano").brightness < 0.35  # type: ignore[operator]
    assert parse_description("bright, shimmering piano").brightness > 0.65  # type: ignore[operator]


def test_solo_is_one_instrument_alone() -> None:
    for text in ("Solo acoustic guitar", "a solo piano piece", "unaccompanied cello", "only a harp plays"):
        spec = parse_description(text)
        assert spec.solo and len(spec.instruments) == 1 and spec.drums is False, text
    # "a guitar solo" in a band is a lead part, not a guitar alone.
    spec = parse_description("rock song with a guitar solo over bass and drums")
    assert not spec.solo and spec.melody == "guitar" and spec.drums is True


def test_a_dynamics_word_inside_a_genre_still_counts() -> None:
    """The composer writes "Slow, soft rock piece": the genre is soft rock and the piece is soft."""
    spec = parse_description("Slow, soft rock piece in E major at 64 BPM: airy flute and strings.")
    assert spec.genre == "soft rock" and spec.dynamics is not None and spec.dynamics < 0.55
    assert parse_description("heavy metal").dynamics >= 0.7  # type: ignore[operator]
