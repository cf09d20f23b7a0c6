#!/usr/bin/env python3
"""Cold start to first audio, and peak RSS, of the packaged builds against the venv install.

    python benchmarks/package_start.py [--rounds 3] [--seconds 6] [TARGET ...]

A TARGET is ``name=command`` (default: ``onedir=dist/metabgm-edge/metabgm-edge``,
``onefile=dist/metabgm-edge-onefile``, ``venv=.venv/bin/metabgm-edge``). Each round, for each target
in turn (side by side, so a busy machine slows them alike):

- *cold*: the page cache is emptied of the target's own files first (``posix_fadvise(DONTNEED)``
  on every file of the one-folder build, on the one-file executable (which unpacks itself into a
  new temporary folder at every start anyway), or on the venv and the Python standard library and
  libpython it runs), so they are read from disk again, as after a reboot. The system's own libraries (libc,
  libstdc++ and so on) are not evicted;
- *warm*: the same command again at once.

The command is ``play --duration S --interval S --text composer --audio synth --out F.wav`` in real
time with ``env -i HOME=...`` (no sound card: the music goes to the WAV file at the pace it would
play). First audio is the moment the WAV file first grows past its header, polled every 2 ms,
from the moment the process was started; peak RSS is the largest ``VmHWM`` over the process and its
children (the one-file build's bootloader runs the program as a child). Prints a table and, with
``--json``, the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER_BYTES = 58  # metabgm_edge.playback.wav: RIFF + fmt (18) + fact + data headers


def evict(paths: list[Path]) -> int:
    """Drop these files' pages from the page cache (no root needed); how many files."""
    n = 0
    for top in paths:
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file() and not p.is_symlink()]
        for f in files:
            try:
                fd = os.open(f, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            finally:
                os.close(fd)
    return n


def files_of(command: Path) -> list[Path]:
    """What a target reads at start: its build folder, or its venv and the Python it runs on."""
    if (command.parent / "_internal").is_dir():
        return [command.parent]
    if command.parent.name == "bin" and (command.parent.parent / "pyvenv.cfg").is_file():
        venv = command.parent.parent
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        libdir = Path(sysconfig.get_config_var("LIBDIR") or "/usr/lib")
        libpython = list(libdir.glob("libpython3*.so*"))
        return [venv, stdlib, *libpython]
    return [command]  # the one-file build: it unpacks itself into a new temporary folder each start


def tree_hwm_kb(pid: int) -> int:
    """The largest VmHWM (peak RSS) of ``pid`` and its descendants, in KiB."""
    best = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            best = max(best, next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return best


def run_once(command: Path, seconds: float, home: Path) -> dict[str, float]:
    out = home / "start.wav"
    out.unlink(missing_ok=True)
    args = ["play", "--duration", f"{seconds:g}", "--interval", f"{seconds:g}", "--text", "composer",
            "--audio", "synth", "--out", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["/usr/bin/env", "-i", f"HOME={home}", str(command), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = None
    hwm = 0
    while proc.poll() is None:
        if first is None:
            try:
                if out.stat().st_size > HEADER_BYTES:
                    first = time.perf_counter() - t0
            except FileNotFoundError:
                pass
        hwm = max(hwm, tree_hwm_kb(proc.pid))
        time.sleep(0.002 if first is None else 0.05)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{command} exited {proc.returncode}")
    if first is None:
        raise SystemExit(f"{command}: no audio reached {out}")
    return {"first_audio_s": first, "total_s": total, "peak_rss_mib": hwm / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="name=command")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="How long each play runs [6].")
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args()
    specs = ns.targets or [
        f"onedir={ROOT / 'dist/metabgm-edge/metabgm-edge'}",
        f"onefile={ROOT / 'dist/metabgm-edge-onefile'}",
        f"venv={ROOT / '.venv/bin/metabgm-edge'}",
    ]
    targets = {name: Path(cmd).resolve() for name, cmd in (s.split("=", 1) for s in specs)}
    missing = [str(c) for c in targets.values() if not c.is_file()]
    if missing:
        raise SystemExit(f"not built: {', '.join(missing)} (make package; make play for the venv)")
    results: dict[str, dict[str, list[dict[str, float]]]] = {n: {"cold": [], "warm": []} for n in targets}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="metabgm-start-") as tmp:
        home = Path(tmp)
        for _ in range(ns.rounds):
            for name, command in targets.items():
                evict(files_of(command))
                results[name]["cold"].append(run_once(command, ns.seconds, home))
                results[name]["warm"].append(run_once(command, ns.seconds, home))
    load_after = os.getloadavg()
    if ns.json:
        print(json.dumps({"load": [load, load_after], "results": results}, indent=2))
        return 0
    print(
        f"load average before {load[0]:.2f}, after {load_after[0]:.2f}; {ns.rounds} rounds: median (min-max)"
    )
    print(f"{'target':<10} {'cold first audio s':>22} {'warm first audio s':>22} {'peak RSS MiB':>14}")
    for name, runs in results.items():

        def cell(rs: list[dict[str, float]], key: str) -> str:
            vals = [r[key] for r in rs]
            return f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})"

        rss = max(r["peak_rss_mib"] for r in runs["cold"] + runs["warm"])
        cold, warm = cell(runs["cold"], "first_audio_s"), cell(runs["warm"], "first_audio_s")
        print(f"{name:<10} {cold:>22} {warm:>22} {rss:>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
