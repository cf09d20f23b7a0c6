"""The eval metrics against values computed by hand, and music-ness."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("nltk")
pytest.importorskip("rouge_score")

from metabgm_edge.evaluation.metrics import EvalError, bleu, meteor, require_wordnet, rouge_l, score, tokens
from metabgm_edge.text.musicness import musicness

HYP = "The calm piano melody plays slowly."
REF = "A calm piano melody plays softly."


def _wordnet() -> None:
    try:
        require_wordnet()
    except EvalError as exc:
        pytest.skip(f"no WordNet here: {exc}")


def test_tokens_are_lower_case_words_without_punctuation() -> None:
    assert tokens("A Slow, Mid-tempo piece: 72 BPM!") == ["a", "slow", "mid", "tempo", "piece", "72", "bpm"]
    assert tokens("the player's sword") == ["the", "player's", "sword"]


def test_bleu_equals_the_hand_computation() -> None:
    # Unigrams 4/6 match (calm piano melody plays), bigrams 3/5, trigrams 2/4, 4-grams 1/3; equal
    # lengths, so no brevity penalty. BLEU-n is the geometric mean of the first n precisions.
    b1, b2, b3, b4 = bleu([HYP], [[REF]])
    assert b1 == pytest.approx(100 * 4 / 6)
    assert b2 == pytest.approx(100 * math.sqrt(4 / 6 * 3 / 5))
    assert b3 == pytest.approx(100 * (4 / 6 * 3 / 5 * 2 / 4) ** (1 / 3))
    assert b4 == pytest.approx(100 * (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4))


def test_bleu_smoothing_is_method_1_and_brevity_uses_the_closest_reference() -> None:
    # No bigram matches: method 1 counts 0.1 matches of the 1 bigram.
    assert bleu(["piano melody"], [["piano tune"]])[1] == pytest.approx(100 * math.sqrt(0.5 * 0.1))
    # Two references: "slow strings" has the hypothesis' length (no penalty); "slow piano" is a
    # bigram of the other. No trigram exists: 0.1 of 1.
    b1, b2, b3, _ = bleu(["slow piano"], [["a slow piano piece", "slow strings"]])
    assert (b1, b2) == (pytest.approx(100.0), pytest.approx(100.0))
    assert b3 == pytest.approx(100 * 0.1 ** (1 / 3))
    # Half the reference's length: brevity penalty exp(1 - 4/2).
    assert bleu(["calm piano"], [["calm piano and strings"]])[0] == pytest.approx(100 * math.exp(1 - 4 / 2))


def test_bleu_is_corpus_level() -> None:
    # Counts are pooled over items (2 + 0 matches of 2 + 2 unigrams), not averaged per item.
    b1 = bleu(["calm piano", "loud drums"], [["calm piano"], ["soft flute"]])[0]
    assert b1 == pytest.approx(100 * 2 / 4)


def test_rouge_l_equals_the_hand_computation() -> None:
    # Longest common subsequence "calm piano melody plays": 4 of 6 tokens each way, F1 = 4/6.
    assert rouge_l([HYP], [[REF]]) == pytest.approx(100 * 4 / 6)
    # Best over references.
    assert rouge_l([HYP], [["drums", REF]]) == pytest.approx(100 * 4 / 6)


def test_meteor_equals_the_hand_computation() -> None:
    _wordnet()
    # 4 exact matches of 6 tokens each way: F-mean (alpha 0.9) = 4/6; one chunk of 4 matches:
    # penalty 0.5 * (1/4)^3.
    expected = 4 / 6 * (1 - 0.5 * (1 / 4) ** 3)
    assert meteor([HYP], [[REF]]) == pytest.approx(100 * expected)


def test_meteor_gives_wordnet_synonym_credit() -> None:
    _wordnet()
    synonyms = meteor(["tranquil piano tune"], [["calm piano melody"]])
    nonsense = meteor(["xyzzy piano qwert"], [["calm piano melody"]])
    assert synonyms > nonsense + 30


def test_a_reference_scored_against_itself_gets_the_maximum() -> None:
    _wordnet()
    refs = ["A slow ambient piece in D minor, 64 BPM, with droning pad and low cello.", REF]
    result = score(refs, [[r] for r in refs])
    assert result.bleu == (pytest.approx(100.0),) * 4
    assert result.rouge_l == pytest.approx(100.0)
    # METEOR's fragmentation penalty never reaches 0: one chunk of m matches costs 0.5 / m^3.
    assert result.meteor > 99.5


def test_an_empty_hypothesis_scores_zero() -> None:
    _wordnet()
    result = score(["", HYP], [[REF], [REF]])
    assert result.rouge_l == pytest.approx(100 * 4 / 6 / 2)
    assert score([""], [[REF]]).as_dict() == dict.fromkeys(
        ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l"), 0.0
    )


def test_score_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        score(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        score(["a"], [[]])


def test_musicness_needs_tempo_instrument_mood_and_a_whole_sentence() -> None:
    good = "A slow, melancholic piece at 64 BPM with droning pad and low cello."
    assert musicness(good).ok
    assert musicness("A sad ballad at a slow tempo, with mellow piano and sustained strings.").ok
    assert not musicness(good, cut=True).ok  # cut at the word limit
    assert not musicness(good.rstrip(".")).sentence
    no_tempo = musicness("A melancholic piece with droning pad and low cello.")
    assert (no_tempo.tempo, no_tempo.instrument, no_tempo.mood) == (False, True, True)
    assert not musicness("A slow, melancholic piece of light and shadow.").instrument
    assert not musicness("A slow piece with droning pad and low cello.").mood
    # The base model's answer from the issue is not a music description.
    issue = (
        "The music of the land unfolds in the realm of magic, where shadows dance on the horizon, "
        "and light shines."
    )
    assert not musicness(issue).ok
