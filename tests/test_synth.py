"""The embedded procedural synthesizer: it reads the description (checked on the audio: key,
tempo, loudness, drums), continues the music across segments without a seam, is deterministic,
never clips, and renders much faster than real time (benchmark)."""

from __future__ import annotations

import itertools
import logging
import time

import numpy as np
import pytest
from audio_helpers import render

from metabgm_edge import music_words
from metabgm_edge.audio import (
    SAMPLE_RATE,
    SPEED_MARGIN,
    AudioBackend,
    anchor_from_metadata,
    anchor_to_metadata,
    open_audio_backend,
)
from metabgm_edge.audio.procedural.musicparse import parse_description
from metabgm_edge.audio.procedural.synth import ProceduralSynth, SynthAnchor
from metabgm_edge.audio.procedural.theory import mutate_motif, new_motif
from metabgm_edge.errors import BackendError

SR = SAMPLE_RATE
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


@pytest.fixture(scope="module")
def synth() -> ProceduralSynth:
    return ProceduralSynth()


def _segments(
    synth: ProceduralSynth, descriptions: list[str], seconds: float = 10.0, seed: int = 0
) -> np.ndarray:
    anchor = None
    parts = []
    for d in descriptions:
        audio, anchor = render(synth, d, seconds, anchor, seed=seed)
        parts.append(audio)
    return np.concatenate(parts)


def _key_of(audio: np.ndarray) -> str:
    """Krumhansl-Kessler key estimate from the audio's pitch-class energy."""
    x = audio.mean(axis=1).astype(np.float64)
    n = 8192
    frames = np.array([x[i : i + n] * np.hanning(n) for i in range(0, x.shape[0] - n, n // 2)])
    spectrum = np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0)
    f = np.fft.rfftfreq(n, 1 / SR)
    ok = (f > 60) & (f < 2000)
    pc = np.round(69 + 12 * np.log2(f[ok] / 440)).astype(int) % 12
    chroma = np.bincount(pc, weights=spectrum[ok] ** 2, minlength=12)
    scores = [
        (float(np.corrcoef(chroma, np.roll(profile, t))[0, 1]), f"{_NAMES[t]} {mode}")
        for t in range(12)
        for mode, profile in (("major", _MAJOR), ("minor", _MINOR))
    ]
    return max(scores)[1]


def _tempo_of(audio: np.ndarray) -> float:
    """Beats per minute from the autocorrelation of the spectral-flux onset envelope."""
    x = audio.mean(axis=1).astype(np.float64)
    hop, n = 320, 1024
    frames = np.array([x[i : i + n] * np.hanning(n) for i in range(0, x.shape[0] - n, hop)])
    s = np.log1p(100 * np.abs(np.fft.rfft(frames, axis=1)))
    flux = np.maximum(np.diff(s, axis=0), 0).sum(axis=1)
    flux -= flux.mean()
    ac = np.correlate(flux, flux, "full")[flux.shape[0] - 1 :]
    lags = np.arange(ac.shape[0]) * hop / SR
    ok = (lags >= 0.3) & (lags <= 1.2)
    return 60.0 / float(lags[ok][np.argmax(ac[ok])])


def _same_tempo(measured: float, wanted: float) -> bool:
    """Equal up to the octave ambiguity every tempo estimator has (half or double time)."""
    return any(abs(measured * k / wanted - 1) < 0.04 for k in (0.5, 1.0, 2.0))


def _rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(float(np.sqrt(np.mean(x**2))) + 1e-12)


# --- the backend interface --------------------------------------------------------------------


def test_open_audio_backend() -> None:
    backend = open_audio_backend(None)
    assert isinstance(backend, AudioBackend) and backend.name == "synth"
    assert isinstance(open_audio_backend("synth"), ProceduralSynth)
    with pytest.raises(BackendError, match="'synth'"):
        open_audio_backend("musicgen-large")


def test_render_shape_and_anchor(synth: ProceduralSynth) -> None:
    audio, anchor = render(synth, "calm piano", 2.5, None, tail=0.5, seed=1)
    assert audio.dtype == np.float32 and audio.shape == (round(3.0 * SR), 2)
    assert np.isfinite(audio).all()
    assert isinstance(anchor, SynthAnchor)
    assert anchor.sample_offset == round(2.5 * SR)  # the anchor is at `seconds`, not at the tail's end
    assert anchor.segment == 1
    assert SynthAnchor.from_bytes(anchor.to_bytes()) == anchor
    assert anchor_from_metadata(synth, anchor_to_metadata(anchor)) == anchor
    assert "segment 1" in anchor.summary() and anchor.key in anchor.summary()
    with pytest.raises(ValueError, match="synth anchor"):
        synth.anchor_from_bytes(b'{"segment": "one"}')
    with pytest.raises(ValueError, match="synth anchor"):
        synth.anchor_from_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="damaged"):
        anchor_from_metadata(synth, b"\x00garbage")


def test_deterministic_for_same_inputs(synth: ProceduralSynth) -> None:
    desc = "upbeat folk, flute melody over guitar, steady drums"
    a1, n1 = render(synth, desc, 3.0, None, tail=0.5, seed=5)
    a2, n2 = render(synth, desc, 3.0, None, tail=0.5, seed=5)
    np.testing.assert_array_equal(a1, a2)
    assert n1 == n2
    b1, _ = render(synth, desc, 3.0, n1, tail=0.5, seed=5)
    b2, _ = render(synth, desc, 3.0, n2, tail=0.5, seed=5)
    np.testing.assert_array_equal(b1, b2)
    c, _ = render(synth, desc, 3.0, None, tail=0.5, seed=6)
    assert not np.array_equal(a1, c)


def test_bad_arguments(synth: ProceduralSynth, caplog: pytest.LogCaptureFixture) -> None:
    for seconds in (0.0, -1.0, float("nan"), float("inf"), 1e6):
        with pytest.raises(ValueError, match="seconds"):
            render(synth, "calm", seconds, None)
    with pytest.raises(ValueError, match="tail"):
        render(synth, "calm", 1.0, None, tail=-0.5)
    # Odd descriptions still make music; another backend's anchor starts fresh, said in the log.
    for desc in ("", "\x00\x01{}[]", "x" * 100_000, None):
        audio, _ = render(synth, desc, 1.0, None)  # type: ignore[arg-type]
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.01
    with caplog.at_level(logging.INFO):
        audio, anchor = render(synth, "calm", 1.0, {"codes": [1, 2, 3]})
    assert "starting fresh" in caplog.text and anchor.segment == 1


# --- what the description asks for, heard in the audio ----------------------------------------


@pytest.mark.parametrize(
    ("description", "key"),
    [
        ("calm piano and strings in D minor", "D minor"),
        ("soft piano in E major", "E major"),
        ("dark ambient pad in F# minor", "F# minor"),
        ("slow choir and organ in G major", "G major"),
    ],
)
def test_key_is_heard(synth: ProceduralSynth, description: str, key: str) -> None:
    audio = _segments(synth, [description, description], seed=4)
    assert _key_of(audio) == key


@pytest.mark.parametrize(
    ("description", "bpm"),
    [
        ("march with brass and drums, 112 bpm", 112),
        ("upbeat folk in A major, flute melody, guitar, drums, 120 bpm", 120),
        ("electronic synth with a driving beat, 128 bpm", 128),
    ],
)
def test_tempo_is_heard(synth: ProceduralSynth, description: str, bpm: float) -> None:
    audio = _segments(synth, [description, description], seed=4)
    measured = _tempo_of(audio)
    assert _same_tempo(measured, bpm), f"measured {measured:.1f} BPM, asked {bpm}"


def test_tempo_words(synth: ProceduralSynth) -> None:
    tempos = {}
    for word in ("slow", "moderate", "fast"):
        _, anchor = render(synth, f"{word} piano and strings", 1.0, None)
        tempos[word] = anchor.tempo
    assert tempos["slow"] < 80 < tempos["moderate"] < 110 < tempos["fast"]


def test_dynamics_are_heard(synth: ProceduralSynth) -> None:
    soft = _segments(synth, ["very soft quiet piano and strings"] * 2, seconds=5.0)
    loud = _segments(synth, ["loud powerful piano and strings"] * 2, seconds=5.0)
    assert _rms_db(loud) - _rms_db(soft) > 4.0


def test_drums_only_when_rhythm_is_asked_for(synth: ProceduralSynth) -> None:
    def noisiness(audio: np.ndarray) -> float:
        """Median spectral flatness of 3-8 kHz: percussion is noise there, tones are not."""
        x = audio.mean(axis=1).astype(np.float64)
        n = 2048
        frames = np.array([x[i : i + n] * np.hanning(n) for i in range(0, x.shape[0] - n, n)])
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-20
        f = np.fft.rfftfreq(n, 1 / SR)
        band = power[:, (f > 3000) & (f < 8000)]
        return float(np.median(np.exp(np.log(band).mean(axis=1)) / band.mean(axis=1)))

    with_drums, a1 = render(synth, "gentle piano and bass with a steady rhythm", 8.0, None, seed=2)
    without, a2 = render(synth, "gentle piano and bass, no drums", 8.0, None, seed=2)
    unsaid, a3 = render(synth, "gentle piano and bass", 8.0, None, seed=2)
    assert a1.drums is not None and a2.drums is None and a3.drums is None
    assert noisiness(with_drums) > 10 * max(noisiness(without), noisiness(unsaid))


def test_no_clipping_no_dc_gentle_level(synth: ProceduralSynth) -> None:
    for desc in (
        "intense fast battle music, driving drums, brass and staccato strings, very loud",
        "electronic synth, driving beat, 140 bpm, aggressive",
        "ambient pad and bells, eerie",
        "lofi chill epiano with soft drums",
    ):
        audio = _segments(synth, [desc, desc], seconds=6.0)
        assert np.abs(audio).max() < 0.95, desc
        assert np.abs(audio.mean(axis=0)).max() < 2e-3, desc
        assert -30 < _rms_db(audio) < -10, desc


# --- continuity ------------------------------------------------------------------------------


def test_next_segment_keeps_key_and_tempo_unless_changed(synth: ProceduralSynth) -> None:
    _, a1 = render(synth, "calm piano in E major, 90 bpm", 5.0, None)
    _, a2 = render(synth, "calm piano with soft strings", 5.0, a1)
    assert (a2.key, a2.tempo) == ("E major", 90.0)
    _, a3 = render(synth, "calm piano in C minor, 70 bpm", 5.0, a2)
    assert (a3.key, a3.tempo) == ("C minor", 70.0)
    _, a4 = render(synth, "dark and sad piano", 5.0, a1)  # mood turns minor: the relative key
    assert a4.key == "C# minor" and a4.tempo == 90.0


def _motif_distance(
    a: tuple[tuple[int, float, float], ...], b: tuple[tuple[int, float, float], ...]
) -> float:
    onsets = len({m[1] for m in a} ^ {m[1] for m in b})
    contour = sum(abs((x[0] - a[0][0]) - (y[0] - b[0][0])) for x, y in zip(a, b, strict=False))
    return onsets + contour + 2 * abs(len(a) - len(b))


def test_motif_is_varied_not_restarted(synth: ProceduralSynth) -> None:
    """Each segment's motif differs from the previous one but stays much closer to it than a
    freshly invented motif would be."""
    consecutive, fresh = [], []
    rng = np.random.default_rng(9)
    for seed in range(6):
        anchor = None
        motifs = []
        for _ in range(4):
            _, anchor = render(synth, "flute melody over harp, peaceful", 6.0, anchor, seed=seed)
            motifs.append(anchor.motif)
        for before, after in itertools.pairwise(motifs):
            assert after != before
            consecutive.append(_motif_distance(before, after))
            fresh.append(_motif_distance(before, new_motif(rng, 4, anchor.energy)))
    assert np.mean(consecutive) < 0.6 * np.mean(fresh), (consecutive, fresh)


def test_mutation_is_one_small_change() -> None:
    rng = np.random.default_rng(0)
    changed_rhythm = changed_pitch = 0
    for _ in range(300):
        motif = new_motif(rng, 4, float(rng.uniform()))
        varied = mutate_motif(rng, motif, 4, 0.5)
        assert varied != motif or len(motif) == 1
        rhythm_same = [m[1:] for m in motif] == [m[1:] for m in varied]
        if rhythm_same:
            changed_pitch += 1
            diffs = {a[0] - b[0] for a, b in zip(motif, varied, strict=True)}
            assert max(abs(d) for d in diffs) <= 11  # pitches moved, not a new tune
        else:
            changed_rhythm += 1
        assert all(0 <= o < 4 and 0 < o + d <= 4 for _, o, d in varied)  # stays within the bar
    assert changed_pitch > 100 and changed_rhythm > 20


def test_boundary_is_seamless(synth: ProceduralSynth) -> None:
    """The next segment's head replays the previous tail: the crossfade joins equal signals."""
    desc = "upbeat folk, flute melody, guitar, steady drums"
    a, anchor = render(synth, desc, 10.0, None, tail=0.5, seed=1)
    b, _ = render(synth, desc, 10.0, anchor, tail=0.5, seed=1)
    tail, head = a[-SR // 2 :], b[: SR // 2]
    rel = float(np.sqrt(np.mean((tail - head) ** 2)) / np.sqrt(np.mean(tail**2)))
    assert rel < 0.02
    # ... and phase-continuous: the first head sample continues the last body sample.
    step = np.abs(b[0] - a[10 * SR - 1]).max()
    typical = np.abs(np.diff(a[10 * SR - 2000 : 10 * SR], axis=0)).max()
    assert step <= 1.5 * typical


def test_changed_description_starts_new_music_at_once(synth: ProceduralSynth) -> None:
    _, anchor = render(synth, "calm piano in C major, 80 bpm", 10.0, None, tail=0.5)
    b, nxt = render(synth, "intense fast battle, drums, brass, A minor, 140 bpm", 4.0, anchor, tail=0.5)
    assert (nxt.key, nxt.tempo, nxt.drums) == ("A minor", 140.0, "orchestral")
    assert _key_of(b) == "A minor"


# --- speed -----------------------------------------------------------------------------------


def test_bench_render(benchmark, synth: ProceduralSynth) -> None:  # type: ignore[no-untyped-def]
    """Seconds to render one 10 s segment (+0.5 s tail) continuing from an anchor.
    Run with --benchmark-enable for the figure (pyproject disables benchmarks by default)."""
    desc = "upbeat folk, flute melody over guitar and strings, steady drums, 112 bpm"
    _, anchor = render(synth, desc, 10.0, None, tail=0.5)  # warm the caches
    audio, _ = benchmark(render, synth, desc, 10.0, anchor, tail=0.5)
    assert audio.shape == (round(10.5 * SR), 2)


def test_parse_description() -> None:
    spec = parse_description("Slow, soft flute melody over plucked guitar in C# minor, 72 BPM, no drums")
    assert (spec.tempo, spec.tonic, spec.mode, spec.melody, spec.drums) == (72.0, 1, "minor", "flute", False)
    assert spec.instruments == ("flute", "guitar") and "drums" in spec.excluded
    assert parse_description("Bb major, fast").tonic == 10
    assert parse_description("fast").tempo == music_words.TEMPO_WORDS["fast"].typical  # the shared vocabulary
    assert parse_description("in a minor key, calm").tonic is None  # the article, not the note A
    assert parse_description("in the key of g, dark").tonic == 7
    assert parse_description("steady rhythm, strings").drums is True
    assert parse_description("waltz with strings").meter == 3
    assert parse_description("").instruments == ()


@pytest.mark.parametrize("first_chunk", [0.0, 3.0])
def test_a_mono_synthesizer_plays_the_same_music_mixed_down(first_chunk: float) -> None:
    """The synthesizer stands in for a mono model (musicgen-small) in the model's own format."""
    text = "calm piano and strings at 84 BPM in D minor"
    stereo, a = render(ProceduralSynth(), text, 6.0, tail=0.5, seed=3, first_chunk=first_chunk)
    mono, b = render(open_audio_backend("synth", channels=1), text, 6.0, tail=0.5, seed=3,
                     first_chunk=first_chunk)  # fmt: skip
    assert mono.shape == (stereo.shape[0], 1) and mono.dtype == np.float32
    assert np.allclose(mono[:, 0], stereo.mean(axis=1), atol=1e-6)
    assert a.to_bytes() == b.to_bytes()  # the same anchor: either continues the other
    with pytest.raises(ValueError, match="mono or stereo"):
        ProceduralSynth(channels=6)


@pytest.mark.parametrize("stalled_call", [0, 1, 2])
def test_one_stalled_render_does_not_make_the_synthesizer_too_slow(
    stalled_call: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real-time session asks the backend how fast it renders here before it plays; the first
    render is cold and any one render can be preempted by the game: one slow render (here 1.5 s,
    slower than real time) must not make the synthesizer replace itself for the whole session."""
    synth = ProceduralSynth()
    calls = itertools.count()
    render_ = synth._render

    def stalling(*args: object, **kwargs: object) -> object:
        if next(calls) == stalled_call:
            time.sleep(1.5)
        return render_(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synth, "_render", stalling)
    assert synth.realtime_factor() >= SPEED_MARGIN
    renders = next(calls)
    synth.realtime_factor()
    assert next(calls) == renders + 1  # measured once, then kept: no render the second time
