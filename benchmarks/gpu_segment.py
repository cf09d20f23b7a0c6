"""One 10 s segment on an NVIDIA GPU through this runtime, at the real sizes, with random weights.

Needs no network and no weights: it builds LLaMA-2-7B (both text stages) and MusicGen-small from
their published configs at random weights (benchmarks/random_models.py), exports them with this
project's exporters (fp16, ``--target cuda``; also ``tensorrt`` where TensorRT is installed), then
runs one segment as ``play`` does: stage 1 (narrative) and stage 2 (description) on the LLM bundle,
then 10 s of MusicGen continuing 2 s of codes. It prints each stage's time, the time to first
audio and the peak GPU memory (nvidia-smi, polled).

Needs onnxruntime-gpu (CUDAExecutionProvider), torch and transformers (the export extra), about
60 GB of RAM and 40 GB of disk for the 7B export, and a GPU with 16 GB or more for both models at
fp16 (a 7B int4 bundle, ``--llm-quant int4``, fits 8-12 GB cards).

    python benchmarks/gpu_segment.py --work /tmp/gpu-bench            # everything
    python benchmarks/gpu_segment.py --work /tmp/gpu-bench --skip-llm # MusicGen only (minutes)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SCENE = {
    "v": 1,
    "scene": {"biome": "dark_forest"},
    "time": {"ticks": 18000},
    "weather": {"state": "rain", "intensity": 0.6},
    "health": {"value": 9, "max": 20},
    "hostiles": [{"name": "zombie", "distance": 3.0}],
    "attacked": {"damage": 3, "attacker": "zombie", "seconds_ago": 0.5},
}


class GpuMemory:
    """Peak used GPU memory, polled with nvidia-smi every 0.2 s."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                self.peak_mib = max(self.peak_mib, max(int(x) for x in out.split() if x.strip().isdigit()))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.2)

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def require_cuda() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit(
            f"this onnxruntime {ort.__version__} has no CUDAExecutionProvider "
            f"({', '.join(ort.get_available_providers())}): pip install onnxruntime-gpu "
            "(and uninstall onnxruntime)"
        )
    if shutil.which("nvidia-smi") is None:
        sys.exit("no nvidia-smi: this needs an NVIDIA GPU and its driver")


def llm_bundle(work: Path, quant: str, target: str) -> Path:
    out = work / f"llama2-7b-random-{quant}-{target}"
    if (out / "manifest.json").is_file():
        return out
    import torch
    from random_models import llama2_7b_config
    from transformers import AutoTokenizer, LlamaForCausalLM

    from metabgm_edge.export.llm import export_llm
    from metabgm_edge.export.recipe import Recipe

    model_dir = work / "llama2-7b-random"
    if not (model_dir / "config.json").is_file():
        print("building LLaMA-2-7B at random weights (fp16) ...", file=sys.stderr)
        torch.manual_seed(0)
        model = LlamaForCausalLM(llama2_7b_config()).to(torch.float16)
        model.save_pretrained(model_dir, safe_serialization=True)
        del model
        # A tokenizer with LLaMA's chat template: SmolLM2's shape is not needed, any fast BPE works.
        sys.path.insert(0, str(ROOT / "tests"))
        from llm_fixtures import TINY_CORPUS
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel()
        tok.train_from_iterator(
            [TINY_CORPUS] * 50, trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"])
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
        fast.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
        fast.save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(model_dir)
    recipe = Recipe(model=str(model_dir), quant=quant, target=target, out=str(out), chat_template="llama2")
    export_llm(recipe, progress=lambda line: print(line, file=sys.stderr))
    return out


def musicgen_bundle(work: Path, target: str) -> Path:
    from random_models import musicgen_small

    from metabgm_edge.export.musicgen import export_musicgen
    from metabgm_edge.export.recipe import Recipe

    out = work / f"musicgen-small-random-fp16-{target}"
    if not (out / "manifest.json").is_file():
        model = musicgen_small(work / "musicgen-small-random")
        export_musicgen(Recipe(kind="musicgen", model=str(model), quant="fp16", target=target, out=str(out)),
                        progress=lambda line: print(line, file=sys.stderr))  # fmt: skip
    return out


def segment(llm_dir: Path | None, musicgen_dir: Path) -> dict[str, Any]:
    from metabgm_edge.audio import AudioRequest, render
    from metabgm_edge.audio.musicgen import MusicGen
    from metabgm_edge.stages import describe
    from metabgm_edge.state import state_from_dict
    from metabgm_edge.text.llm import LLMText

    result: dict[str, Any] = {}
    with GpuMemory() as memory:
        description = (
            "Driving cinematic music at 140 BPM in A minor: thumping drums, wide strings, distorted bass."
        )
        if llm_dir is not None:
            text = LLMText.load(llm_dir)
            result["llm_provider"] = text.llm.provider
            describe(state_from_dict(SCENE), text, seed=0)  # warm up
            done = describe(state_from_dict(SCENE), text, seed=1)
            result.update({f"{k}_s": v for k, v in done.timings.items()})
        music = MusicGen.load(musicgen_dir)
        result["musicgen_provider"] = music.model.provider
        _, anchor = render(
            music, AudioRequest(description=description, seconds=2.0, seed=0)
        )  # warm up + prompt
        t0 = time.perf_counter()
        render(music, AudioRequest(description=description, seconds=10.0, tail=0.5, seed=1, anchor=anchor))
        result["musicgen_s"] = time.perf_counter() - t0
        result["first_audio_s"] = music.last.first_audio_s
        result["ms_per_step"] = music.last.ms_per_step
        result["segment_s"] = (
            sum(result.get(k, 0.0) for k in ("narrative_s", "description_s")) + result["musicgen_s"]
        )
    result["peak_gpu_mib"] = memory.peak_mib
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/metabgm-gpu-bench"))
    parser.add_argument("--llm-quant", choices=["fp16", "int4"], default="fp16")
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    require_cuda()
    from metabgm_edge.ort import device

    gpu = device.gpu()
    targets = ["cuda"] + (["tensorrt"] if device.tensorrt_version() else [])
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"gpu": gpu.name if gpu else None, "arch": gpu.arch if gpu else None, "runs": {}}
    for target in targets:
        llm = None if args.skip_llm else llm_bundle(args.work, args.llm_quant, target)
        report["runs"][target] = segment(llm, musicgen_bundle(args.work, target))
        print(target, json.dumps(report["runs"][target]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
