"""``metabgm-edge doctor``: what this machine can and cannot do for metabgm-edge, and why.

Each check reports ``ok``, ``missing`` (not installed or not present: what that means and how to
get it) or ``error`` (present but failing: the reason), and never raises: a broken PortAudio, a
CUDA library that does not load or an unreadable bundle is a line in the report, not a crash.

onnxruntime's ``get_available_providers()`` only says what the package was *built* with. Whether
CUDA or TensorRT really work is decided by creating a tiny session on each of them (a one-node
model encoded here, so no ``onnx`` package is needed) and reading ``session.get_providers()``:
onnxruntime silently drops a provider whose libraries or device are missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

log = logging.getLogger(__name__)

Status = Literal["ok", "missing", "error"]
PACKAGES: Final = (
    "metabgm-edge",
    "numpy",
    "msgspec",
    "click",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-ep-nv-tensorrt-rtx-cu13",
    "tokenizers",
    "sounddevice",
    "websockets",
    "matplotlib",
    "tensorrt-cu13-libs",
)
OPTIONAL: Final = {
    "onnxruntime": "or onnxruntime-gpu: exactly one of them (pip install 'metabgm-edge[cpu]' or '[gpu]')",
    "onnxruntime-ep-nv-tensorrt-rtx-cu13": "RTX cards only: pip install 'metabgm-edge[rtx]'",
    "onnxruntime-gpu": "only for CUDA/TensorRT: pip install 'metabgm-edge[gpu]'",
    "tensorrt-cu13-libs": "only for TensorRT engines: pip install 'metabgm-edge[gpu]'",
    "matplotlib": "only for `report`: pip install 'metabgm-edge[report]'",
}
NO_DEVICE_MEANS: Final = (
    "`play` then writes the music to a file only (--out, or metabgm-edge-TIME.wav; it says so once); "
    "on a headless machine a PulseAudio null sink gives a real device: scripts/setup-audio.sh"
)


class Check(msgspec.Struct, kw_only=True):
    name: str
    status: Status
    detail: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)


# -- a one-node ONNX model, encoded by hand (protobuf wire format) ----------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def tiny_model(width: int = 4) -> bytes:
    """ONNX model ``y = x * x`` for a float32 ``x`` of shape (1, width), opset 13, IR version 8."""

    def value_info(name: str) -> bytes:
        dims = b"".join(_bytes(1, _int(1, d)) for d in (1, width))  # TensorShapeProto.dim
        tensor = _int(1, 1) + _bytes(2, dims)  # elem_type FLOAT, shape
        return _bytes(1, name) + _bytes(2, _bytes(1, tensor))  # name, TypeProto.tensor_type

    node = _bytes(1, "x") + _bytes(1, "x") + _bytes(2, "y") + _bytes(3, "square") + _bytes(4, "Mul")
    graph = _bytes(1, node) + _bytes(2, "doctor") + _bytes(11, value_info("x")) + _bytes(12, value_info("y"))
    return _int(1, 8) + _bytes(2, "metabgm-edge doctor") + _bytes(7, graph) + _bytes(8, _int(2, 13))


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 (onnxruntime's fallback reasons)."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreter): capture nothing
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(line for line in tmp.read().decode(errors="replace").splitlines() if line.strip())


def try_provider(provider: str, options: dict[str, str] | None = None) -> tuple[Status, str]:
    """Create and run a tiny session on ``provider``; (status, what happened)."""
    import numpy as np
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return "missing", f"this onnxruntime {ort.__version__} was built without {provider}"
    so = ort.SessionOptions()
    so.log_severity_level = 2
    providers: list[Any] = [(provider, options) if options else provider]
    if provider != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    t0 = time.perf_counter()
    with _captured_stderr() as native:
        try:
            session = ort.InferenceSession(tiny_model(), so, providers=providers, enable_fallback=0)
            x = np.arange(4, dtype=np.float32).reshape(1, 4)
            (y,) = session.run(None, {"x": x})
        except Exception as exc:
            err: Exception | None = exc
        else:
            err = None
    reason = _native_reason(native)
    if err is not None:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        return "error", f"creating a session failed: {first}" + (f" ({reason})" if reason else "")
    got = session.get_providers()
    if not got or got[0] != provider:
        return "error", f"onnxruntime fell back to {', '.join(got)}" + (f": {reason}" if reason else "")
    if not np.allclose(y, x * x):
        return "error", f"{provider} ran but computed a wrong result {y.tolist()}"
    return "ok", f"a test session ran on {provider} ({time.perf_counter() - t0:.2f} s to create and run)"


def _native_reason(lines: list[str]) -> str:
    keep = [
        ln.strip() for ln in lines if any(w in ln.lower() for w in ("error", "fail", "cannot", "require"))
    ]
    return " | ".join(keep)[:400]


# -- the checks --------------------------------------------------------------------------------------


def check_python() -> Check:
    impl = platform.python_implementation()
    return Check(
        name="python",
        status="ok",
        detail=f"{impl} {platform.python_version()} ({sys.executable}) on {platform.system()} "
        f"{platform.machine()}",
        data={
            "version": platform.python_version(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
    )


def check_packages() -> Check:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    required = [n for n in PACKAGES if n not in OPTIONAL]
    missing = [n for n in required if versions[n] is None]
    shown = ", ".join(f"{n} {v}" for n, v in versions.items() if v is not None)
    absent = ", ".join(f"{n} ({OPTIONAL[n]})" for n in OPTIONAL if versions[n] is None)
    detail = shown + (f"; not installed: {absent}" if absent else "")
    if missing:
        return Check(
            name="packages",
            status="error",
            data={"versions": versions},
            detail=f"required package(s) missing: {', '.join(missing)} (pip install metabgm-edge); " + detail,
        )
    return Check(name="packages", status="ok", detail=detail, data={"versions": versions})


def check_audio_devices() -> Check:
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        return Check(
            name="audio output",
            status="missing",
            detail=f"PortAudio is not installed ({exc}); {NO_DEVICE_MEANS}",
        )
    except ImportError as exc:
        return Check(
            name="audio output",
            status="missing",
            detail=f"sounddevice is not installed ({exc}); {NO_DEVICE_MEANS}",
        )
    from metabgm_edge.audio import SAMPLE_RATE
    from metabgm_edge.playback.sinks import list_devices, probe_output

    devices = list_devices()
    data: dict[str, Any] = {
        "portaudio": sd.get_portaudio_version()[1],
        "devices": [msgspec.to_builtins(d) for d in devices],
    }
    if not devices:
        return Check(
            name="audio output",
            status="missing",
            data=data,
            detail=f"no output device ({data['portaudio']}); {NO_DEVICE_MEANS}",
        )
    names = "; ".join(
        f"[{d.index}] {d.name} ({d.hostapi}, {d.max_output_channels} ch)"
        + (" default" if d.default_output else "")
        for d in devices
    )
    problem = probe_output(None)
    data["default_usable"] = problem is None
    if problem is not None:
        return Check(
            name="audio output",
            status="error",
            data=data,
            detail=f"{len(devices)} device(s): {names}; but the default output cannot play "
            f"{SAMPLE_RATE} Hz float32 stereo: {problem}; {NO_DEVICE_MEANS}",
        )
    return Check(
        name="audio output",
        status="ok",
        data=data,
        detail=f"{len(devices)} device(s): {names}; the default plays {SAMPLE_RATE} Hz float32 stereo",
    )


def check_onnxruntime() -> Check:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return Check(
            name="onnxruntime",
            status="missing",
            detail=f"not importable ({exc}): LLM bundles cannot run; pip install 'metabgm-edge[cpu]'",
        )
    from metabgm_edge.errors import BundleError
    from metabgm_edge.ort.session import SPIN_ENV, packaging_problem, spin_policy

    available = ort.get_available_providers()
    status, detail = try_provider("CPUExecutionProvider")
    problem = packaging_problem()
    try:
        spin = spin_policy()
    except BundleError as exc:
        problem, spin = problem or str(exc), None
    data = {"version": ort.__version__, "built_with": available, "spin": spin}
    if problem:
        return Check(name="onnxruntime", status="error", data=data, detail=problem)
    return Check(
        name="onnxruntime",
        status=status,
        data=data,
        detail=f"{ort.__version__}, built with {', '.join(available)}; CPU: {detail}; threads spin: "
        f"{spin} ({SPIN_ENV})",
    )


def check_provider(label: str, provider: str, options: dict[str, str] | None = None) -> Check:
    status, detail = try_provider(provider, options)
    if status == "error":  # name the library that is missing rather than onnxruntime's long message
        from metabgm_edge.ort import gpulibs

        name = "tensorrt" if provider == "TensorrtExecutionProvider" else "cuda"
        if gpulibs.prepare().reason(name):
            detail = (
                f"the libraries it loads are missing (see gpu libraries below); onnxruntime: {detail[:160]}"
            )
    if status == "missing":
        detail += " (pip install 'metabgm-edge[gpu]' for onnxruntime-gpu; LLM bundles then run on CPU)"
    return Check(name=label, status=status, detail=detail, data={"provider": provider})


def check_gpu_libraries() -> Check:
    """The NVIDIA libraries onnxruntime-gpu's providers load: which are missing and how to get them."""
    import onnxruntime as ort

    from metabgm_edge.ort import gpulibs

    libs = gpulibs.prepare()
    data = msgspec.to_builtins(libs)
    if not libs.missing:
        return Check(
            name="gpu libraries",
            status="ok",
            data=data,
            detail=f"this onnxruntime {ort.__version__} has no GPU provider: everything runs on the CPU "
            "(the GPU build or pip install 'metabgm-edge[gpu]' has them)",
        )
    rows = []
    for provider in libs.missing:
        rows.append(f"{provider}: " + (libs.reason(provider) or "every library it needs loads"))
    searched = f" (searched {', '.join(libs.searched)} first)" if libs.searched else ""
    status: Status = "missing" if any(libs.missing.values()) else "ok"
    then = "; GPU bundles run on the CPU until then" if status == "missing" else ""
    return Check(name="gpu libraries", status=status, data=data, detail="; ".join(rows) + searched + then)


def check_tensorrt_rtx() -> Check:
    """The TensorRT-RTX plugin: registered with onnxruntime and run on a tiny model."""
    import numpy as np

    from metabgm_edge.ort import session as sessions

    if not sessions.rtx_installed():
        return Check(
            name="tensorrt-rtx", status="missing",
            detail=f"not installed; RTX cards only (then the first GPU choice): {sessions.RTX_INSTALL}",
        )  # fmt: skip
    plugin = sessions.rtx_plugin()
    if isinstance(plugin, str):
        return Check(name="tensorrt-rtx", status="error", detail=plugin)
    t0 = time.perf_counter()
    with _captured_stderr() as native:
        try:
            session = sessions.create_rtx_session(tiny_model(), sessions.session_options(log_level=2), {})
            x = np.arange(4, dtype=np.float32).reshape(1, 4)
            (y,) = session.run(None, {"x": x})
        except Exception as exc:
            reason = _native_reason(native)
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            return Check(
                name="tensorrt-rtx", status="error",
                detail=f"creating a session failed: {first}" + (f" ({reason})" if reason else ""),
            )  # fmt: skip
    got = session.get_providers()
    if not got or got[0] not in plugin.ep_names or not np.allclose(y, x * x):
        return Check(
            name="tensorrt-rtx", status="error", detail=f"the test session ran on {got} or computed {y}"
        )
    return Check(
        name="tensorrt-rtx", status="ok", data={"version": plugin.version, "devices": len(plugin.devices)},
        detail=f"EP {plugin.version}: a test session ran on {got[0]} ({time.perf_counter() - t0:.2f} s)",
    )  # fmt: skip


def check_tensorrt_library() -> Check:
    from metabgm_edge.ort import device

    lib = device.tensorrt_version()
    why = ""
    try:
        import tensorrt

        py = str(tensorrt.__version__)
    except Exception as exc:  # ImportError, or a tensorrt package whose libraries do not load
        py = None
        why = f"{type(exc).__name__}: {exc}"
    data = {"library": lib, "python": py}
    if lib is None and py is None:
        return Check(
            name="tensorrt",
            status="missing",
            data=data,
            detail=f"no TensorRT library (libnvinfer) and no tensorrt Python package ({why}); "
            "only needed for TensorRT engines: pip install 'metabgm-edge[gpu]' (tensorrt-cu13-libs 10.x)",
        )
    parts = [
        f"libnvinfer {lib}" if lib else "no libnvinfer found",
        f"python package {py}" if py else "no tensorrt Python package",
    ]
    return Check(name="tensorrt", status="ok", data=data, detail=", ".join(parts))


def check_gpu() -> Check:
    from metabgm_edge.ort import device

    driver_gpu = device.gpu()
    data: dict[str, Any] = {"cuda_driver": msgspec.to_builtins(driver_gpu) if driver_gpu else None}
    smi = shutil.which("nvidia-smi")
    if smi is None:
        if driver_gpu is None:
            return Check(
                name="gpu",
                status="missing",
                data=data,
                detail="no NVIDIA GPU (no nvidia-smi, no CUDA driver): everything runs on the CPU",
            )
        return Check(
            name="gpu",
            status="ok",
            data=data,
            detail=f"{driver_gpu.name} ({driver_gpu.arch}) via the CUDA driver; nvidia-smi not found",
        )
    query = "--query-gpu=name,driver_version,memory.total,memory.used,compute_cap"
    try:
        proc = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name="gpu", status="error", data=data, detail=f"nvidia-smi failed: {exc}")
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        return Check(
            name="gpu",
            status="error",
            data=data,
            detail=f"nvidia-smi exited {proc.returncode}: {why[0] if why else 'no message'}",
        )
    gpus = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    data["nvidia_smi"] = gpus
    if not gpus:
        return Check(name="gpu", status="missing", data=data, detail="nvidia-smi lists no GPU")
    return Check(
        name="gpu",
        status="ok",
        data=data,
        detail="; ".join(gpus) + " (name, driver, memory total, used, compute capability)",
    )


def check_engines(engines_dir: Path) -> Check:
    from metabgm_edge.bundle import KINDS, MANIFEST, default_bundle, read_manifest
    from metabgm_edge.errors import BundleError
    from metabgm_edge.ort.session import has_gpu_provider

    where = engines_dir.resolve()
    if not engines_dir.is_dir():
        return Check(
            name="engines",
            status="missing",
            data={"dir": str(where)},
            detail=f"{where} does not exist: `play` uses the embedded composer and synthesizer "
            "(export bundles with `metabgm-edge export llm` and `export musicgen`)",
        )
    gpu = has_gpu_provider()
    picks = {kind: default_bundle(engines_dir, kind, gpu=gpu) for kind in KINDS}
    uses = {"llm": "--text auto", "musicgen": "--audio auto"}
    rows, problems, found = [], [], []
    for folder in sorted(p for p in engines_dir.iterdir() if (p / MANIFEST).is_file()):
        try:
            m = read_manifest(folder)
        except BundleError as exc:
            problems.append(f"{folder.name}: {exc}")
            continue
        engines = "".join(f", TensorRT engine of {e.graph} for {e.gpu_arch}" for e in m.engines)
        chosen = f" <- {uses[m.kind]} takes this one" if folder == picks[m.kind] else ""
        rows.append(
            f"{folder.name} ({m.kind} {m.name}, {m.quantization}, target {m.target}{engines}){chosen}"
        )
        found.append(
            {
                "folder": str(folder),
                "kind": m.kind,
                "name": m.name,
                "quantization": m.quantization,
                "target": m.target,
                "graphs": sorted(m.graphs),
                "default": folder == picks[m.kind],
            }
        )
    data = {
        "dir": str(where),
        "bundles": found,
        "problems": problems,
        "defaults": {k: (str(v) if v else None) for k, v in picks.items()},
    }
    if problems:
        return Check(
            name="engines",
            status="error",
            data=data,
            detail="; ".join(rows + [f"UNREADABLE {p}" for p in problems]),
        )
    if not rows:
        return Check(
            name="engines",
            status="missing",
            data=data,
            detail=f"no bundle in {where}: `play` uses the embedded composer rules and synthesizer "
            "(export bundles with `metabgm-edge export llm` and `export musicgen`)",
        )
    for kind, fallback in (("llm", "the composer rules"), ("musicgen", "the synthesizer")):
        if picks[kind] is None and any(f["kind"] == kind for f in found):
            rows.append(
                f"no {kind} bundle runs here (GPU bundles need onnxruntime-gpu): play uses {fallback}"
            )
    return Check(name="engines", status="ok", data=data, detail="; ".join(rows))


def check_folders() -> Check:
    """Where engines, profiles, logs and recordings live here, which rule chose each, and whether
    it can be written."""
    from metabgm_edge import paths

    rows, data, problems = [], {}, []
    for f in paths.all_folders():
        path = Path(f.path)
        state = "exists" if path.is_dir() else "not created yet"
        existing = next((p for p in [path, *path.parents] if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            state += ", NOT WRITABLE"
            problems.append(f.kind)
        rows.append(f"{f.kind} {path} ({f.why}; {state})")
        data[f.kind] = {"path": str(path), "why": f.why, "exists": path.is_dir()}
    packaged = "packaged build" if paths.frozen() else "Python install"
    detail = f"{packaged}: " + "; ".join(rows)
    if problems:
        hint = ", ".join(paths.ENV[k] for k in problems)  # type: ignore[index]
        return Check(name="folders", status="error", data=data, detail=f"{detail}; set {hint} or --data-dir")
    return Check(name="folders", status="ok", data=data, detail=detail)


def check_musicgen(engines_dir: Path) -> Check:
    """Does the MusicGen bundle ``--audio auto`` would consider keep up here? (A 2 s render.)"""
    from metabgm_edge.audio import SPEED_MARGIN, open_audio_backend
    from metabgm_edge.bundle import default_bundle

    try:
        from metabgm_edge.ort.session import has_gpu_provider
    except ImportError as exc:
        return Check(name="musicgen", status="missing", detail=f"{exc}: the synthesizer plays")

    found = default_bundle(engines_dir, "musicgen", gpu=has_gpu_provider()) if engines_dir.is_dir() else None
    if found is None:
        return Check(
            name="musicgen",
            status="missing",
            detail="no MusicGen bundle that runs here: the synthesizer plays (export one with "
            "`metabgm-edge export musicgen`)",
        )
    backend = open_audio_backend(str(found))
    speed = backend.realtime_factor()
    data = {"bundle": str(found), "backend": backend.name, "realtime_factor": speed}
    if speed >= SPEED_MARGIN:
        detail = f"{backend.name} renders {speed:.2f} s of audio per second here: `play --audio auto` uses it"
        return Check(name="musicgen", status="ok", data=data, detail=detail)
    return Check(
        name="musicgen",
        status="missing",
        data=data,
        detail=f"{backend.name} renders only {speed:.2f} s of audio per second here (it needs "
        f"{SPEED_MARGIN}): `play --audio auto` keeps the synthesizer; `--audio {found} --if-slow queue` "
        "plays it late",
    )


def check_embedded_audio() -> Check:
    from metabgm_edge.audio import AudioRequest, open_audio_backend, render

    backend = open_audio_backend("synth")
    t0 = time.perf_counter()
    audio, _ = render(backend, AudioRequest(description="calm piano in C major at 80 BPM", seconds=2.0))
    took = time.perf_counter() - t0
    frames = getattr(audio, "shape", (0,))[0]
    if frames != round(2.0 * backend.sample_rate):
        return Check(name="synthesizer", status="error", detail=f"rendered {frames} frames for 2 s")
    return Check(
        name="synthesizer",
        status="ok",
        data={"seconds_for_2s": took},
        detail=f"{backend.name} renders 2 s of music in {took:.2f} s",
    )


def _guarded(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:
        log.debug("doctor check %s failed", name, exc_info=True)
        return Check(
            name=name, status="error", detail=f"the check itself failed: {type(exc).__name__}: {exc}"
        )


def run_checks(engines_dir: str | Path | None = None) -> list[Check]:
    from metabgm_edge import paths
    from metabgm_edge.ort.session import trt_options

    engines = Path(engines_dir) if engines_dir is not None else paths.engines_dir()
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("python", check_python),
        ("packages", check_packages),
        ("audio output", check_audio_devices),
        ("synthesizer", check_embedded_audio),
        ("onnxruntime", check_onnxruntime),
        ("cuda", lambda: check_provider("cuda", "CUDAExecutionProvider")),
        (
            "tensorrt provider",
            lambda: check_provider(
                "tensorrt provider", "TensorrtExecutionProvider", trt_options(trt_fp16_enable=True)
            ),
        ),
        ("gpu libraries", check_gpu_libraries),
        ("tensorrt", check_tensorrt_library),
        ("tensorrt-rtx", check_tensorrt_rtx),
        ("gpu", check_gpu),
        ("folders", check_folders),
        ("engines", lambda: check_engines(engines)),
        ("musicgen", lambda: check_musicgen(engines)),
    ]
    return [_guarded(name, fn) for name, fn in checks]


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.status:<8} {c.name:<{width}}  {c.detail}" for c in checks)
