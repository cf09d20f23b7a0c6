"""MusicGen at musicgen-small size, random weights: transformers eager vs this runtime fp32 / int8 / int4.

Same machine, same run, engines interleaved (``--rounds`` times, medians reported), each engine in
its own process (so peak RSS is its own), guidance batch 2 (conditional + unconditional), the same
thread count for all:

* ms per decoder step at a past of ~250 steps (the middle of a 10 s segment);
* seconds to generate 10 s of audio (500 frames + the codebook delay, EnCodec decode included);
* time to first audio: a fresh segment, and a continued one (2 s of codes as prompt, as ``play``
  continues segments); transformers' ``generate`` returns audio only at the end;
* peak RSS.

The random-weight model and the bundles are built once into ``--cache`` (needs the export extra).

    python benchmarks/musicgen_bench.py                      # make bench-musicgen
    python benchmarks/musicgen_bench.py --rounds 3 --json out/musicgen-bench.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ENGINES = ("transformers", "fp32", "int8", "int4")
TEXT = "Driving cinematic music at 140 BPM in A minor: thumping drums, wide strings, distorted bass."
STEPS_FOR_10S = 500 + 3
PAST = (240, 260)


def ensure(cache: Path) -> dict[str, Path]:
    from random_models import musicgen_small

    model = musicgen_small(cache / "musicgen-small-random")
    bundles = {q: cache / f"musicgen-small-{q}" for q in ("fp32", "int8", "int4")}
    for quant, out in bundles.items():
        if (out / "manifest.json").is_file():
            continue
        from metabgm_edge.export.musicgen import export_musicgen
        from metabgm_edge.export.recipe import Recipe

        print(f"exporting {out.name} (once) ...", file=sys.stderr)
        export_musicgen(Recipe(kind="musicgen", model=str(model), quant=quant, out=str(out)),
                        progress=lambda line: print(line, file=sys.stderr))  # fmt: skip
    return {"transformers": model, **bundles}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def work_transformers(model_dir: Path, threads: int) -> dict[str, float]:
    import torch
    from transformers import (
        AutoTokenizer,
        LogitsProcessor,
        LogitsProcessorList,
        MusicgenForConditionalGeneration,
    )

    torch.set_num_threads(threads)
    model = MusicgenForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    inputs = tok([TEXT], return_tensors="pt")
    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, ids: Any, scores: Any) -> Any:
            stamps.append(time.perf_counter())
            return scores

    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=8, do_sample=True, guidance_scale=3.0)  # warm up
        t0 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=STEPS_FOR_10S, do_sample=True, top_k=250, guidance_scale=3.0,
                       logits_processor=LogitsProcessorList([Stamp()]))  # fmt: skip
        total = time.perf_counter() - t0
    steps = [b - a for a, b in itertools.pairwise(stamps)][PAST[0] : PAST[1]]
    return {"ms_per_step": 1000 * statistics.median(steps), "seconds_10s": total, "first_audio": total,
            "first_audio_continued": total}  # fmt: skip


def work_runtime(bundle_dir: Path, threads: int) -> dict[str, float]:
    from metabgm_edge.audio import AudioRequest, render
    from metabgm_edge.audio.musicgen import MusicGen

    backend = MusicGen.load(bundle_dir, threads=threads)
    model = backend.model
    render(backend, AudioRequest(description=TEXT, seconds=0.2))  # warm up
    cond = model.condition(TEXT)
    stamps = []
    for _ in model.frames(cond, PAST[1] + 4, seed=1):
        stamps.append(time.perf_counter())
    steps = [b - a for a, b in itertools.pairwise(stamps)][PAST[0] : PAST[1]]
    _, anchor = render(backend, AudioRequest(description=TEXT, seconds=10.0, seed=2))
    fresh = backend.last
    render(backend, AudioRequest(description=TEXT, seconds=10.0, seed=3, anchor=anchor))
    continued = backend.last
    return {"ms_per_step": 1000 * statistics.median(steps), "seconds_10s": fresh.total_s,
            "first_audio": fresh.first_audio_s, "first_audio_continued": continued.first_audio_s}  # fmt: skip


def worker(engine: str, path: Path, threads: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = work_transformers(path, threads) if engine == "transformers" else work_runtime(path, threads)
    files = [f for f in path.rglob("*") if f.is_file() and f.suffix in (".onnx", ".data", ".safetensors")]
    size = sum(f.stat().st_size for f in files) / 1e6
    return {"engine": engine, **result, "peak_rss_mb": peak_mb(), "weights_mb": size,
            "wall_s": time.perf_counter() - t0}  # fmt: skip


def machine() -> dict[str, str]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count()),
            "python": platform.python_version(), "load_avg": " ".join(f"{x:.2f}" for x in load)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "metabgm-edge" / "bench")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args.threads)))
        return
    paths = ensure(args.cache)
    engines = [e for e in args.engines.split(",") if e]
    rows: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    loads = []
    for r in range(args.rounds):
        for engine in engines:
            loads.append(os.getloadavg()[0])
            cmd = [
                sys.executable,
                __file__,
                "--threads",
                str(args.threads),
                "--worker",
                engine,
                str(paths[engine]),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{engine} failed:\n{done.stderr[-2000:]}")
            rows[engine].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {engine}: {rows[engine][-1]}", file=sys.stderr)

    def med(engine: str, key: str) -> float:
        return statistics.median(x[key] for x in rows[engine])

    base = med("transformers", "ms_per_step") if "transformers" in rows else None
    print(f"musicgen-small size, random weights, guidance batch 2, {args.threads} threads, {args.rounds} "
          f"rounds (medians); load average during the run {min(loads):.1f}-{max(loads):.1f}")  # fmt: skip
    print("| engine | ms/step (past ~250) | vs transformers | 10 s of audio, s | first audio s (fresh / "
          "continued) | weights MB | peak RSS MB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for engine in engines:
        ms = med(engine, "ms_per_step")
        ratio = f"{base / ms:.2f}x" if base else "-"
        print(f"| {engine} | {ms:.1f} | {ratio} | {med(engine, 'seconds_10s'):.1f} | "
              f"{med(engine, 'first_audio'):.2f} / {med(engine, 'first_audio_continued'):.2f} | "
              f"{med(engine, 'weights_mb'):.0f} | {med(engine, 'peak_rss_mb'):.0f} |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "rounds": rows}, indent=2))


if __name__ == "__main__":
    main()
