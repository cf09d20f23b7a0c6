"""``serve`` with many players on this machine: the README's table, in one run.

Runs ``metabgm-edge bench serve`` (:mod:`metabgm_edge.serve.bench`: a local Ray, ``serve``, N
simulated players in different scenes over UDP, N ``listen`` clients over WebSocket) for the
embedded defaults (composer + synthesizer) and, when the bundle is there, for the SmolLM2 int8
bundle as the text backend; each with batching on and then off, N growing until the first
deadline miss. Prints each table and writes all results as JSON.

    python benchmarks/serve_bench.py                          # make bench-serve
    python benchmarks/serve_bench.py --players 1,2,4 --duration 30 --json out/serve-bench.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metabgm_edge.serve.bench import format_serve_table, run_serve_bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--players", default="1,2,4,8,16", help="player counts (embedded defaults)")
    ap.add_argument("--llm-players", default="1,2,4,8", help="player counts with the LLM bundle")
    ap.add_argument("--llm", default=str(ROOT / "engines" / "smollm2-135m-int8"), help="LLM bundle folder")
    ap.add_argument("--duration", type=float, default=40.0, help="seconds listened per player count")
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--json", type=Path, help="write every result here")
    a = ap.parse_args()
    runs = [("composer", [int(n) for n in a.players.split(",")])]
    if Path(a.llm, "manifest.json").is_file():
        runs.append((a.llm, [int(n) for n in a.llm_players.split(",")]))
    else:
        print(f"no LLM bundle at {a.llm} (metabgm-edge export llm ...): embedded defaults only")
    results = []
    for text, counts in runs:
        r = run_serve_bench(counts, duration=a.duration, text=text, audio="synth", batching="both",
                            interval=a.interval, fmt="opus", stop_at_miss=True)  # fmt: skip
        print(format_serve_table(r), flush=True)
        results.append(r)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=2) + b"\n")


if __name__ == "__main__":
    main()
