"""Recordings a strict reader accepts: killed mid-session, past 4 GiB (RF64), into /dev/null or a pipe.

libsndfile (through ``soundfile``) reads only what the header says, unlike this package's own
lenient reader, which takes an unpatched header's "0 bytes" as "the whole file": a writer that
never patched its header would pass the lenient reader and fail here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from metabgm_edge.playback import wav as wav_mod
from metabgm_edge.playback.wav import WavWriter, read_wav

ROOT = Path(__file__).resolve().parent.parent
SR = 32000


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((round(seconds * SR), 2))).astype(np.float32)


def _no_sound_server() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "PULSE_SERVER")}


@pytest.mark.slow
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "real-time"])
def test_a_killed_play_leaves_a_wav_that_libsndfile_reads(tmp_path: Path, fast: bool) -> None:
    out = tmp_path / "killed.wav"
    args = [sys.executable, "-m", "metabgm_edge", "-q", "play", "--text", "composer", "--interval", "2",
            "--out", str(out)]  # fmt: skip
    args += ["--fast", "--duration", "3600"] if fast else ["--duration", "3600"]
    proc = subprocess.Popen(args, cwd=ROOT, env=_no_sound_server(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 5 * SR * 8):
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)  # no cleanup at all
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
    info = soundfile.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 2, "FLOAT")
    strict, _ = soundfile.read(str(out), dtype="float32", always_2d=True)
    lenient, _ = read_wav(out)
    assert strict.shape[0] >= 4 * SR  # all but the last second (the header is patched every second)
    assert lenient.shape[0] - strict.shape[0] <= 2 * SR
    np.testing.assert_array_equal(strict, lenient[: strict.shape[0]])
    assert float(np.abs(strict[SR:]).max()) > 0.01  # music, not silence


def test_past_the_riff_limit_the_file_becomes_rf64_and_stays_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long evening: past 4 GiB a RIFF header cannot hold the sizes. The limit is lowered here so
    the switch happens after 1.5 s; the reserved JUNK chunk becomes RF64's ds64."""
    monkeypatch.setattr(wav_mod, "_RIFF_LIMIT", SR * 8 * 3 // 2)
    path = tmp_path / "long.wav"
    audio = _noise(3.0, seed=2)
    w = WavWriter(path, SR, 2, sync_seconds=0.5)
    w.write(audio[:SR])
    assert path.read_bytes()[:4] == b"RIFF"
    w.write(audio[SR:])  # crosses the limit: the next sync writes an RF64 header
    assert path.read_bytes()[:4] == b"RF64"
    live, _ = soundfile.read(str(path), dtype="float32", always_2d=True)  # valid while still open
    np.testing.assert_array_equal(live, audio[: live.shape[0]])
    assert live.shape[0] >= audio.shape[0] - SR // 2
    w.set_metadata(b'{"kind": "synth", "data": "e30="}')
    w.close()
    assert soundfile.info(str(path)).format == "RF64"
    strict, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    np.testing.assert_array_equal(strict, audio)
    ours, info = read_wav(path)
    np.testing.assert_array_equal(ours, audio)
    assert info.metadata == b'{"kind": "synth", "data": "e30="}'  # `render --continue-from` reads it


def test_a_short_recording_is_a_plain_riff_wav(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    audio = _noise(0.5, seed=3)
    with WavWriter(path, SR, 2) as w:
        w.write(audio)
    assert path.read_bytes()[:4] == b"RIFF"
    assert soundfile.info(str(path)).format == "WAV"
    np.testing.assert_array_equal(soundfile.read(str(path), dtype="float32", always_2d=True)[0], audio)


def test_play_into_dev_null_ends_without_a_traceback() -> None:
    """A destination that cannot be patched (here /dev/null, whose position is always 0)."""
    proc = subprocess.run(
        [sys.executable, "-m", "metabgm_edge", "-q", "play", "--fast", "--duration", "30", "--text",
         "composer", "--out", "/dev/null"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "played 30.0 s" in proc.stdout


def test_a_recording_streamed_into_a_pipe_is_a_readable_wav(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def drain() -> None:
        with open(fifo, "rb") as fh:
            got.append(fh.read())

    reader = threading.Thread(target=drain)
    reader.start()
    audio = _noise(2.0, seed=4)
    with WavWriter(fifo, SR, 2, sync_seconds=0.25) as w:
        assert w.streamed
        w.write(audio)
        w.set_metadata(b"dropped: a pipe cannot take it after the data of unknown size")
    reader.join(10)
    copy = tmp_path / "copy.wav"
    copy.write_bytes(got[0])
    back, info = read_wav(copy)
    np.testing.assert_array_equal(back, audio)
    assert info.sample_rate == SR
