"""``metabgm-edge export llm``: a transformers model (HF folder or GGUF) -> a runtime bundle.

Steps, each reported through ``progress``:

1. check the target (TensorRT fails here at once when the machine lacks it);
2. load the model and tokenizer (``gguf_file=`` for GGUF), in the recipe's ``load_dtype``;
3. merge the LoRA adapter (peft ``merge_and_unload``);
4. build the fused decoder, quantized for the target, with onnxruntime-genai's model builder
   (:mod:`metabgm_edge.export.builder`);
5. for ``tensorrt``, compile the EPContext engine (TensorRT-RTX where installed, else TensorRT);
6. write tokenizer, chat template, manifest; load the bundle with the runtime and generate a few
   tokens as a check.

The bundle is written into a temporary folder beside ``out`` and renamed at the end, so an
interrupted export never leaves a half bundle that ``play`` could pick.

Memory: the weights are held once, in ``load_dtype`` (fp16 for a 7B model: about 13.5 GB), while
the builder writes the quantized graph layer by layer (int4: about 3.9 GB more); nothing loads the
exported ONNX weights back during the export except the runtime's smoke test, after the torch
model is released.
"""

from __future__ import annotations

import gc
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from metabgm_edge import bundle
from metabgm_edge.export.recipe import Recipe, RecipeError, check, resolve_model

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DATA_FILE = "model.onnx.data"
EXPORT_EXTRA = "pip install 'metabgm-edge[export]'"
DEFAULT_CONTEXT = 4096
"""Positions of the KV buffer when the recipe sets no context_length (capped by the model's)."""


def _import_heavy() -> Any:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise RecipeError(f"export needs the export extra ({exc.name} is missing): {EXPORT_EXTRA}") from None
    return torch, transformers


class _Steps:
    def __init__(self, total: int, progress: Progress) -> None:
        self.total = total
        self.n = 0
        self.progress = progress

    @contextmanager
    def step(self, what: str):  # type: ignore[no-untyped-def]
        self.n += 1
        self.progress(f"[{self.n}/{self.total}] {what} ...")
        t0 = time.perf_counter()
        yield
        self.progress(f"      done in {time.perf_counter() - t0:.1f} s")


def _total_steps(recipe: Recipe) -> int:
    return 7 if recipe.target == "tensorrt" else 6


def export_llm(recipe: Recipe, *, force: bool = False, progress: Progress = print) -> Path:
    """Export per ``recipe`` and return the bundle folder."""
    recipe = check(recipe)
    assert recipe.model and recipe.out  # checked above
    out = Path(recipe.out).expanduser()
    if out.exists() and not force:
        raise RecipeError(f"{out} already exists: pass --force to replace it, or choose another --out")
    steps = _Steps(_total_steps(recipe), progress)

    with steps.step(f"checking target {recipe.target} ({recipe.quant})"):
        source_path = resolve_model(recipe.model)
        if recipe.lora and not (Path(recipe.lora).expanduser() / "adapter_config.json").is_file():
            raise RecipeError(
                f"--lora {recipe.lora}: no adapter_config.json there (not a peft adapter folder)"
            )
        if recipe.target == "tensorrt":
            from metabgm_edge.export.tensorrt import require_tensorrt

            require_tensorrt()
        _import_heavy()
        from metabgm_edge.export.builder import _import_builder

        _import_builder()

    with steps.step(f"loading {source_path.name} ({recipe.load_dtype})"):
        model, tokenizer = load_model(source_path, recipe.load_dtype)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        progress(f"      {type(model).__name__}, {params:.1f} M parameters")

    if recipe.lora:
        with steps.step(f"merging LoRA adapter {recipe.lora}"):
            model = merge_lora(model, Path(recipe.lora).expanduser())
    else:
        steps.n += 1
        progress(f"[{steps.n}/{steps.total}] no LoRA adapter")
    return build_bundle(model, tokenizer, recipe, source_path, force=force, steps=steps, release=True)


def build_bundle(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    source_path: Path,
    *,
    force: bool = False,
    progress: Progress = print,
    steps: _Steps | None = None,
    release: bool = False,
) -> Path:
    """From a loaded (and merged) model to a verified bundle at ``recipe.out``: the fused decoder,
    the engine for TensorRT, tokenizer, manifest, and the runtime's check.

    Separate from :func:`export_llm` so one loaded model can be built several ways. ``release``
    drops this function's reference to the model once the graph is written (the export's own
    caller keeps none), so the smoke test does not hold the torch weights.
    """
    recipe = check(recipe)
    assert recipe.out  # checked above
    out = Path(recipe.out).expanduser()
    if out.exists() and not force:
        raise RecipeError(f"{out} already exists: pass --force to replace it, or choose another --out")
    steps = steps or _Steps(_total_steps(recipe) - 3, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        stage = Path(tmp) / out.name
        stage.mkdir()
        flavour = "TensorRT-RTX" if recipe.target == "tensorrt" else recipe.target.upper()
        with steps.step(f"building the fused decoder for {flavour}, {recipe.quant} (onnxruntime-genai)"):
            from metabgm_edge.export.builder import build_decoder

            build_decoder(model, tokenizer, recipe, stage, Path(tmp) / "builder")
            shutil.rmtree(Path(tmp) / "builder", ignore_errors=True)
            graph_spec, cache = _describe(stage, model.config, recipe)
            steps.progress(f"      {_node_count(stage)} nodes, KV cache {cache.kv_dtype} in place")
        architecture = type(model).__name__
        generation = _generation(recipe, model, tokenizer, detect_chat(tokenizer, recipe))
        if release:
            del model
            gc.collect()

        engines: list[bundle.Engine] = []
        if recipe.target == "tensorrt":
            with steps.step("compiling the TensorRT engine (minutes)"):
                from metabgm_edge.export.tensorrt import compile_engine
                from metabgm_edge.llm.profile import decoder_profile

                profile = decoder_profile(
                    graph_spec, cache, recipe.tensorrt.max_prompt_tokens, recipe.tensorrt.opt_prompt_tokens
                )
                engines.append(
                    compile_engine(
                        stage, "decoder", graph_spec, recipe.tensorrt, f"fp16+{recipe.quant}", profile
                    )
                )

        with steps.step("writing tokenizer, chat template and manifest"):
            manifest = _write_rest(
                stage,
                out,
                recipe,
                source_path,
                architecture,
                tokenizer,
                graph_spec,
                cache,
                engines,
                generation,
            )
            steps.progress(f"      {len(manifest.files)} files, {_size(manifest) / 1e6:.1f} MB")

        with steps.step("checking the bundle with the runtime"):
            _smoke_test(stage, recipe.target, steps.progress)
            _make_readable(stage)
            if out.exists():
                shutil.rmtree(out)
            stage.rename(out)
    steps.progress(f"bundle written to {out}")
    return out


def _make_readable(folder: Path) -> None:
    """Temporary folders are private (0700); a bundle is shared like any installed file."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _size(manifest: bundle.Manifest) -> int:
    return sum(f.size for f in manifest.files)


def load_model(path: Path, dtype: str = "float32") -> tuple[Any, Any]:
    """(model in ``dtype``, fast tokenizer) from an HF folder or a GGUF file."""
    torch, transformers = _import_heavy()
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if path.is_file():  # GGUF: dequantized by transformers
        folder, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        folder = str(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        folder, **{k: v for k, v in kwargs.items() if k != "dtype"}
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, low_cpu_mem_usage=True, **kwargs)
    model.eval()
    if not getattr(tokenizer, "is_fast", False):
        raise RecipeError(f"{path}: no fast tokenizer (tokenizer.json) could be made; the runtime needs one")
    return model, tokenizer


def merge_lora(model: Any, adapter: Path) -> Any:
    """The base model with the LoRA adapter's weights added in (peft ``merge_and_unload``)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise RecipeError(f"merging a LoRA adapter needs peft: {EXPORT_EXTRA}") from None
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.eval()
    return merged


def _node_count(stage: Path) -> int:
    import onnx

    return len(onnx.load(str(stage / "model.onnx"), load_external_data=False).graph.node)


def _describe(stage: Path, config: Any, recipe: Recipe) -> tuple[bundle.Graph, bundle.KVCache]:
    """The built graph's interface and cache, checked to be the fused, in-place layout."""
    import onnx

    model = onnx.load(str(stage / "model.onnx"), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    if "GroupQueryAttention" not in ops:
        raise RecipeError(
            f"the builder made no GroupQueryAttention graph for {recipe.quant} on {recipe.target} (the "
            "in-place cache needs it): choose another --quant for this target"
        )
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    kv_type = next(i for i in model.graph.input if i.name.startswith("past_key_values")).type
    kv_dtype = "float16" if kv_type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else "float32"
    logits = next(o for o in model.graph.output if o.name == "logits").type.tensor_type.shape.dim
    context = min(
        int(getattr(config, "max_position_embeddings", 2048)), recipe.context_length or DEFAULT_CONTEXT
    )
    if recipe.target == "tensorrt":
        context = min(context, recipe.tensorrt.max_total_tokens)
    heads = config.num_attention_heads
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph_spec = bundle.Graph(file="model.onnx", inputs=inputs, outputs=outputs, opset=opset)
    cache = bundle.KVCache(
        num_layers=config.num_hidden_layers,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        kv_dtype=kv_dtype,
        buffer="shared",
        logits_last_only=len(logits) == 3 and logits[1].dim_value == 1,
        vocab_size=config.vocab_size,
        context_length=context,
    )
    return graph_spec, cache


def detect_chat(tokenizer: Any, recipe: Recipe) -> bundle.Chat:
    """The chat template family and default system message, from the tokenizer unless the recipe says."""
    jinja = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else ""
    template = recipe.chat_template
    if template is None:
        if "<|im_start|>" in jinja:
            template = "chatml"
        elif "[INST]" in jinja:
            template = "llama2"
        else:
            raise RecipeError(
                "cannot tell the model's chat template from its tokenizer: pass --chat-template chatml "
                "or --chat-template llama2 (or set chat_template in the recipe)"
            )
    system = recipe.system_prompt
    if system is None and template == "chatml":
        found = re.search(r"<\|im_start\|>system\s*\n(.+?)<\|im_end\|>", jinja, re.DOTALL)
        if found and "{" not in found.group(1):
            system = found.group(1).strip()
    return bundle.Chat(
        template=template,
        bos_token=tokenizer.bos_token if template == "llama2" else None,
        eos_token=tokenizer.eos_token if template == "llama2" else None,
        default_system=system or None,
        template_file="chat_template.jinja" if jinja else None,
    )


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def _generation(recipe: Recipe, model: Any, tokenizer: Any, chat: bundle.Chat) -> bundle.Generation:
    from metabgm_edge.llm.chat import end_marker

    stops = set(_ids(model.config.eos_token_id))
    stops.update(_ids(getattr(model.generation_config, "eos_token_id", None)))
    end = tokenizer.convert_tokens_to_ids(end_marker(chat.template, chat.eos_token))
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        stops.add(end)
    overrides = {k: v for k, v in _builtins(recipe.generation).items() if v is not None}
    return bundle.Generation(stop_token_ids=sorted(stops), **overrides)


def _builtins(obj: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(obj)


def versions() -> dict[str, str]:
    """Versions of this package and of the export tools, for the manifest's ``versions``."""
    out = {}
    for dist in (
        "metabgm-edge",
        "torch",
        "transformers",
        "onnxruntime-genai",
        "peft",
        "onnx",
        "onnx-ir",
        "gguf",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _write_rest(
    stage: Path,
    out: Path,
    recipe: Recipe,
    source_path: Path,
    architecture: str,
    tokenizer: Any,
    graph_spec: bundle.Graph,
    cache: bundle.KVCache,
    engines: list[bundle.Engine],
    generation: bundle.Generation,
) -> bundle.Manifest:
    import onnxruntime

    tokenizer.backend_tokenizer.save(str(stage / "tokenizer.json"))
    chat = detect_chat(tokenizer, recipe)
    if chat.template_file:
        (stage / chat.template_file).write_text(tokenizer.chat_template, encoding="utf-8")
    manifest = bundle.Manifest(
        kind="llm",
        name=recipe.name or out.name,
        created=bundle.utc_now(),
        source=bundle.ModelSource(
            model=recipe.model or str(source_path),
            model_sha256=bundle.sha256_of(source_path) if source_path.is_file() else None,
            adapter=recipe.lora,
            architecture=architecture,
        ),
        quantization=recipe.quant,
        target=recipe.target,
        versions={"onnxruntime": onnxruntime.__version__, **versions()},
        graphs={"decoder": graph_spec},
        engines=engines,
        llm=bundle.LLMSection(cache=cache, generation=generation, chat=chat),
    )
    return bundle.write_manifest(stage, manifest)


def _smoke_test(stage: Path, target: str, progress: Progress) -> None:
    """Open the bundle as ``play`` would and generate a few tokens. A GPU bundle on a machine without
    that GPU is checked on the fallback provider; if that cannot run it, this is reported, not fatal."""
    from metabgm_edge.llm import LLM, GenerationConfig
    from metabgm_edge.text import ChatMessage

    try:
        llm = LLM.load(stage)
        result = llm.chat(
            [ChatMessage("user", "Describe a quiet forest at dawn in one sentence.")],
            GenerationConfig(max_new_tokens=12, do_sample=False),
        )
    except Exception as exc:  # onnxruntime's errors share no base class
        if target == "cpu":
            raise
        progress(f"      not checked: no provider on this machine runs this {target} bundle ({exc})")
        return
    for line in llm.skipped_providers:
        progress(f"      {line}")
    progress(
        f"      on {llm.provider}: {result.text.strip()!r} ({result.decode_tokens_per_s:.0f} tok/s, "
        f"first token {result.first_token_s:.2f} s)"
    )
