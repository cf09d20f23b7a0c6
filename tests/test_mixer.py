"""The mixer: seamless joins, steady loudness through equal-power crossfades, transitions within
one crossfade, the extend-previous fallback, starvation, and real synthesizer segments."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from audio_helpers import render, worst_jump_ratio

from metabgm_edge.audio import SAMPLE_RATE
from metabgm_edge.audio.dsp import crossfade
from metabgm_edge.audio.procedural.synth import ProceduralSynth
from metabgm_edge.playback.mixer import Mixer

SR = SAMPLE_RATE
XF = SR // 2  # 0.5 s crossfade


def _sine(freq: float, seconds: float, phase: float = 0.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    x = amp * np.sin(2 * np.pi * freq * t + phase)
    return np.stack([x, x], axis=1).astype(np.float32)


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((round(seconds * SR), 2)).astype(np.float32)


def test_jump_detector_flags_a_butt_splice() -> None:
    """The click measure used below must catch a hard cut (otherwise the tests prove nothing)."""
    a, b = _sine(220, 1.0), _sine(330, 1.0, phase=2.0)
    cut = SR // 2 + int(np.argmax(a[SR // 2 : SR // 2 + 200, 0]))  # a at its crest
    resume = SR // 2 + int(np.argmin(b[SR // 2 : SR // 2 + 200, 0]))  # b at its trough
    spliced = np.concatenate([a[:cut], b[resume:]])
    assert worst_jump_ratio(spliced, cut) > 3.0


def test_join_has_no_click() -> None:
    m = Mixer(SR, 2, crossfade_s=0.5)
    a = _sine(220, 2.0)  # last 0.5 s is the tail
    b = _sine(330, 2.0, phase=2.0)
    m.append(a, XF)
    m.append(b, XF)
    out = m.read(round(3.0 * SR))
    join_start, join_end = 2 * SR - XF, 2 * SR
    for at in (join_start, join_end):
        assert worst_jump_ratio(out, at) < 1.2
    # After the fade-in from silence and before the join: a exactly; after the join: b exactly.
    np.testing.assert_array_equal(out[XF:join_start], a[XF:join_start])
    np.testing.assert_array_equal(out[join_end : join_end + SR], b[XF : XF + SR])


def test_equal_power_crossfade_keeps_loudness_on_uncorrelated_signals() -> None:
    a, b = _noise(1.5, 1), _noise(1.5, 2)
    m = Mixer(SR, 2, crossfade_s=0.5)
    m.append(a, XF)
    m.append(b, XF)
    out = m.read(round(2.0 * SR))
    region = out[SR - 2000 : SR + XF + 2000]  # through the whole crossfade
    win = SR // 50
    rms = np.sqrt((region[: region.shape[0] // win * win] ** 2).reshape(-1, win, 2).mean(axis=(1, 2)))
    assert np.all(np.abs(20 * np.log10(rms)) < 1.0), np.round(20 * np.log10(rms), 2)
    # and it is the textbook equal-power curve when the sides are uncorrelated
    ones = np.ones((XF, 2), dtype=np.float32)
    g_out = crossfade(ones, np.zeros_like(ones), correlation=0.0)[:, 0]
    g_in = crossfade(np.zeros_like(ones), ones, correlation=0.0)[:, 0]
    np.testing.assert_allclose(g_out**2 + g_in**2, 1.0, atol=1e-5)


def test_correlated_join_does_not_swell() -> None:
    """Two sides playing the same music (the synthesizer's continuation): no +3 dB bump."""
    a = _noise(1.5, 3)
    b = np.concatenate([a[-XF:], _noise(1.0, 4)])  # b's head repeats a's tail
    m = Mixer(SR, 2, crossfade_s=0.5)
    m.append(a, XF)
    m.append(b, 0)
    out = m.read(a.shape[0] - XF + XF)
    np.testing.assert_allclose(out[-XF:], a[-XF:], atol=1e-5)


def test_transition_switches_within_one_crossfade() -> None:
    m = Mixer(SR, 2, crossfade_s=0.5)
    old = _sine(220, 10.0)
    new = _sine(660, 4.0, phase=1.0)
    m.append(old, XF)
    before = m.read(SR)  # 1 s of the old segment has played
    m.transition(new, XF)
    assert m.queued_seconds == pytest.approx((new.shape[0] - XF) / SR)  # the old rest is dropped
    out = m.read(2 * SR)
    joined = np.concatenate([before[-SR // 10 :], out])
    assert worst_jump_ratio(joined, SR // 10) < 1.2  # no click where the switch begins
    np.testing.assert_array_equal(out[XF:], new[XF : 2 * SR])  # the new audio alone after one crossfade
    spectrum = np.abs(np.fft.rfft(out[XF:, 0]))
    freqs = np.fft.rfftfreq(out[XF:].shape[0], 1 / SR)
    assert spectrum[np.argmin(np.abs(freqs - 220))] < 1e-3 * spectrum.max()  # the old music is gone
    assert m.stats.transitions == 1


def test_extend_previous_keeps_sound_going() -> None:
    m = Mixer(SR, 2, crossfade_s=0.5)
    seg = _noise(2.5, 5) * np.linspace(0.5, 1.0, round(2.5 * SR), dtype=np.float32)[:, None]
    m.append(seg, XF)
    m.read(seg.shape[0] - XF)  # the body has played; only the held tail is left
    got = m.extend_previous(5.0)
    assert got == pytest.approx(5.0, abs=0.01)
    out = m.read(round(5.0 * SR))
    win = SR // 20
    rms = np.sqrt((out[: out.shape[0] // win * win] ** 2).reshape(-1, win, 2).mean(axis=(1, 2)))
    assert rms.min() > 0.3  # never silent
    assert m.stats.starvations == 0
    assert m.stats.extensions == 1 and m.stats.extended_seconds == pytest.approx(5.0, abs=0.01)


def test_extend_previous_with_nothing_to_repeat() -> None:
    m = Mixer(SR, 2)
    assert m.extend_previous(3.0) == 0.0


def test_an_extension_and_a_segment_arriving_at_the_same_moment_never_fail() -> None:
    # The watchdog extends the music on its own thread while the pipeline's next segment begins:
    # whichever comes second must wait or give way, never raise (a raise ended a serve session).
    m = Mixer(SR, 2, crossfade_s=0.05)
    m.append(_noise(1.0, 1), round(0.05 * SR))
    errors: list[BaseException] = []
    stop = threading.Event()

    def watchdog() -> None:
        try:
            while not stop.is_set():
                m.extend_previous(0.2)
                m.read(round(0.2 * SR))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=watchdog)
    thread.start()
    try:
        for k in range(300):
            seg = m.begin("append", round(0.05 * SR))
            seg.add(_noise(0.1, k))
            seg.end()
    except BaseException as exc:
        errors.append(exc)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:1]
    assert m.stats.extensions > 0  # both really ran


def test_starvation_fades_out_then_silence_and_a_new_segment_fades_in() -> None:
    m = Mixer(SR, 2, crossfade_s=0.5)
    a = _sine(440, 2.0)
    m.append(a, XF)
    out = m.read(3 * SR)
    body = a.shape[0] - XF
    np.testing.assert_array_equal(out[XF:body], a[XF:body])
    fade = out[body : body + XF]
    assert np.abs(fade[:100]).max() > 0.4 and np.abs(fade[-50:]).max() < 0.01  # faded, no cut
    assert out.shape[0] > body + XF and not out[body + XF :].any()
    assert m.stats.starvations == 1
    assert worst_jump_ratio(out, body) < 1.2
    m.append(_sine(440, 1.0, phase=1.3), XF)  # starts mid-waveform: must not click
    again = m.read(SR // 2)
    assert abs(float(again[0, 0])) < 0.01
    assert worst_jump_ratio(np.concatenate([out[-SR // 10 :], again]), SR // 10) < 1.2


@pytest.mark.parametrize("fade_frames", [XF, 0])
def test_the_end_of_the_session_is_not_a_starvation(fade_frames: int) -> None:
    """Between the session's close and the feeder's finish the feeder reads on as if live (a busy
    machine may run it there): the close's fade, then silence, is the end of the music, not the
    music running dry (no starvation counted or logged)."""
    m = Mixer(SR, 2, crossfade_s=0.5)
    a = _sine(440, 4.0)
    m.append(a, 2 * XF)
    heard = m.read(SR)
    m.close(fade_frames=fade_frames)
    rest = np.concatenate([m.read(512) for _ in range(300)])  # the feeder's blocks, starving allowed
    assert m.stats.starvations == 0 and m.stats.starved_frames == 0
    loud = np.nonzero(np.abs(rest).max(axis=1) > 1e-4)[0]
    ends = loud[-1] + 1
    # The fade plays from where the close came (or the body to its end), faded out, then silence.
    assert abs(ends - (fade_frames or a.shape[0] - 2 * XF + XF - SR)) < 64, ends  # (its last frames ~0)
    assert np.abs(rest[ends - 50 : ends]).max() < 0.01 and not rest[ends + 64 :].any()
    assert worst_jump_ratio(np.concatenate([heard, rest]), SR) < 1.2


def test_rejects_bad_segments_and_cleans_nan() -> None:
    m = Mixer(SR, 2)
    with pytest.raises(ValueError, match="shape"):
        m.append(np.zeros((100, 1), dtype=np.float32), 0)
    with pytest.raises(ValueError, match="tail_frames"):
        m.append(np.zeros((100, 2), dtype=np.float32), 200)
    bad = _sine(220, 1.0)
    bad[100:200] = np.nan
    m.append(bad, 0)
    assert np.isfinite(m.read(SR)).all()


def test_synth_segments_join_without_clicks() -> None:
    """Real segments: the same description continuing, then a sharp change of scene."""
    synth = ProceduralSynth()
    m = Mixer(SR, 2, crossfade_s=0.5)
    anchor = None
    descriptions = [
        "calm piano and strings, soft, in G major",
        "calm piano and strings, soft, in G major",
        "intense battle, fast driving drums, brass, dark minor",
    ]
    for desc in descriptions:
        audio, anchor = render(synth, desc, 4.0, anchor, tail=0.5, seed=7)
        m.append(audio, XF)
    out = m.read(round(12.0 * SR))
    for k in (1, 2):
        join = 4 * k * SR  # segment k's body ends here; the crossfade runs for the next 0.5 s
        for at in range(join, join + XF + 1, XF // 4):
            assert worst_jump_ratio(out, at) < 1.5, (k, at)
    assert np.abs(out).max() < 1.0


class FakeReader:
    """What a feeder does for the mixer: a buffer of frames read ahead and not heard yet, given
    back on a join (all but ``keep`` of them)."""

    def __init__(self, mixer: Mixer, keep: int) -> None:
        self.m = mixer
        self.keep = keep
        self.heard = 0  # stream frame the listener is at
        mixer.set_retractor(self.retract)

    def retract(self, frame: int) -> int:
        return max(frame, self.heard + self.keep, 0) if frame < self.m.read_frame else self.m.read_frame


def test_an_appended_segment_joins_at_its_join_frame_even_after_the_tail_was_read_ahead() -> None:
    """A deep ring reads on into the tail (the music going on); the next segment still joins where
    the body ended, and what was read ahead is given back (bit for bit the same music)."""
    m = Mixer(SR, 2, crossfade_s=0.5)
    reader = FakeReader(m, keep=SR // 10)
    a = _noise(3.0, 1)  # body 2 s, tail 1 s
    m.append(a, SR)
    ahead = m.read(round(2.3 * SR))  # 0.3 s into the tail
    np.testing.assert_array_equal(ahead, np.concatenate([fade_in_ref(a[:XF]), a[XF : round(2.3 * SR)]]))
    reader.heard = round(1.5 * SR)  # the listener is 0.5 s before the join
    b = _noise(2.0, 2)
    m.append(b, XF)
    assert m.stats.retracted_frames == round(0.3 * SR) and m.stats.late_joins == 0
    assert m.read_frame == 2 * SR  # reading goes on from the join
    out = m.read(XF + SR // 2)
    np.testing.assert_allclose(out[:XF], crossfade(a[2 * SR : 2 * SR + XF], b[:XF]), atol=1e-6)
    np.testing.assert_array_equal(out[XF:], b[XF : XF + SR // 2])


def fade_in_ref(head: np.ndarray) -> np.ndarray:
    from metabgm_edge.audio.dsp import fade

    return fade(head, out=False)


def test_a_transition_cuts_in_right_behind_what_is_about_to_be_heard() -> None:
    m = Mixer(SR, 2, crossfade_s=0.5)
    reader = FakeReader(m, keep=SR // 10)
    old = _sine(220, 10.0)
    m.append(old, XF)
    m.read(2 * SR)  # 2 s read ahead of the listener
    reader.heard = SR
    m.transition(_sine(660, 3.0, phase=1.0), XF)
    assert m.read_frame == SR + SR // 10  # back to 0.1 s after the listener, not 1 s later
    assert m.stats.retracted_frames == 2 * SR - (SR + SR // 10) and m.stats.transitions == 1


def test_a_late_segment_joins_on_the_beat_after_its_join_frame() -> None:
    """No reader gives anything back (fast mode): a segment continuing the music from its join
    frame, when that frame has already been read, enters later with its first frames skipped, so
    it stays aligned with the music it continues."""
    m = Mixer(SR, 2, crossfade_s=0.5)
    a = _noise(3.0, 3)  # body 2 s, tail 1 s
    m.append(a, SR)
    m.read(round(2.2 * SR))  # 0.2 s past the join frame
    seg = m.begin("append", XF)
    b = _noise(2.0, 4)
    seg.add(b)
    seg.end()
    assert seg.late and seg.start_frame == round(2.2 * SR) and seg.skipped == round(0.2 * SR)
    assert m.stats.late_joins == 1
    out = m.read(XF + 100)
    skip = round(0.2 * SR)
    old_side = a[skip + 2 * SR : skip + 2 * SR + XF]
    np.testing.assert_allclose(out[:XF], crossfade(old_side, b[skip : skip + XF]), atol=1e-6)


def test_reading_ahead_never_starves_while_the_tail_lasts_and_the_fade_reserve_is_kept() -> None:
    m = Mixer(SR, 2, crossfade_s=0.5)
    a = _noise(3.0, 5)
    m.append(a, SR)  # body 2 s + tail 1 s: 2.5 s readable, the last crossfade is the fade reserve
    assert m.ahead_seconds == pytest.approx(2.5)
    m.read(round(2.5 * SR))
    assert m.stats.starvations == 0
    m.read(100)
    assert m.stats.starvations == 1
