"""`metabgm-edge doctor`: every check reports ok / missing / error, and the command never fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from metabgm_edge import doctor
from metabgm_edge.cli import main

CHECKS = [
    "python", "packages", "audio output", "synthesizer", "onnxruntime", "cuda", "tensorrt provider",
    "gpu libraries", "tensorrt", "tensorrt-rtx", "gpu", "folders", "engines", "musicgen",
]  # fmt: skip
RUN_CLI = "from metabgm_edge.cli import run; run()"


def run_doctor(*args: str) -> tuple[int, dict[str, dict]]:
    result = CliRunner().invoke(main, ["-q", "doctor", "--json", *args])
    assert result.exit_code == 0, result.output
    return result.exit_code, {c["name"]: c for c in json.loads(result.stdout)}


def test_doctor_reports_every_check_and_exits_0() -> None:
    _, checks = run_doctor()
    assert list(checks) == CHECKS
    for c in checks.values():
        assert c["status"] in ("ok", "missing", "error"), c
        assert c["detail"], c
    assert checks["python"]["status"] == "ok"
    assert checks["packages"]["status"] == "ok"
    assert checks["packages"]["data"]["versions"]["numpy"]
    # onnxruntime really ran the hand-encoded test model on the CPU.
    assert checks["onnxruntime"]["status"] == "ok", checks["onnxruntime"]
    assert "a test session ran on CPUExecutionProvider" in checks["onnxruntime"]["detail"]
    assert checks["synthesizer"]["status"] == "ok"


def test_doctor_table_lists_one_line_per_check() -> None:
    result = CliRunner().invoke(main, ["-q", "doctor"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(CHECKS)
    for line, name in zip(lines, CHECKS, strict=True):
        status, rest = line.split(None, 1)
        assert status in ("ok", "missing", "error")
        assert rest.startswith(name)


def test_without_an_output_device_doctor_says_play_writes_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from metabgm_edge.playback import sinks

    monkeypatch.setattr(sinks, "list_devices", lambda: [])  # what PortAudio says on a headless machine
    _, checks = run_doctor()
    audio = checks["audio output"]
    assert audio["status"] == "missing"
    assert "no output device" in audio["detail"]
    assert "writes the music to a file only" in audio["detail"]


def test_without_sounddevice_doctor_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    _, checks = run_doctor()
    assert checks["audio output"]["status"] == "missing"
    assert "sounddevice is not installed" in checks["audio output"]["detail"]


def test_the_hand_encoded_test_model_is_valid_onnx() -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(doctor.tiny_model(width=3), providers=["CPUExecutionProvider"])
    x = np.array([[1.5, -2.0, 3.0]], dtype=np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, x * x)
    assert doctor.try_provider("CPUExecutionProvider")[0] == "ok"


@pytest.mark.may_skip  # skips only where it does not apply (a GPU build, another OS)
def test_a_provider_this_onnxruntime_lacks_is_missing_not_an_error() -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has TensorRT")
    status, detail = doctor.try_provider("TensorrtExecutionProvider")
    assert status == "missing"
    assert "built without TensorrtExecutionProvider" in detail


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(0o755)


def test_nvidia_smi_output_and_failures_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    _fake_nvidia_smi(tmp_path, 'echo "NVIDIA H100 80GB HBM3, 570.86, 81559 MiB, 1 MiB, 9.0"')
    _, checks = run_doctor()
    assert checks["gpu"]["status"] == "ok"
    assert "NVIDIA H100 80GB HBM3, 570.86" in checks["gpu"]["detail"]

    _fake_nvidia_smi(tmp_path, 'echo "NVIDIA-SMI has failed: no driver" >&2; exit 9')
    _, checks = run_doctor()
    assert checks["gpu"]["status"] == "error"
    assert "nvidia-smi exited 9: NVIDIA-SMI has failed: no driver" in checks["gpu"]["detail"]


def test_a_check_that_crashes_is_an_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> doctor.Check:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(doctor, "check_gpu", boom)
    _, checks = run_doctor()
    assert checks["gpu"]["status"] == "error"
    assert "RuntimeError: driver exploded" in checks["gpu"]["detail"]
    assert list(checks) == CHECKS  # the checks after it still ran


def test_engines_found_missing_and_broken(tmp_path: Path) -> None:
    _, checks = run_doctor("--engines", str(tmp_path / "nowhere"))
    assert checks["engines"]["status"] == "missing"
    assert "embedded composer" in checks["engines"]["detail"]

    engines = tmp_path / "engines"
    (engines / "empty-folder").mkdir(parents=True)
    _, checks = run_doctor("--engines", str(engines))
    assert checks["engines"]["status"] == "missing"

    (engines / "smollm2-int8").mkdir()
    (engines / "smollm2-int8" / "manifest.json").write_text('{"kind": "llm", "name": ', encoding="utf-8")
    _, checks = run_doctor("--engines", str(engines))
    assert checks["engines"]["status"] == "error"
    assert "UNREADABLE smollm2-int8" in checks["engines"]["detail"]
    assert checks["engines"]["data"]["problems"]


# -- a real PortAudio device: a PulseAudio null sink ------------------------------------------------


@pytest.fixture
def null_sink(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private PulseAudio daemon with a null sink as the default output; yields its environment."""
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.skip("PulseAudio is not installed (scripts/setup-audio.sh installs it)")
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    env.pop("PULSE_SERVER", None)
    proc = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
         "-L", "module-native-protocol-unix",
         "-L", "module-null-sink sink_name=doctor_null rate=32000 channels=2 format=float32le"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("the PulseAudio daemon did not start")
            time.sleep(0.2)
        subprocess.run(["pactl", "set-default-sink", "doctor_null"], env=env, check=True, capture_output=True)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.audio_device
def test_doctor_lists_a_real_output_device(null_sink: dict[str, str]) -> None:
    # A fresh process: PortAudio enumerates devices once, when it is initialised.
    proc = subprocess.run(
        [sys.executable, "-c", RUN_CLI, "-q", "doctor", "--json"],
        env=null_sink, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    audio = {c["name"]: c for c in json.loads(proc.stdout)}["audio output"]
    assert audio["status"] == "ok", audio
    names = [d["name"] for d in audio["data"]["devices"]]
    assert any(n in ("pulse", "default") for n in names), names
    assert audio["data"]["default_usable"] is True
    assert "plays 32000 Hz float32 stereo" in audio["detail"]


def test_two_onnxruntime_packages_are_an_error_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from metabgm_edge.ort import session

    monkeypatch.setattr(
        session, "onnxruntime_distributions", lambda: ["onnxruntime 1.32.0", "onnxruntime-gpu 1.31.1"]
    )
    _, checks = run_doctor()
    assert checks["onnxruntime"]["status"] == "error"
    detail = checks["onnxruntime"]["detail"]
    assert "onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1 are installed together" in detail
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in detail


def test_doctor_says_how_model_threads_wait_and_flags_a_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METABGM_EDGE_ORT_SPIN", raising=False)
    _, checks = run_doctor()
    assert checks["onnxruntime"]["data"]["spin"] == "run"
    assert "threads spin: run (METABGM_EDGE_ORT_SPIN)" in checks["onnxruntime"]["detail"]
    monkeypatch.setenv("METABGM_EDGE_ORT_SPIN", "fast")
    _, checks = run_doctor()
    assert checks["onnxruntime"]["status"] == "error"
    assert "METABGM_EDGE_ORT_SPIN='fast' must be one of run, always, never" in checks["onnxruntime"]["detail"]


def test_tensorrt_rtx_says_how_to_install_it_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from metabgm_edge.ort import session

    if session.rtx_installed():
        pytest.skip("the TensorRT-RTX EP is installed here")
    _, checks = run_doctor()
    assert checks["tensorrt-rtx"]["status"] == "missing"
    assert "pip install 'metabgm-edge[rtx]'" in checks["tensorrt-rtx"]["detail"]
