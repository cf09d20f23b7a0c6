"""How onnxruntime's intra-op threads should wait: ``METABGM_EDGE_ORT_SPIN`` = run / always / never.

For each policy in turn, ``--rounds`` times, each in its own process: the LLM's greedy decode rate
(tok/s, 64 new tokens after a prompt of 260 repeated words, about as long as ``llm_bench.py``'s
261-token stage-1 prompt) on an LLM bundle, and, when a MusicGen bundle is given, seconds to render
2 s of audio. ``--hogs N`` runs N busy-looping processes
beside it the whole time (a game that takes N cores). Medians per policy.

    python benchmarks/spin_bench.py --llm engines/smollm2-135m-int4
    python benchmarks/spin_bench.py --llm engines/smollm2-135m-int4 --hogs 1
    python benchmarks/spin_bench.py --llm engines/smollm2-135m-int4 --musicgen engines/musicgen-small-int8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metabgm_edge.ort.session import SPIN_ENV, SPIN_POLICIES  # noqa: E402


def worker(llm_path: str | None, musicgen_path: str | None, threads: int) -> dict[str, float]:
    out: dict[str, float] = {}
    if llm_path:
        from metabgm_edge.llm import LLM, GenerationConfig

        llm = LLM.load(llm_path, threads=threads)
        prompt = llm.encode(" ".join(["hello"] * 260))
        config = GenerationConfig(do_sample=False, max_new_tokens=64, min_new_tokens=64,
                                  repetition_penalty=1.0, no_repeat_ngram_size=0)  # fmt: skip
        llm.generate(prompt, config)  # warm-up
        rates = [llm.generate(prompt, config).decode_tokens_per_s for _ in range(6)]
        out["decode_tok_s"] = statistics.median(rates)
    if musicgen_path:
        from metabgm_edge.audio import open_audio_backend
        from metabgm_edge.audio.interface import AudioRequest, render

        backend = open_audio_backend(musicgen_path, threads=threads)
        request = AudioRequest(description="calm piano melody at 80 BPM", seconds=2.0, seed=1)
        render(backend, request)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            render(backend, request)
            times.append(time.perf_counter() - t0)
        out["musicgen_2s_s"] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm", type=Path, help="an LLM bundle (e.g. engines/smollm2-135m-int4)")
    parser.add_argument("--musicgen", type=Path, help="a MusicGen bundle (e.g. engines/musicgen-small-int8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hogs", type=int, default=0, help="busy-looping processes beside the runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(str(args.llm) if args.llm else None, str(args.musicgen) if args.musicgen else None,
                        args.threads)  # fmt: skip
        print(json.dumps(result))
        return
    if not args.llm and not args.musicgen:
        parser.error("give --llm BUNDLE and/or --musicgen BUNDLE")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    results: dict[str, list[dict[str, float]]] = {p: [] for p in SPIN_POLICIES}
    loads = []
    try:
        for r in range(args.rounds):
            for policy in SPIN_POLICIES:
                cmd = [sys.executable, __file__, "--worker", "--threads", str(args.threads)]
                cmd += ["--llm", str(args.llm)] if args.llm else []
                cmd += ["--musicgen", str(args.musicgen)] if args.musicgen else []
                env = {**os.environ, SPIN_ENV: policy}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                results[policy].append(json.loads(done.stdout.strip().splitlines()[-1]))
                loads.append(os.getloadavg()[0])
                print(f"round {r + 1}/{args.rounds}: {policy} {results[policy][-1]}", file=sys.stderr)
    finally:
        for hog in hogs:
            hog.kill()
    print(f"\n{args.threads} threads, {args.hogs} CPU hog(s), {args.rounds} rounds, medians; "
          f"load average {min(loads):.2f}-{max(loads):.2f}\n")  # fmt: skip
    print("| METABGM_EDGE_ORT_SPIN | LLM decode tok/s | MusicGen 2 s of audio, s |")
    print("|---|---:|---:|")
    for policy in SPIN_POLICIES:
        rows = results[policy]
        tok = statistics.median(x["decode_tok_s"] for x in rows) if args.llm else None
        mg = statistics.median(x["musicgen_2s_s"] for x in rows) if args.musicgen else None
        print(f"| {policy} | {'-' if tok is None else f'{tok:.1f}'} | {'-' if mg is None else f'{mg:.2f}'} |")


if __name__ == "__main__":
    main()
