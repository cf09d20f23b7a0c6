"""Sinks: the WAV writer, the file sink, the device callback, the no-device fallback, and a real
PortAudio device (a PulseAudio null sink) whose captured output must equal the WAV it tees."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest
from audio_device import PulseSink, locate, pulse_null_sink_fixture, stop_recording  # noqa: F401 (fixture)
from audio_helpers import render

from metabgm_edge.audio import SAMPLE_RATE
from metabgm_edge.audio.procedural.synth import ProceduralSynth
from metabgm_edge.playback import sinks as sinks_mod
from metabgm_edge.playback.feeder import Feeder
from metabgm_edge.playback.mixer import Mixer
from metabgm_edge.playback.ringbuffer import RingBuffer
from metabgm_edge.playback.sinks import (
    DeviceSink,
    FileSink,
    NoOutputDevice,
    PlaybackCallback,
    list_devices,
    open_sink,
)
from metabgm_edge.playback.wav import WavWriter, read_wav

ROOT = Path(__file__).resolve().parent.parent
SR = SAMPLE_RATE


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((round(seconds * SR), 2))).astype(np.float32)


# --- WAV ------------------------------------------------------------------------------------


def test_wav_round_trip_is_bit_exact(tmp_path: Path) -> None:
    audio = _noise(1.3)
    with WavWriter(tmp_path / "a.wav", SR, 2) as w:
        for start in range(0, audio.shape[0], 3000):
            w.write(audio[start : start + 3000])
        w.set_metadata(b'{"hello": 1}')
    back, info = read_wav(tmp_path / "a.wav")
    assert (info.sample_rate, info.channels, info.format) == (SR, 2, "float32")
    assert info.metadata == b'{"hello": 1}'
    np.testing.assert_array_equal(back, audio)


def test_wav_header_is_valid_while_writing_after_sync(tmp_path: Path) -> None:
    path = tmp_path / "live.wav"
    w = WavWriter(path, SR, 2, sync_seconds=0.25)
    audio = _noise(1.0, seed=1)
    w.write(audio)  # crosses several sync points
    w.write(audio[:100])  # not yet synced
    back, _ = read_wav(path)  # read while still open, as after a crash
    assert back.shape[0] >= audio.shape[0]
    np.testing.assert_array_equal(back[: audio.shape[0]], audio)
    w.close()
    back, _ = read_wav(path)
    assert back.shape[0] == audio.shape[0] + 100


def test_wav_survives_a_killed_writer(tmp_path: Path) -> None:
    """A process killed mid-write (SIGKILL: no cleanup at all) leaves a valid WAV up to the last
    header sync, with exactly the samples written."""
    path = tmp_path / "killed.wav"
    code = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        from metabgm_edge.playback.wav import WavWriter
        rng = np.random.default_rng(5)
        audio = (0.3 * rng.standard_normal(({SR * 3}, 2))).astype(np.float32)
        w = WavWriter({str(path)!r}, {SR}, 2, sync_seconds=0.5)
        for start in range(0, audio.shape[0], 1000):
            w.write(audio[start:start + 1000])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    back, info = read_wav(path)
    expected = (0.3 * np.random.default_rng(5).standard_normal((SR * 3, 2))).astype(np.float32)
    assert info.sample_rate == SR
    assert back.shape[0] >= SR * 2.5
    np.testing.assert_array_equal(back, expected[: back.shape[0]])


def test_read_wav_pcm16_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "pcm.wav"
    ints = np.array([[0, 16384], [-32768, 32767]], dtype="<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(ints.tobytes())
    back, info = read_wav(path)
    assert info.sample_rate == 16000 and info.format == "pcm16"
    np.testing.assert_allclose(back, ints / 32768.0)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(ValueError, match=r"bad\.wav"):
        read_wav(bad)
    (tmp_path / "text.wav").write_text("hello")
    with pytest.raises(ValueError, match="not a RIFF"):
        read_wav(tmp_path / "text.wav")


# --- the device callback (no device needed) --------------------------------------------------


class _Flags:
    def __init__(self, underflow: bool) -> None:
        self.output_underflow = underflow

    def __bool__(self) -> bool:
        return True


def test_callback_plays_the_ring_tees_it_and_never_raises() -> None:
    ring = RingBuffer(4096, 2)
    tap = RingBuffer(8192, 2)
    cb = PlaybackCallback(ring, tap)
    audio = _noise(0.1, seed=2)[:3000]
    ring.write(audio)
    out = np.zeros((1024, 2), dtype=np.float32)
    played = []
    for _ in range(4):  # the 4th call runs dry: the rest is silence, counted
        cb(out, 1024, None, None)
        played.append(out.copy())
    played_all = np.concatenate(played)
    np.testing.assert_array_equal(played_all[:3000], audio)
    assert not played_all[3000:].any()
    assert ring.underruns == 2  # calls 3 (partly) and 4
    teed = np.zeros((tap.available_frames, 2), dtype=np.float32)
    tap.read_available_into(teed)
    np.testing.assert_array_equal(teed, played_all)  # the WAV gets exactly what was played

    cb(out, 1024, None, _Flags(underflow=True))
    assert cb.underflows == 1
    wrong = np.zeros((16, 3), dtype=np.float32)  # a buffer of the wrong shape
    cb(wrong, 16, None, None)  # must not raise
    assert cb.errors == 1 and not wrong.any()


def test_callback_allocates_no_sample_memory() -> None:
    ring = RingBuffer(SR, 2)
    tap = RingBuffer(SR, 2)
    cb = PlaybackCallback(ring, tap)
    out = np.zeros((1024, 2), dtype=np.float32)  # 8 KiB: one copy per call would show
    block = _noise(0.05)[:1024]
    cb(out, 1024, None, None)  # warm up
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            ring.write(block)
            cb(out, 1024, None, None)
            tap.read_available_into(out)  # keep the tap from filling
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - base < 4096, f"callback path allocated {peak - base} bytes"


# --- file sink and fallback ------------------------------------------------------------------


def test_file_sink_unpaced_writes_exactly_the_mix(tmp_path: Path) -> None:
    """The --fast path: mixer -> feeder -> ring -> file sink, as fast as audio comes."""
    synth = ProceduralSynth()
    mixer = Mixer(SR, 2, crossfade_s=0.5)
    ring = RingBuffer(SR // 2, 2)
    reference = Mixer(SR, 2, crossfade_s=0.5)
    anchor = None
    segments = []
    for desc in ("calm piano", "calm piano", "fast drums and synth, intense"):
        audio, anchor = render(synth, desc, 2.0, anchor, tail=0.5, seed=1)
        segments.append(audio)
    for audio in segments:
        reference.append(audio, SR // 2)
    reference.finish()
    expected = reference.read(reference.queued_frames)

    sink = FileSink(ring, wav_path=tmp_path / "fast.wav", paced=False)
    feeder = Feeder(mixer, ring, realtime=False)
    sink.start()
    feeder.start()
    for audio in segments:
        mixer.append(audio, SR // 2)
    assert feeder.finish(timeout=30)
    feeder.stop()
    sink.stop(drain=True)
    back, _ = read_wav(tmp_path / "fast.wav")
    np.testing.assert_array_equal(back, expected)
    stats = sink.stats()
    assert stats.ring_underruns == 0 and mixer.stats.starvations == 0
    assert stats.wav_frames == expected.shape[0]


def test_file_sink_paced_keeps_real_time(tmp_path: Path) -> None:
    ring = RingBuffer(SR * 2, 2)
    audio = _noise(1.0, seed=3)
    ring.write(audio)
    sink = FileSink(ring, wav_path=tmp_path / "paced.wav", paced=True)
    t0 = time.monotonic()
    sink.start()
    sink.stop(drain=True, timeout=10)
    elapsed = time.monotonic() - t0
    back, _ = read_wav(tmp_path / "paced.wav")
    np.testing.assert_array_equal(back, audio)
    assert elapsed >= 0.9, "a paced sink must consume audio at the clock's pace"


def test_realtime_feeder_plays_silence_when_starved_and_the_device_never_underruns(tmp_path: Path) -> None:
    """A late segment is the mixer's starvation (counted there, faded, then silence), not a
    ring-buffer underrun; the next segment plays as soon as it arrives."""
    ring = RingBuffer(SR, 2)
    mixer = Mixer(SR, 2, crossfade_s=0.1)
    first = _noise(0.6, seed=6) * np.float32(0.5)
    mixer.append(first, round(0.1 * SR))
    feeder = Feeder(mixer, ring, target_seconds=0.1, realtime=True)
    sink = FileSink(ring, wav_path=tmp_path / "rt.wav", paced=True)
    feeder.start()
    sink.start()
    time.sleep(1.0)  # the first segment runs out after 0.5 s: the mixer starves
    mixer.append(_noise(1.5, seed=7) * np.float32(0.5), 0)
    time.sleep(0.6)
    feeder.finish(timeout=5)
    feeder.stop()
    sink.stop(drain=True, timeout=5)
    stats = sink.stats()
    assert stats.ring_underruns == 0
    assert mixer.stats.starvations == 1
    back, _ = read_wav(tmp_path / "rt.wav")
    np.testing.assert_array_equal(
        back[round(0.1 * SR) : round(0.5 * SR)], first[round(0.1 * SR) : round(0.5 * SR)]
    )
    level = np.sqrt((back[: back.shape[0] // 1600 * 1600] ** 2).reshape(-1, 1600, 2).mean(axis=(1, 2)))
    silent = level < 1e-6
    assert silent.any() and not silent[-8:-2].any()  # a gap while starved, then the late segment


def test_open_sink_without_device_warns_once_and_writes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_portaudio() -> None:
        raise NoOutputDevice("PortAudio is not installed (test); install libportaudio2")

    monkeypatch.setattr(sinks_mod, "_sounddevice", no_portaudio)
    ring = RingBuffer(SR, 2)
    with caplog.at_level(logging.WARNING, logger="metabgm_edge.playback.sinks"):
        sink = open_sink(ring, wav_path=tmp_path / "out.wav", paced=False)
    assert isinstance(sink, FileSink)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no audio output device" in warnings[0].getMessage() and "out.wav" in warnings[0].getMessage()
    audio = _noise(0.5, seed=4)
    ring.write(audio)
    sink.start()
    sink.stop(drain=True, timeout=10)
    back, _ = read_wav(tmp_path / "out.wav")
    np.testing.assert_array_equal(back, audio)
    assert list_devices() == []


def test_headless_machine_falls_back_to_file_in_a_fresh_process(tmp_path: Path) -> None:
    """What a user without a sound card sees: one warning, then the WAV is written."""
    out = tmp_path / "headless.wav"
    code = textwrap.dedent(
        f"""
        import logging, numpy as np
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
        from metabgm_edge.playback.ringbuffer import RingBuffer
        from metabgm_edge.playback.sinks import open_sink
        ring = RingBuffer(32000, 2)
        audio = np.full((16000, 2), 0.25, dtype=np.float32)
        ring.write(audio)
        sink = open_sink(ring, wav_path={str(out)!r}, paced=False)
        print("KIND", sink.kind)
        sink.start()
        sink.stop(drain=True, timeout=10)
        """
    )
    empty = tmp_path / "no-sound-server"
    empty.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(empty), PULSE_SERVER=f"unix:{empty}/none")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "KIND file" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING metabgm_edge")]
    assert len(warnings) == 1, proc.stderr
    assert "no audio output device" in warnings[0]
    back, _ = read_wav(out)
    assert back.shape == (16000, 2) and np.all(back == 0.25)


# --- a real device ---------------------------------------------------------------------------


@pytest.mark.audio_device
def test_device_output_equals_the_wav_it_tees(pulse_null_sink: PulseSink, tmp_path: Path) -> None:
    synth = ProceduralSynth()
    music, _ = render(synth, "upbeat folk, flute melody, guitar, steady drums", 3.0, None, seed=2)
    # The last ~90 ms never reach the sink before the stream stops: pad with silence.
    audio = np.concatenate([music, np.zeros((round(0.3 * SR), 2), dtype=np.float32)])
    ring = RingBuffer(SR, 2)
    pos = ring.write(audio[: SR // 2])
    played_path, captured_path = tmp_path / "played.wav", tmp_path / "captured.wav"
    sink = open_sink(ring, wav_path=played_path)
    assert isinstance(sink, DeviceSink), "the null sink should be a usable output device"
    assert any(d.default_output for d in list_devices())
    recorder = pulse_null_sink.record(captured_path)
    try:
        time.sleep(0.5)
        sink.start()
        while pos < audio.shape[0]:
            n = ring.write(audio[pos : pos + 2048])
            pos += n
            if n == 0:
                time.sleep(0.01)
        sink.stop(drain=True, timeout=15)
        time.sleep(0.3)
    finally:
        sink.close()
        stop_recording(recorder)
    stats = sink.stats()
    logging.getLogger(__name__).info("device stats: %s", stats)
    played, _ = read_wav(played_path)
    captured, info = read_wav(captured_path)
    assert (info.sample_rate, info.channels, info.format) == (SR, 2, "float32")
    assert stats.callback_errors == 0 and stats.tap_dropped_frames == 0
    # The WAV holds exactly what the callback handed to the device.
    assert stats.ring_underruns == 0, stats
    np.testing.assert_array_equal(played, audio[: played.shape[0]])
    assert played.shape[0] >= music.shape[0]

    # What reached the sink equals the WAV once aligned, chunk by chunk (an underflow on a loaded
    # machine inserts silence at the device, shifting what follows: each chunk is re-located).
    start = locate(played[SR // 4 : SR // 4 + 4096], captured, SR, captured.shape[0])
    assert start is not None
    offset = start - SR // 4
    chunk = SR // 20
    matched = total = 0
    # The first ~1 ms of a new stream never reaches a PulseAudio sink (measured: 42 frames lost at
    # stream start, everything after bit-exact), so the comparison starts 20 ms in.
    for i in range(SR // 50, music.shape[0] - chunk, chunk):
        ref = played[i : i + chunk]
        if np.abs(ref).max() < 1e-4:
            continue
        total += 1
        at = locate(ref, captured, offset + i, radius=SR // 2)
        if (
            at is not None
            and at + chunk <= captured.shape[0]
            and np.max(np.abs(captured[at : at + chunk] - ref)) <= 1e-6
        ):
            matched += 1
            offset = at - i
    allowed = 0 if stats.underflows == 0 else min(total // 10, 3 * stats.underflows)
    assert total > 40
    assert matched >= total - allowed, f"{matched}/{total} chunks bit-exact; {stats.underflows} underflows"


def _tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x, x], axis=1)


def _band_energy(x: np.ndarray, freq: float) -> float:
    t = np.arange(x.shape[0]) / SR
    return float(abs(np.dot(x[:, 0], np.exp(-2j * np.pi * freq * t))))


@pytest.mark.parametrize("retract", [True, False], ids=["deep ring gives back", "without giving back"])
def test_a_transition_is_heard_right_away_although_the_ring_holds_a_second(
    tmp_path: Path, retract: bool
) -> None:
    """The ring is a second deep so that a busy machine cannot starve the device; a transition takes
    back what the device has not played and is heard within the guard plus one crossfade."""
    ring = RingBuffer(2 * SR, 2)
    mixer = Mixer(SR, 2, crossfade_s=0.1)
    feeder = Feeder(mixer, ring, target_seconds=1.0, realtime=True)
    if not retract:
        mixer.set_retractor(None)
    sink = FileSink(ring, wav_path=tmp_path / "t.wav", paced=True)
    mixer.append(_tone(220, 6.0), round(0.1 * SR))
    feeder.start()
    while ring.available_frames < SR * 0.9:
        time.sleep(0.005)
    sink.start()
    time.sleep(1.5)
    heard = ring.frames_read  # what the device has taken when the scene changes
    mixer.transition(_tone(880, 3.0), round(0.1 * SR))
    time.sleep(2.0)
    feeder.finish(timeout=5)
    feeder.stop()
    sink.stop(drain=True, timeout=5)
    out, _ = read_wav(tmp_path / "t.wav")
    win = SR // 50
    first_new = next(
        i for i in range(heard, out.shape[0] - win, win // 2)
        if _band_energy(out[i : i + win], 880) > _band_energy(out[i : i + win], 220)
    )  # fmt: skip
    delay = (first_new - heard) / SR
    if retract:
        assert delay < feeder.guard() / SR + 0.1 + 0.1, delay  # guard + crossfade (+ a block)
        assert mixer.stats.retracted_frames > SR // 2
    else:
        assert delay > 0.6, delay  # the whole ring's depth would have been in the way
    assert sink.stats().ring_underruns == 0
