"""``metabgm-edge export musicgen``: a transformers MusicGen folder -> a runtime bundle.

Steps, each reported through ``progress``:

1. check the target (TensorRT fails here at once when the machine lacks it) and the model folder;
2. load the model and its T5 tokenizer (fp32);
3. export the graphs through torch.onnx (:mod:`.musicgen_graphs`): text encoder, cross keys/values,
   the decoder with a KV cache of any length, for GPU targets the decoder with a fixed-length cache
   written in place, EnCodec's decoder and encoder;
4. quantize the decoders for the target (the text encoder and the codec stay fp32);
5. for ``tensorrt``, compile the fixed-cache decoder into an EPContext engine;
6. write the tokenizer and the manifest; load the bundle with the runtime and render a moment of
   audio as a check.

The bundle is written into a temporary folder beside ``out`` and renamed at the end, so an
interrupted export never leaves a half bundle that ``play`` could pick.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metabgm_edge import bundle
from metabgm_edge.export.llm import DATA_FILE, EXPORT_EXTRA, _make_readable, _Steps, versions
from metabgm_edge.export.recipe import Recipe, RecipeError, check

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
OPSET = 18
SAMPLE_RATE = 32000


def _import_heavy() -> Any:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise RecipeError(f"export needs the export extra ({exc.name} is missing): {EXPORT_EXTRA}") from None
    return torch, transformers


def check_model_folder(path: Path) -> dict[str, Any]:
    """The folder's config.json, if it is a MusicGen this runtime can play; RecipeError otherwise."""
    config_path = path / "config.json"
    if not path.is_dir() or not config_path.is_file():
        raise RecipeError(f"model {path}: not a transformers model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecipeError(f"model {path}: config.json cannot be read: {exc}") from None
    if config.get("model_type") != "musicgen":
        raise RecipeError(
            f"model {path}: model_type is {config.get('model_type')!r}, not 'musicgen' "
            "(MusicGen melody and other families are not supported)"
        )
    audio = config.get("audio_encoder", {})
    if audio.get("model_type", "encodec") != "encodec":
        raise RecipeError(f"model {path}: the audio codec is {audio.get('model_type')!r}, not EnCodec")
    rate = audio.get("sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise RecipeError(f"model {path}: its codec runs at {rate} Hz; metabgm-edge plays {SAMPLE_RATE} Hz")
    if audio.get("chunk_length_s") is not None:
        raise RecipeError(f"model {path}: a chunked EnCodec (chunk_length_s) is not supported")
    return config


def export_musicgen(recipe: Recipe, *, force: bool = False, progress: Progress = print) -> Path:
    """Export per ``recipe`` (kind musicgen) and return the bundle folder."""
    recipe = check(recipe)
    assert recipe.model and recipe.out
    out = Path(recipe.out).expanduser()
    if out.exists() and not force:
        raise RecipeError(f"{out} already exists: pass --force to replace it, or choose another --out")
    static = (
        recipe.musicgen.static_cache if recipe.musicgen.static_cache is not None else recipe.target != "cpu"
    )
    steps = _Steps(7 if recipe.target == "tensorrt" else 6, progress)

    with steps.step(f"checking target {recipe.target} ({recipe.quant}) and the model"):
        source = Path(recipe.model).expanduser()
        check_model_folder(source)
        if recipe.target == "tensorrt":
            from metabgm_edge.export.tensorrt import require_tensorrt

            require_tensorrt()
        _import_heavy()

    with steps.step(f"loading {source.name}"):
        model, tokenizer = load_model(source)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        dec = model.decoder.config
        progress(
            f"      {type(model).__name__}, {params:.1f} M parameters; decoder {dec.num_hidden_layers} "
            f"layers x {dec.hidden_size}, {dec.num_codebooks} codebooks x {dec.vocab_size}, "
            f"{dec.audio_channels} channel(s)"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        stage = Path(tmp) / out.name
        stage.mkdir()
        raw = Path(tmp) / "raw"
        raw.mkdir()
        with steps.step("exporting the graphs (torch.onnx, opset 18)"):
            graphs = export_graphs(model, raw, recipe, static=static, progress=progress)
        with steps.step(f"quantizing the decoder ({recipe.quant}) and saving"):
            specs = finish_graphs(graphs, stage, recipe)
        engines: list[bundle.Engine] = []
        section = make_section(model, recipe, static)
        if recipe.target == "tensorrt":
            with steps.step("building the TensorRT engine of the fixed-cache decoder (minutes)"):
                engines.append(compile_decoder_engine(stage, specs["decoder_static"], section, recipe))
        with steps.step("writing the tokenizer and the manifest"):
            tokenizer.backend_tokenizer.save(str(stage / "tokenizer.json"))
            manifest = bundle.Manifest(
                kind="musicgen",
                name=recipe.name or out.name,
                created=bundle.utc_now(),
                source=bundle.ModelSource(model=recipe.model, architecture=type(model).__name__),
                quantization=recipe.quant,
                target=recipe.target,
                versions={"onnxruntime": _ort_version(), **versions()},
                graphs=specs,
                engines=engines,
                musicgen=section,
            )
            manifest = bundle.write_manifest(stage, manifest)
            progress(f"      {len(manifest.files)} files, {sum(f.size for f in manifest.files) / 1e6:.1f} MB")
        with steps.step("checking the bundle with the runtime"):
            smoke_test(stage, recipe.target, progress)
            _make_readable(stage)
            if out.exists():
                shutil.rmtree(out)
            stage.rename(out)
    progress(f"bundle written to {out}")
    return out


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def load_model(path: Path) -> tuple[Any, Any]:
    torch, transformers = _import_heavy()
    model = transformers.MusicgenForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    if not getattr(tokenizer, "is_fast", False):
        raise RecipeError(f"{path}: no fast tokenizer (tokenizer.json) could be made; the runtime needs one")
    return model, tokenizer


def make_section(model: Any, recipe: Recipe, static: bool) -> bundle.MusicGenSection:
    dec = model.decoder.config
    audio = model.audio_encoder.config
    gen = model.generation_config
    mg = recipe.musicgen

    def pick(value: Any, fallback: Any) -> Any:
        return fallback if value is None else value

    codebook_size = dec.vocab_size
    start = gen.decoder_start_token_id
    if start is None:
        start = getattr(dec, "decoder_start_token_id", None)
    pad = gen.pad_token_id if gen.pad_token_id is not None else getattr(dec, "pad_token_id", None)
    start = codebook_size if start is None else int(start)
    pad = start if pad is None else int(pad)
    defaults = bundle.MusicGenDefaults(
        do_sample=bool(pick(gen.do_sample, True)),
        top_k=int(pick(mg.top_k, pick(gen.top_k, 250))),
        top_p=float(pick(mg.top_p, gen.top_p if gen.top_p not in (None, 1.0) else 0.0)),
        temperature=float(pick(mg.temperature, pick(gen.temperature, 1.0))),
        guidance_scale=float(pick(mg.guidance_scale, pick(getattr(gen, "guidance_scale", None), 3.0))),
        prompt_seconds=mg.prompt_seconds,
    )
    return bundle.MusicGenSection(
        sample_rate=int(audio.sampling_rate),
        audio_channels=int(dec.audio_channels),
        frame_rate=float(audio.sampling_rate / audio.hop_length),
        num_codebooks=int(dec.num_codebooks),
        codebook_size=int(codebook_size),
        pad_token_id=pad,
        decoder_start_token_id=start,
        num_layers=int(dec.num_hidden_layers),
        num_heads=int(dec.num_attention_heads),
        head_dim=int(dec.hidden_size // dec.num_attention_heads),
        hidden_size=int(dec.hidden_size),
        text_hidden_size=int(model.text_encoder.config.d_model),
        max_positions=int(dec.max_position_embeddings),
        kv_dtype="float16" if recipe.quant == "fp16" else "float32",
        static_cache_length=mg.static_cache_length if static else None,
        max_text_tokens=mg.max_text_tokens,
        codec_hop=int(audio.hop_length),
        defaults=defaults,
    )


def _kv(prefix: str, layers: int, suffix: str = "") -> list[str]:
    from metabgm_edge.audio.musicgen.model import kv_names

    return kv_names(prefix, layers, suffix)


@dataclass
class _Plan:
    name: str
    module: Any
    args: tuple
    inputs: list[str]
    outputs: list[str]
    axes: dict[str, dict[int, str]]


def export_graphs(
    model: Any, folder: Path, recipe: Recipe, *, static: bool, progress: Progress
) -> dict[str, tuple[Path, list[str], list[str]]]:
    """The graphs as exported (fp32), with their input and output names."""
    import torch

    from metabgm_edge.export import musicgen_graphs as g

    dec = model.decoder.config
    layers, heads = dec.num_hidden_layers, dec.num_attention_heads
    head_dim = dec.hidden_size // heads
    hop = model.audio_encoder.config.hop_length
    per_channel = dec.num_codebooks // dec.audio_channels
    b, t, p, frames = 2, 5, 3, 8
    cross, past, present = _kv("cross", layers), _kv("past", layers), _kv("present", layers)
    cache, cache_out = _kv("cache", layers), _kv("cache", layers, "_out")
    ids = torch.full((b * dec.num_codebooks, 2), 3, dtype=torch.int64)
    mask = torch.ones(b, t, dtype=torch.int64)
    tokens = torch.ones(1, t, dtype=torch.int64)
    cross_values = [torch.randn(b, heads, t, head_dim) for _ in cross]
    text = {0: "batch", 1: "tokens"}
    per_layer_cross = {n: {0: "batch", 2: "tokens"} for n in cross}

    plans = [
        _Plan("text_encoder", g.TextEncoder(model), (tokens, tokens), ["input_ids", "attention_mask"],
              ["last_hidden_state"], {"input_ids": text, "attention_mask": text, "last_hidden_state": text}),
        _Plan("cross_kv", g.CrossKV(model), (torch.randn(b, t, model.text_encoder.config.d_model), mask),
              ["encoder_hidden_states", "encoder_attention_mask"], cross,
              {"encoder_hidden_states": text, "encoder_attention_mask": text, **per_layer_cross}),
        _Plan("decoder", g.Decoder(model),
              (ids, mask, *[torch.randn(b, heads, p, head_dim) for _ in past], *cross_values),
              ["input_ids", "encoder_attention_mask", *past, *cross], ["logits", *present],
              {"input_ids": {0: "rows", 1: "new"}, "encoder_attention_mask": text, "logits": {0: "batch"},
               **{n: {0: "batch", 2: "past"} for n in past}, **per_layer_cross,
               **{n: {0: "batch", 2: "total"} for n in present}}),
    ]  # fmt: skip
    if static:  # every shape fixed: guidance batch 2, one column, the padded description
        length, tmax = recipe.musicgen.static_cache_length, recipe.musicgen.max_text_tokens
        args = (
            torch.full((b * dec.num_codebooks, 1), 3, dtype=torch.int64),
            torch.tensor([p], dtype=torch.int64),
            torch.ones(b, tmax, dtype=torch.int64),
            *[torch.randn(b, heads, length, head_dim) for _ in cache],
            *[torch.randn(b, heads, tmax, head_dim) for _ in cross],
        )
        names = ["input_ids", "position", "encoder_attention_mask", *cache, *cross]
        plans.append(_Plan("decoder_static", g.StaticDecoder(model), args, names, ["logits", *cache_out], {}))
    codes = torch.randint(0, dec.vocab_size, (1, per_channel, frames))
    plans += [
        _Plan("codec_decode", g.CodecDecode(model), (codes,),
              ["audio_codes"], ["audio_values"],
              {"audio_codes": {0: "batch", 2: "frames"}, "audio_values": {0: "batch", 2: "samples"}}),
        _Plan("codec_encode", g.CodecEncode(model), (torch.randn(1, 1, frames * hop) * 0.1,),
              ["input_values"], ["audio_codes"],
              {"input_values": {0: "batch", 2: "samples"}, "audio_codes": {0: "batch", 2: "frames"}}),
    ]  # fmt: skip
    done: dict[str, tuple[Path, list[str], list[str]]] = {}
    for plan in plans:
        t0 = time.perf_counter()
        path = folder / plan.name / f"{plan.name}.onnx"
        path.parent.mkdir()
        with torch.no_grad():
            torch.onnx.export(
                plan.module.eval(),
                plan.args,
                str(path),
                input_names=plan.inputs,
                output_names=plan.outputs,
                dynamic_axes=plan.axes,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        done[plan.name] = (path, plan.inputs, plan.outputs)
        took = time.perf_counter() - t0
        progress(f"      {plan.name}: {len(plan.inputs)} inputs, {len(plan.outputs)} outputs ({took:.1f} s)")
    return done


def finish_graphs(
    graphs: dict[str, tuple[Path, list[str], list[str]]], stage: Path, recipe: Recipe
) -> dict[str, bundle.Graph]:
    """Quantize what the target wants, save each graph with its weights in one data file."""
    import onnx

    from metabgm_edge.export import graph as graph_tools
    from metabgm_edge.export.quantize import quantize_musicgen

    specs: dict[str, bundle.Graph] = {}
    for name, (path, inputs, outputs) in graphs.items():
        model = onnx.load(str(path))
        if name in ("decoder", "decoder_static", "cross_kv"):
            model = quantize_musicgen(model, recipe.quant, recipe.target, recipe.block_size, part=name)
        file = f"{name}.onnx"
        graph_tools.save(model, str(stage / file), f"{name}.onnx.data" if name != "decoder" else DATA_FILE)
        specs[name] = bundle.Graph(file=file, inputs=inputs, outputs=outputs, opset=graph_tools.opset(model))
    return specs


def compile_decoder_engine(
    stage: Path, spec: bundle.Graph, section: bundle.MusicGenSection, recipe: Recipe
) -> bundle.Engine:
    """The fixed-cache decoder as a TensorRT engine. Its shapes are all fixed (guidance batch 2, one
    column per step, the description padded to ``max_text_tokens``): one profile, min = opt = max."""
    from metabgm_edge.export.tensorrt import compile_engine

    length = section.static_cache_length or recipe.musicgen.static_cache_length
    heads, head_dim, tmax = section.num_heads, section.head_dim, section.max_text_tokens
    shapes: dict[str, list[int]] = {}
    for name in spec.inputs:
        if name == "input_ids":
            shapes[name] = [2 * section.num_codebooks, 1]
        elif name == "position":
            shapes[name] = [1]
        elif name == "encoder_attention_mask":
            shapes[name] = [2, tmax]
        elif name.startswith("cache_"):
            shapes[name] = [2, heads, length, head_dim]
        elif name.startswith("cross_"):
            shapes[name] = [2, heads, tmax, head_dim]
    profile = bundle.ShapeProfile(min=shapes, opt=shapes, max=shapes)
    return compile_engine(stage, "decoder_static", spec, recipe.tensorrt, "fp16", profile)


def smoke_test(stage: Path, target: str, progress: Progress) -> None:
    """Open the bundle as ``play`` would and render half a second."""
    from metabgm_edge.audio import AudioRequest, render
    from metabgm_edge.audio.musicgen import MusicGen

    try:
        backend = MusicGen.load(stage)
        t0 = time.perf_counter()
        audio, _ = render(backend, AudioRequest(description="calm piano", seconds=0.5, seed=0))
    except Exception as exc:  # onnxruntime's errors share no base class
        if target == "cpu":
            raise
        progress(f"      not checked: no provider on this machine runs this {target} bundle ({exc})")
        return
    took = time.perf_counter() - t0
    progress(
        f"      on {backend.model.provider}: {audio.shape[0] / SAMPLE_RATE:.2f} s of audio in {took:.2f} s "
        f"({backend.last.ms_per_step:.1f} ms per step)"
    )
