#!/usr/bin/env python3
"""Build the packaged metabgm-edge with PyInstaller: one folder and/or one file, CPU, GPU or RTX.

    python packaging/build.py [--flavor cpu|gpu|rtx] [--onedir] [--onefile] [--dist dist]
                              [--onnxruntime "onnxruntime-gpu==1.31.1"]

1. A build environment of its own, ``build/env-FLAVOR`` (made once; updated when pyproject.toml or
   this file changes): the runtime's dependencies read from pyproject.toml, with onnxruntime taken as
   ``onnxruntime`` (cpu), ``onnxruntime-gpu`` (gpu) or ``onnxruntime`` with the TensorRT-RTX
   execution provider plugin (rtx: the ``rtx`` extra), metabgm-edge itself (editable, so the build
   freezes the checkout as it is now) and PyInstaller. Never the export extra: torch, transformers
   and the export tools cannot end up in the build because they are not there to be found.
2. PyInstaller, once per artifact: ``dist/metabgm-edge/metabgm-edge`` (one folder) and
   ``dist/metabgm-edge-onefile`` (one file); the GPU flavor is ``metabgm-edge-gpu[-onefile]``, the RTX
   flavor ``metabgm-edge-rtx[-onefile]``. Each holds
   the runtime, the prompts, the composer's vocabulary, the synthesizer, onnxruntime with its
   provider libraries and the Minecraft connector's scripts (see packaging/README.md).
3. Checks on the result: the executable runs ``--version``, no forbidden package is inside, and
   the size is printed.

The same script builds on Windows (``packaging/build-windows.ps1`` calls it); PyInstaller does not
cross-compile, so each platform builds its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYINSTALLER = ["pyinstaller==6.22.3", "pyinstaller-hooks-contrib==2026.9"]
WINDOWS = sys.platform == "win32"

FORBIDDEN = (
    # The export extra and what only it pulls in: none of it may be in a player's download.
    "torch", "transformers", "optimum", "onnx", "onnx_ir", "onnxscript", "peft", "gguf", "accelerate",
    "safetensors", "huggingface_hub", "sympy", "networkx", "jinja2",
    # Development and report-only packages.
    "matplotlib", "PIL", "pytest", "hypothesis", "psutil", "tkinter", "IPython", "scipy", "pandas",
    "yaml",  # msgspec.yaml imports it; the runtime never reads YAML
)  # fmt: skip
EXCLUDED_OWN = (
    # The export tools (conversion needs the export extra); `export` in the build says so in one line
    # (export.cli, the command group, and export.recipe, the recipe reader, stay: click and tomllib only).
    "metabgm_edge.export.llm", "metabgm_edge.export.musicgen", "metabgm_edge.export.musicgen_graphs",
    "metabgm_edge.export.graph", "metabgm_edge.export.quantize", "metabgm_edge.export.tensorrt",
    # The server side of `serve` (Ray Serve deployments): operators install the serve extra; a
    # player's build keeps `listen` and says in one line what `serve` needs.
    "metabgm_edge.serve.app", "metabgm_edge.serve.remote",
    # onnxruntime's own conversion and training tools (they import onnx and torch).
    "onnxruntime.transformers", "onnxruntime.quantization", "onnxruntime.tools", "onnxruntime.training",
    "pkg_resources", "setuptools",
)  # fmt: skip
METADATA = (
    "metabgm-edge", "numpy", "msgspec", "click", "tokenizers", "sounddevice", "websockets", "platformdirs",
)  # fmt: skip
RTX_PACKAGE = "onnxruntime_ep_nv_tensorrt_rtx"  # the plugin's import name (metabgm_edge.ort.session)
CONNECTOR_FILES = (
    "connector.js",
    "package.json",
    "README.md",
)  # the bundle packaging/minecraft/build.js writes


def log(msg: str) -> None:
    print(f"[package] {msg}", flush=True)


def env_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if WINDOWS else "bin/python")


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower()


def runtime_requirements(flavor: str, onnxruntime: str | None) -> list[str]:
    """pyproject's runtime dependencies, and onnxruntime as the flavor's extra (``cpu``, ``gpu``) names
    it, without that extra's NVIDIA wheels (``onnxruntime-gpu[cuda,cudnn]``, ``tensorrt-*-libs``:
    gigabytes; the player's driver and CUDA provide them, see ort/gpulibs.py). The rtx flavor is the
    cpu one plus the ``rtx`` extra (the TensorRT-RTX plugin, which brings its own TensorRT-RTX and
    CUDA runtime: a player needs only the NVIDIA driver)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    reqs = [r for r in project["dependencies"] if not _name(r).startswith(("onnxruntime", "tensorrt"))]
    if onnxruntime is None:
        extra = extras.get("gpu" if flavor == "gpu" else "cpu", [])
        wanted = "onnxruntime-gpu" if flavor == "gpu" else "onnxruntime"
        spec = next((r for r in extra if _name(r) == wanted), wanted)
        onnxruntime = re.sub(r"\[[^\]]*\]", "", spec)
    plugin = extras.get("rtx", []) if flavor == "rtx" else []
    return [*reqs, onnxruntime, *plugin]


def build_env(flavor: str, onnxruntime: str | None) -> Path:
    """build/env-FLAVOR with exactly what the runtime needs, and PyInstaller."""
    env = ROOT / "build" / f"env-{flavor}"
    reqs = runtime_requirements(flavor, onnxruntime)
    wanted = hashlib.sha256(
        "\n".join([*reqs, *PYINSTALLER, (ROOT / "pyproject.toml").read_text(encoding="utf-8")]).encode()
    ).hexdigest()
    stamp = env / ".stamp-build"
    python = env_python(env)
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == wanted:
        log(f"build environment {env} is up to date")
        return python
    t0 = time.perf_counter()
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(env)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    other = "onnxruntime" if flavor == "gpu" else "onnxruntime-gpu"
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", other], check=False)
    subprocess.run([*pip, *reqs, *PYINSTALLER], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    stamp.write_text(wanted + "\n")
    log(f"build environment {env} ready in {time.perf_counter() - t0:.0f} s: {' '.join(reqs)}")
    return python


PROBE = """
import json, importlib.metadata as md, onnxruntime as ort
def installed(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
dist = "onnxruntime-gpu" if installed("onnxruntime-gpu") else "onnxruntime"
providers = ",".join(ort.get_available_providers())
rtx = next((n for n in ("onnxruntime-ep-nv-tensorrt-rtx-cu13", "onnxruntime-ep-nv-tensorrt-rtx-cu12")
            if installed(n)), None)
print(json.dumps({"dist": dist, "version": ort.__version__, "providers": providers, "rtx_dist": rtx}))
"""


def probe_env(python: Path) -> dict[str, Any]:
    """Which onnxruntime the build environment has, and its providers."""
    out = subprocess.run([str(python), "-c", PROBE], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def bundle_connector() -> Path:
    """The Minecraft connector as one script (its npm packages inside, minecraft-data left out)."""
    node = shutil.which("node")
    missing = [
        str(p)
        for p in (
            ROOT / "packaging/minecraft/node_modules/esbuild",
            ROOT / "connectors/minecraft/node_modules",
        )
        if not p.is_dir()
    ]
    if node is None or missing:
        raise SystemExit(
            "[package] the build bundles the Minecraft connector with Node.js 20 and esbuild: "
            + ("node is not on PATH; " if node is None else "")
            + (f"missing {', '.join(missing)}: run `make package` (it runs npm ci there)" if missing else "")
        )
    out = ROOT / "build" / "minecraft" / "connector"
    subprocess.run([node, str(ROOT / "packaging/minecraft/build.js"), "bundle", str(out)], check=True)
    return out


def spec_config(
    name: str, onefile: bool, work: Path, probe: dict[str, Any], connector: Path
) -> dict[str, Any]:
    """What packaging/metabgm-edge.spec builds for one artifact."""
    rtx = bool(probe.get("rtx_dist"))
    metadata = [*METADATA, probe["dist"], *([probe["rtx_dist"]] if rtx else [])]
    datas = [
        (str(ROOT / "prompts"), "metabgm_edge/prompts"),
        (str(ROOT / "LICENSE"), "."),
        *((str(connector / f), "connectors/minecraft") for f in CONNECTOR_FILES),
    ]
    return {
        "name": name,
        "onefile": onefile,
        "root": str(ROOT),
        "entry": str(ROOT / "packaging" / "entry.py"),
        "work": str(work),
        "datas": datas,
        "metadata": metadata,
        "excludes": [*FORBIDDEN, *EXCLUDED_OWN],
        "strip": not WINDOWS,
        # The TensorRT-RTX plugin: its libraries (found by the package at run time, not linked), and
        # onnxruntime's C library beside its Python module, which the plugin links (libonnxruntime.so.1).
        "hiddenimports": [RTX_PACKAGE] if rtx else [],
        "dynamic_libs": [RTX_PACKAGE, "onnxruntime"] if rtx else [],
        "no_strip": [RTX_PACKAGE],  # NVIDIA's libraries as NVIDIA ships them
    }


def soname_links(folder: Path) -> list[str]:
    """``libX.so.1`` and ``libX.so`` links beside each ``libX.so.1.7.1`` in ``folder`` (Linux).

    The TensorRT-RTX wheel ships only the fully versioned files and makes these links inside its own
    folder when imported; made here, a player's install folder need not be writable."""
    made: list[str] = []
    if WINDOWS or not folder.is_dir():
        return made
    for real in sorted(folder.iterdir()):
        m = re.fullmatch(r"(lib.+\.so)\.(\d+)(\.\d+)+", real.name)
        if not m or real.is_symlink():
            continue
        for link in (folder / f"{m.group(1)}.{m.group(2)}", folder / m.group(1)):
            if not link.exists():
                link.symlink_to(real.name)
                made.append(link.name)
    if made:
        log(f"made links in {folder}: {', '.join(made)}")
    return made


def freeze(python: Path, config: dict[str, Any], dist: Path) -> None:
    work = Path(config["work"])
    shutil.rmtree(work, ignore_errors=True)  # PyInstaller's reuse of an old analysis can freeze stale code
    work.mkdir(parents=True)
    (work / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    spec = ROOT / "packaging" / "metabgm-edge.spec"
    cmd = [str(python), "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
           "--distpath", str(dist), "--workpath", str(work), str(spec)]  # fmt: skip
    subprocess.run(
        cmd, check=True, env={**os.environ, "METABGM_EDGE_PACKAGE_CONFIG": str(work / "config.json")}
    )


def contents(artifact: Path) -> list[str]:
    """Every file in a one-folder artifact, relative to it."""
    return sorted(p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file())


LIST_MODULES = """
import sys
from PyInstaller.archive.readers import CArchiveReader
pkg = CArchiveReader(sys.argv[1])
for name, entry in pkg.toc.items():
    if entry[-1] == "z":  # the PYZ archive of Python modules
        print("\\n".join(pkg.open_embedded_archive(name).toc))
"""


def frozen_modules(exe: Path, python: Path | None = None) -> list[str]:
    """The Python modules frozen into ``exe`` (read with the build environment's PyInstaller)."""
    python = python or env_python(ROOT / "build" / "env-cpu")
    out = subprocess.run(
        [str(python), "-c", LIST_MODULES, str(exe)], check=True, capture_output=True, text=True
    )
    return sorted(out.stdout.split())


def forbidden_in(files: list[str]) -> list[str]:
    """Files that belong to a forbidden package (a folder or module of that name anywhere)."""
    bad = []
    names = {f.lower() for f in FORBIDDEN}
    for f in files:
        parts = [p.lower() for p in f.split("/")]
        stems = {re.split(r"[.-]", p, maxsplit=1)[0] for p in parts}
        if stems & names:
            bad.append(f)
    return bad


def size_mb(path: Path) -> float:
    """Bytes on disk of a file, or of the regular files of a folder (links counted once, as links)."""
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", choices=["cpu", "gpu", "rtx"], default="cpu")
    ap.add_argument("--onedir", action="store_true", help="Build the one-folder program.")
    ap.add_argument("--onefile", action="store_true", help="Build the one-file program.")
    ap.add_argument("--dist", type=Path, default=ROOT / "dist", help="Where the artifacts go [dist].")
    ap.add_argument(
        "--onnxruntime", help="The onnxruntime requirement [onnxruntime / onnxruntime-gpu from pyproject]."
    )
    ns = ap.parse_args()
    if not (ns.onedir or ns.onefile):
        ns.onedir = ns.onefile = True
    python = build_env(ns.flavor, ns.onnxruntime)
    connector = bundle_connector()
    probe = probe_env(python)
    log(f"{ns.flavor}: {probe['dist']} {probe['version']} with {probe['providers']}")
    if ns.flavor == "gpu" and "CUDAExecutionProvider" not in probe["providers"]:
        log("the gpu flavor needs onnxruntime-gpu in its environment; found only CPU providers")
        return 1
    if ns.flavor == "rtx" and not probe["rtx_dist"]:
        log(
            "the rtx flavor needs the TensorRT-RTX plugin (the rtx extra) in its environment; it is not there"
        )
        return 1
    base = {"cpu": "metabgm-edge", "gpu": "metabgm-edge-gpu", "rtx": "metabgm-edge-rtx"}[ns.flavor]
    ns.dist.mkdir(parents=True, exist_ok=True)
    for onefile in [False, True]:
        if (onefile and not ns.onefile) or (not onefile and not ns.onedir):
            continue
        name = f"{base}-onefile" if onefile else base
        work = ROOT / "build" / "pyinstaller" / name
        t0 = time.perf_counter()
        freeze(python, spec_config(name, onefile, work, probe, connector), ns.dist)
        artifact = ns.dist / name
        if not onefile:
            soname_links(artifact / "_internal" / RTX_PACKAGE)
        exe = (artifact / name if not onefile else artifact).with_suffix(".exe" if WINDOWS else "")
        bad = forbidden_in(contents(artifact)) if not onefile else []
        bad += [m for m in frozen_modules(exe, python) if m.split(".")[0] in FORBIDDEN]
        if bad:
            log(f"FORBIDDEN in {artifact}: {bad[:10]}")
            return 1
        version = subprocess.run([str(exe), "--version"], check=True, capture_output=True, text=True)
        size = size_mb(artifact if not onefile else exe)
        log(f"built {exe} in {time.perf_counter() - t0:.0f} s: {size:.1f} MB; {version.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
