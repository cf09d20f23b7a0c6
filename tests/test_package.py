"""The packaged build: the one-folder program built by packaging/build.py, run as a player runs it.

The artifact is built once per test run (about a minute and a half on 2 cores; its build
environment, build/env-cpu, is made on the first run and reused) and every test here runs it with a
clean environment: ``env -i`` with only ``HOME`` set (to a temporary folder, so the user folders land
there), no PATH, no virtual environment, no Python. ``METABGM_EDGE_PACKAGE=DIR`` tests a one-folder
artifact built elsewhere instead (for example ``dist/metabgm-edge`` after ``make package``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import minecraft_harness
import numpy as np
import pytest
from llm_fixtures import smollm2, smollm2_bundle  # noqa: F401

from metabgm_edge.playback.wav import read_wav

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("package_build", ROOT / "packaging" / "build.py")
assert _spec is not None and _spec.loader is not None
package_build = importlib.util.module_from_spec(_spec)  # packaging/build.py: the build script under test
_spec.loader.exec_module(package_build)

pytestmark = [pytest.mark.package, pytest.mark.slow]

SAMPLE_RATE = 32000


@pytest.fixture(scope="session")
def packaged() -> Path:
    """The one-folder artifact's executable (built here once per run)."""
    given = os.environ.get("METABGM_EDGE_PACKAGE")
    if given:
        folder = Path(given).resolve()
    else:
        dist = ROOT / "build" / "test-dist"
        subprocess.run(
            [sys.executable, str(ROOT / "packaging" / "build.py"), "--onedir", "--dist", str(dist)],
            check=True,
            timeout=1500,
        )
        folder = dist / "metabgm-edge"
    exe = folder / "metabgm-edge"
    assert exe.is_file(), f"no executable at {exe}"
    return exe


def run_clean(
    exe: Path, *args: str, home: Path, stdin: bytes | None = None, timeout: float = 180, **env: str
) -> subprocess.CompletedProcess[str]:
    """``env -i HOME=home [env...] exe args``: nothing of this test's Python reaches the program."""
    assignments = [f"HOME={home}", *(f"{k}={v}" for k, v in env.items())]
    return subprocess.run(
        ["/usr/bin/env", "-i", *assignments, str(exe), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home,
    )


def audible(path: Path) -> tuple[np.ndarray, float]:
    audio, info = read_wav(path)
    assert info.sample_rate == SAMPLE_RATE and info.channels == 2
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return audio, rms


def quiet_fraction(audio: np.ndarray, window: float = 0.5, floor: float = 1e-3) -> float:
    """The share of ``window``-second stretches whose RMS is under ``floor``."""
    n = int(window * SAMPLE_RATE)
    frames = audio[: len(audio) // n * n].reshape(-1, n, audio.shape[1])
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=(1, 2)))
    return float(np.mean(rms < floor))


def test_the_build_holds_no_torch_transformers_or_export_tools(packaged: Path) -> None:
    folder = packaged.parent
    files = package_build.contents(folder)
    assert any(f.startswith("_internal/onnxruntime/capi/") for f in files), "onnxruntime is missing"
    assert any(f.endswith("vocabulary.json") for f in files)
    assert any(f.endswith("prompts/description.txt") for f in files)
    assert "_internal/connectors/minecraft/connector.js" in files
    assert package_build.forbidden_in(files) == []
    # Python modules live in the executable's archive, not as files: list them there.
    modules = package_build.frozen_modules(packaged)
    assert "metabgm_edge.cli" in modules and "onnxruntime" in modules and "tokenizers" in modules
    heavy = sorted(
        m
        for m in modules
        if m.split(".")[0] in package_build.FORBIDDEN or m.startswith("metabgm_edge.export.")
    )
    assert heavy == ["metabgm_edge.export.cli", "metabgm_edge.export.recipe"], heavy
    left_out = set(package_build.EXCLUDED_OWN)
    assert not left_out & set(modules), left_out & set(modules)  # Ray's server side, the export tools
    assert "metabgm_edge.serve.listen" in modules  # a player hears a server's music with the build
    # Every module of the runtime is inside (backends opened by name included: MusicGen, the LLM,
    # the OpenAI-compatible client), whatever main adds later; only the export tools and the Ray
    # server side of `serve` (named in packaging/build.py) are left out.
    runtime = sorted(
        m
        for m in source_modules()
        if (not m.startswith("metabgm_edge.export.") or m in heavy)
        and m not in left_out
        and m != "metabgm_edge.__main__"
    )  # (__main__ is `python -m metabgm_edge`; the build's entry point is packaging/entry.py)
    assert "metabgm_edge.audio.musicgen.model" in runtime and "metabgm_edge.text.openai_compat" in runtime
    assert [m for m in runtime if m not in modules] == []
    assert package_build.size_mb(folder) < 150


def source_modules() -> list[str]:
    """Every module of the metabgm_edge package in this checkout, by dotted name."""
    out = []
    for f in (ROOT / "metabgm_edge").rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def test_doctor_in_a_clean_environment(packaged: Path, tmp_path: Path) -> None:
    proc = run_clean(packaged, "doctor", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["python"]["data"]["executable"] == str(packaged)  # no Python but the build's own
    assert checks["packages"]["status"] == "ok", checks["packages"]
    assert checks["synthesizer"]["status"] == "ok", checks["synthesizer"]
    assert checks["onnxruntime"]["status"] == "ok", checks["onnxruntime"]
    folders = checks["folders"]
    assert folders["status"] == "ok" and folders["detail"].startswith("packaged build")
    engines = Path(folders["data"]["engines"]["path"])
    assert engines.is_relative_to(tmp_path), engines  # the user data folder, not the working directory
    assert checks["engines"]["status"] == "missing"


def test_render_a_description(packaged: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview.wav"
    proc = run_clean(
        packaged, "render", "calm piano and strings in D minor, 70 BPM", "--seconds", "4", "--out", str(out),
        home=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    audio, rms = audible(out)
    assert audio.shape[0] == 4 * SAMPLE_RATE
    assert rms > 0.01


def test_describe_a_scene_from_stdin(packaged: Path, tmp_path: Path) -> None:
    example = run_clean(packaged, "schema", "--example", home=tmp_path)
    assert example.returncode == 0, example.stderr
    proc = run_clean(
        packaged,
        "describe",
        "-",
        "--text",
        "composer",
        "--json",
        home=tmp_path,
        stdin=example.stdout.encode(),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "Scene: dark forest" in result["info_str"] or "dark" in result["info_str"].lower()
    assert 5 <= len(result["description"].split()) <= 20


def test_play_fast_twenty_seconds(packaged: Path, tmp_path: Path) -> None:
    out = tmp_path / "F.wav"
    proc = run_clean(packaged, "play", "--fast", "--duration", "20", "--out", str(out), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "played 20.0 s in" in proc.stdout, proc.stdout
    audio, rms = audible(out)
    assert audio.shape[0] == 20 * SAMPLE_RATE
    assert rms > 0.01
    assert quiet_fraction(audio) < 0.1


def test_play_without_a_device_records_into_the_user_folders(packaged: Path, tmp_path: Path) -> None:
    """No sound card (env -i: no PulseAudio either): the music goes to the recordings folder and the
    session log to the log folder, not to the working directory."""
    work = tmp_path / "cwd"
    work.mkdir()
    proc = run_clean(packaged, "play", "--duration", "3", "--interval", "3", home=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    recordings = list((tmp_path / "Music" / "metabgm-edge").glob("metabgm-edge-*.wav"))
    logs = list(tmp_path.glob(".local/state/metabgm-edge/log/session-*.jsonl"))
    assert len(recordings) == 1 and len(logs) == 1, (proc.stdout, proc.stderr)
    assert str(recordings[0]) in proc.stdout
    _, rms = audible(recordings[0])
    assert rms > 0.01
    assert json.loads(logs[0].read_text().splitlines()[0])
    assert not list(work.iterdir())


def test_play_with_an_llm_bundle_given_by_path(packaged: Path, tmp_path: Path, smollm2_bundle) -> None:  # noqa: F811
    bundle = smollm2_bundle("int8")
    out, log = tmp_path / "llm.wav", tmp_path / "llm.jsonl"
    proc = run_clean(
        packaged,
        "play",
        "--fast",
        "--duration",
        "20",
        "--text",
        str(bundle),
        "--out",
        str(out),
        "--log",
        str(log),
        "--deadline",
        "120",
        home=tmp_path,
        timeout=600,
    )  # fmt: skip  (a deadline a loaded CI machine meets: this test is about the LLM running, not its speed)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    segments = [r for r in records if "text_backend" in r]
    assert segments and all(bundle.name in r["text_backend"] for r in segments), records[:1]
    assert not [f for r in segments for f in r["fallbacks"] if f.startswith("text.")]  # the LLM wrote them
    audio, rms = audible(out)
    assert audio.shape[0] == 20 * SAMPLE_RATE and rms > 0.01


@pytest.fixture(scope="session")
def tiny_musicgen_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MusicGen bundle exported here from a tiny random-weight model (tests/musicgen_fixtures.py)."""
    from musicgen_fixtures import tiny_musicgen

    from metabgm_edge.export.musicgen import export_musicgen
    from metabgm_edge.export.recipe import MusicGenOptions, Recipe

    root = tmp_path_factory.mktemp("package-musicgen")
    model = tiny_musicgen(root / "model")
    recipe = Recipe(
        kind="musicgen", model=str(model), quant="fp32", out=str(root / "tiny-musicgen"),
        musicgen=MusicGenOptions(static_cache=True, static_cache_length=320),
    )  # fmt: skip
    return export_musicgen(recipe, progress=lambda _line: None)


def test_play_with_a_musicgen_bundle_given_by_path(
    packaged: Path, tmp_path: Path, tiny_musicgen_bundle
) -> None:
    """The MusicGen runtime (onnxruntime, numpy, tokenizers) is in the build: a bundle plays every
    segment, none falls back to the synthesizer."""
    out, log = tmp_path / "mg.wav", tmp_path / "mg.jsonl"
    proc = run_clean(
        packaged, "play", "--fast", "--duration", "8", "--interval", "4", "--text", "composer",
        "--audio", str(tiny_musicgen_bundle), "--out", str(out), "--log", str(log),
        home=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    segments = [r for r in map(json.loads, log.read_text().splitlines()) if "audio_backend" in r]
    assert sum(r["end"] - r["start"] for r in segments) == 8, segments
    assert all(r["audio_backend"].startswith("musicgen:") and not r["fallbacks"] for r in segments), segments
    audio, rms = audible(out)
    assert audio.shape[0] == 8 * SAMPLE_RATE and rms > 0.01


NODE = shutil.which("node") or "node"
MINECRAFT = ["play", "--source", "minecraft://127.0.0.1:25565", "--duration", "1"]


@pytest.mark.parametrize(
    ("args", "stdin", "env", "says"),
    [
        (["describe", "-", "--text", "composer"], b'{"v": 1, "health": {"value": "lots"', {}, "malformed"),
        (
            ["play", "--fast", "--duration", "5", "--text", "/nowhere/b", "--out", "x.wav"],
            None,
            {},
            "/nowhere/b",
        ),
        (MINECRAFT, None, {"METABGM_EDGE_NODE": "no-node-here"}, "needs Node.js 20 or newer"),
        (MINECRAFT, None, {"METABGM_EDGE_NODE": NODE}, "metabgm-edge-minecraft-data-VERSION.tar.gz"),
        (
            ["export", "llm", "--model", "m.gguf", "--out", "x"],
            None,
            {},
            "pip install 'metabgm-edge[export]'",
        ),
        (
            ["finetune", "--model", "m", "--data", "p.jsonl", "--out", "o"],
            None,
            {},
            "export extra",
        ),
        (["eval", "--text", "composer", "--pairs", "p.jsonl"], None, {}, "pip install 'metabgm-edge[eval]'"),
        (["serve"], None, {}, "pip install 'metabgm-edge[serve]'"),
    ],
    ids=[
        "malformed-scene",
        "missing-bundle",
        "minecraft-without-node",
        "minecraft-without-data",
        "export",
        "finetune",
        "eval",
        "serve",
    ],
)
def test_bad_input_gets_one_line(packaged: Path, tmp_path: Path, args, stdin, env, says) -> None:
    if env.get("METABGM_EDGE_NODE") == "node":
        pytest.skip("no node here")
    (tmp_path / "p.jsonl").write_text("")  # the pairs file finetune and eval are given (they stop first)
    proc = run_clean(packaged, *args, home=tmp_path, stdin=stdin, **env)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].lower().startswith("error") and says.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in proc.stderr


def unpack_data_pack(tmp_path: Path, version: str) -> Path:
    packs, data = tmp_path / "packs", tmp_path / "minecraft-data"
    subprocess.run(
        [NODE, str(ROOT / "packaging/minecraft/build.js"), "data", str(packs), version], check=True
    )
    data.mkdir()
    with tarfile.open(packs / f"metabgm-edge-minecraft-data-{version}.tar.gz") as tar:
        tar.extractall(data, filter="data")
    return data


@pytest.mark.minecraft
@pytest.mark.skipif(minecraft_harness.skip_reason() is not None, reason=str(minecraft_harness.skip_reason()))
@pytest.mark.parametrize("runner", ["node", "single-executable"])
def test_minecraft_through_the_packaged_connector(packaged: Path, tmp_path: Path, runner: str) -> None:
    """A real server, the player's client, and the packaged build's bundled connector with the 1.16.5
    data pack, run by node or (no Node.js: the player has the single executable) by
    metabgm-edge-minecraft: the music follows the game (night falls, the session log shows it)."""
    data = unpack_data_pack(tmp_path, "1.16.5")
    node = NODE
    if runner == "single-executable":
        sea = tmp_path / "sea"
        subprocess.run([NODE, str(ROOT / "packaging/minecraft/build.js"), "sea", str(sea)], check=True)
        shutil.copy2(sea / "metabgm-edge-minecraft", data / "metabgm-edge-minecraft")
        node = "no-node-on-this-pc"  # so the connector can only run as the single executable
    port, listen = minecraft_harness.free_port(), minecraft_harness.free_port()
    server = minecraft_harness.TestServer(port)
    log, out = tmp_path / "mc.jsonl", tmp_path / "mc.wav"
    env = [f"HOME={tmp_path}", f"METABGM_EDGE_NODE={node}", f"METABGM_EDGE_MINECRAFT_DATA={data}"]
    uri = f"minecraft://127.0.0.1:{port}?listen=127.0.0.1:{listen}&version=1.16.5"
    args = [
        "play",
        "--source",
        uri,
        "--duration",
        "24",
        "--interval",
        "4",
        "--out",
        str(out),
        "--log",
        str(log),
    ]
    proc = subprocess.Popen(
        ["/usr/bin/env", "-i", *env, str(packaged), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    player = None
    try:
        minecraft_harness.wait_until(lambda: _accepts(listen), 60, "the packaged connector listening")
        player = minecraft_harness.Player(listen)
        player.spawns()
        minecraft_harness.wait_until(lambda: log.is_file() and log.read_text().strip(), 30, "a first segment")
        server.request("time", ticks=18000)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
        if player is not None:
            player.close()
        server.close()
    assert proc.returncode == 0, stderr
    states = [json.loads(line)["state"] for line in log.read_text().splitlines() if '"state"' in line]
    assert any(s["scene"]["biome"] == "forest" for s in states), states[:1]
    assert any(s["time"].get("ticks") == 18000 for s in states), [s["time"] for s in states]
    _, rms = audible(out)
    assert rms > 0.01


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.minecraft
@pytest.mark.skipif(shutil.which("node") is None, reason="no node here")
def test_a_minecraft_version_without_data_says_which_pack_to_get(packaged: Path, tmp_path: Path) -> None:
    data = unpack_data_pack(tmp_path, "1.16.5")
    uri = f"minecraft://127.0.0.1:{minecraft_harness.free_port()}?version=1.18.2&listen=127.0.0.1:0"
    env = [f"HOME={tmp_path}", f"METABGM_EDGE_NODE={NODE}", f"METABGM_EDGE_MINECRAFT_DATA={data}"]
    args = ["play", "--source", uri, "--out", str(tmp_path / "x.wav")]
    proc = subprocess.Popen(
        ["/usr/bin/env", "-i", *env, str(packaged), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wanted = "no protocol data for Minecraft 1.18.2; download metabgm-edge-minecraft-data-1.18.2.tar.gz"
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(wanted in ln for ln in lines):
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
        assert proc.poll() is None, "".join(lines)  # the runtime keeps running: only the connector stops
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=90)[1]  # a hang guard (a loaded machine starts node slowly)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = [ln for ln in lines if wanted in ln]
    assert said and str(data) in said[0], "".join(lines) + rest
    assert proc.returncode == 0, rest


@pytest.mark.may_skip  # opt-in: make test does not build the GPU flavors (downloads of 150-300 MB)
@pytest.mark.skipif(
    not os.environ.get("METABGM_EDGE_PACKAGE_GPU"),
    reason="METABGM_EDGE_PACKAGE_GPU=dist/metabgm-edge-gpu after `make package-gpu` (not built by make test)",
)
def test_the_gpu_build_names_what_is_missing_and_plays_on_the_cpu(tmp_path: Path, smollm2_bundle) -> None:  # noqa: F811
    """The GPU build on a machine without CUDA (this one): each missing NVIDIA library named, and a
    bundle made for CUDA plays on the CPU."""
    exe = Path(os.environ["METABGM_EDGE_PACKAGE_GPU"]).resolve() / "metabgm-edge-gpu"
    doctor = run_clean(exe, "doctor", "--json", home=tmp_path)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert "CUDAExecutionProvider" in checks["onnxruntime"]["data"]["built_with"]
    assert checks["packages"]["status"] == "ok", checks["packages"]
    libs = checks["gpu libraries"]
    assert libs["status"] == "missing" and "libcuda.so.1 (the NVIDIA driver)" in libs["detail"]
    cuda_bundle = tmp_path / "smollm2-cuda"
    shutil.copytree(smollm2_bundle("int8"), cuda_bundle)
    manifest = json.loads((cuda_bundle / "manifest.json").read_text())
    (cuda_bundle / "manifest.json").write_text(json.dumps({**manifest, "target": "cuda"}))
    out = tmp_path / "gpu.wav"
    proc = run_clean(
        exe, "play", "--fast", "--duration", "10", "--deadline", "120", "--text", str(cuda_bundle),
        "--out", str(out), home=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "smollm2-cuda: not using cuda: missing libcuda.so.1 (the NVIDIA driver)" in proc.stderr
    assert "decoder runs on cpu" in proc.stderr
    assert audible(out)[1] > 0.01


@pytest.mark.may_skip  # opt-in: make test does not build the GPU flavors (downloads of 150-300 MB)
@pytest.mark.skipif(
    not os.environ.get("METABGM_EDGE_PACKAGE_RTX"),
    reason="METABGM_EDGE_PACKAGE_RTX=dist/metabgm-edge-rtx after `make package-rtx` (not built by make test)",
)
def test_the_rtx_build_carries_the_plugin_and_plays_on_the_cpu_without_an_rtx_card(
    tmp_path: Path,
    smollm2_bundle,  # noqa: F811
) -> None:
    """The RTX build (onnxruntime + the TensorRT-RTX plugin with its own TensorRT-RTX and CUDA runtime)
    on a machine without an NVIDIA driver (this one): the plugin is inside and says why it cannot run,
    and a bundle made for TensorRT plays on the CPU."""
    folder = Path(os.environ["METABGM_EDGE_PACKAGE_RTX"]).resolve()
    exe = folder / "metabgm-edge-rtx"
    plugin = folder / "_internal" / package_build.RTX_PACKAGE
    assert (plugin / "libonnxruntime_providers_nv_tensorrt_rtx.so").is_file()
    assert (plugin / "libtensorrt_rtx.so.1").is_symlink()  # made by the build: the folder may be read-only
    doctor = run_clean(exe, "doctor", "--json", home=tmp_path)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert checks["packages"]["status"] == "ok", checks["packages"]
    assert "onnxruntime-ep-nv-tensorrt-rtx-cu13" in checks["packages"]["detail"]
    rtx = checks["tensorrt-rtx"]
    assert rtx["status"] == "error" and "needs the NVIDIA driver" in rtx["detail"], rtx  # nothing else
    trt_bundle = tmp_path / "smollm2-trt"
    shutil.copytree(smollm2_bundle("int8"), trt_bundle)
    manifest = json.loads((trt_bundle / "manifest.json").read_text())
    (trt_bundle / "manifest.json").write_text(json.dumps({**manifest, "target": "tensorrt"}))
    out = tmp_path / "rtx.wav"
    proc = run_clean(
        exe, "play", "--fast", "--duration", "10", "--deadline", "120", "--text", str(trt_bundle),
        "--out", str(out), home=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "smollm2-trt: not using tensorrt_rtx: the TensorRT-RTX EP needs the NVIDIA driver" in proc.stderr
    assert "decoder runs on cpu" in proc.stderr
    assert audible(out)[1] > 0.01
