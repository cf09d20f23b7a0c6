"""A real PortAudio output device on a machine with no sound card, for tests marked audio_device.

The module-scoped fixture ``pulse_null_sink`` starts a private PulseAudio daemon (its own
XDG_RUNTIME_DIR) with a null sink at 32 kHz float32 stereo, keeps a silent low-latency stream
playing into it so the sink runs in small blocks (an idle null sink runs in 2 s blocks and
starves a new stream), waits for it to settle, points PortAudio (through ALSA's pulse plugin)
at it, and stops everything when the module's tests are done, restoring the environment and
PortAudio's device list so later tests see the machine as it was (headless in CI).
See ../shared/notes/audio-device-in-ci.md.

Packages: scripts/setup-audio.sh installs them (libportaudio2 pulseaudio pulseaudio-utils
libasound2-plugins). Without them the tests skip and say which is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SINK = "ci_null"
RATE = 32000
CHANNELS = 2
SETTLE_S = 2.5


@dataclass
class PulseSink:
    name: str
    monitor: str
    env: dict[str, str]
    runtime_dir: Path

    def record(self, path: Path) -> subprocess.Popen[bytes]:
        """Start recording the sink's monitor into a float32 WAV; stop with :func:`stop_recording`."""
        return subprocess.Popen(
            [
                "parec", "-d", self.monitor, "--latency-msec=20", "--file-format=wav", f"--rate={RATE}",
                f"--channels={CHANNELS}", "--format=float32le", str(path),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip


def stop_recording(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT lets parec finish the WAV header."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def missing_tools() -> list[str]:
    missing = [t for t in ("pulseaudio", "pactl", "pacat", "parec") if shutil.which(t) is None]
    try:
        import sounddevice  # noqa: F401
    except OSError:
        missing.append("libportaudio2")
    return missing


def _reinit_portaudio() -> None:
    """PortAudio lists devices when it initialises; make it look again now the server runs."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


@pytest.fixture(scope="module", name="pulse_null_sink")
def pulse_null_sink_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseSink]:
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"no PulseAudio null sink: {', '.join(missing)} not installed (run sh scripts/setup-audio.sh)"
        )
    runtime = tmp_path_factory.mktemp("pulse-runtime")
    runtime.chmod(0o700)
    home = tmp_path_factory.mktemp("pulse-home")
    env = dict(os.environ)
    env.update(
        XDG_RUNTIME_DIR=str(runtime),
        PULSE_SERVER=f"unix:{runtime}/pulse/native",
        PULSE_RUNTIME_PATH=str(runtime / "pulse"),
        PULSE_STATE_PATH=str(home / "state"),
        PULSE_COOKIE=str(home / "cookie"),
        HOME=str(home),
    )
    start = subprocess.run(
        [
            "pulseaudio", "-n", "--daemonize=yes", "--exit-idle-time=-1", "--disallow-exit=no",
            "--use-pid-file=yes", "--log-target=stderr",
            "-L", "module-native-protocol-unix",
            "-L", f"module-null-sink sink_name={SINK} rate={RATE} channels={CHANNELS} format=float32le",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    if start.returncode != 0:
        pytest.skip(f"pulseaudio did not start: {start.stderr.strip()[-500:]}")
    keepalive = None
    saved = {
        k: os.environ.get(k)
        for k in ("XDG_RUNTIME_DIR", "PULSE_SERVER", "PULSE_RUNTIME_PATH", "PULSE_COOKIE")
    }
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                pytest.skip("pulseaudio started but pactl cannot reach it")
            time.sleep(0.1)
        subprocess.run(["pactl", "set-default-sink", SINK], env=env, check=True, capture_output=True)
        # A silent low-latency stream keeps the null sink running in small blocks.
        with open("/dev/zero", "rb") as zero:
            keepalive = subprocess.Popen(
                ["pacat", "-p", "-d", SINK, "--latency-msec=10", "--raw", f"--rate={RATE}",
                 f"--channels={CHANNELS}", "--format=float32le"],
                env=env,
                stdin=zero,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        time.sleep(SETTLE_S)
        for key in saved:
            os.environ[key] = env[key]
        _reinit_portaudio()
        yield PulseSink(SINK, f"{SINK}.monitor", env, runtime)
    finally:
        if keepalive is not None and keepalive.poll() is None:
            keepalive.terminate()
            try:
                keepalive.wait(timeout=5)
            except subprocess.TimeoutExpired:
                keepalive.kill()
                keepalive.wait()
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=15)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with contextlib.suppress(Exception):
            _reinit_portaudio()


def locate(chunk: np.ndarray, captured: np.ndarray, expected: int, radius: int) -> int | None:
    """Offset in ``captured`` where ``chunk`` sits (best normalised cross-correlation), searched
    within ``radius`` of ``expected``."""
    lo = max(0, expected - radius)
    hi = min(captured.shape[0], expected + radius + chunk.shape[0])
    window = captured[lo:hi, 0].astype(np.float64)
    ref = chunk[:, 0].astype(np.float64)
    m = ref.shape[0]
    if window.shape[0] < m:
        return None
    size = 1 << int(np.ceil(np.log2(window.shape[0] + m)))
    corr = np.fft.irfft(np.fft.rfft(window, size) * np.conj(np.fft.rfft(ref, size)), size)
    corr = corr[: window.shape[0] - m + 1]
    csum = np.concatenate([[0.0], np.cumsum(window**2)])
    energy = csum[m:] - csum[:-m]
    ncc = corr / np.sqrt(np.maximum(energy, 1e-12) * max(float(ref @ ref), 1e-12))
    return lo + int(np.argmax(ncc))
