"""Compiling a bundle's decoder into a TensorRT engine through onnxruntime's TensorRT provider.

The engine is written as an EPContext model (``trt_dump_ep_context_model``): a small ONNX file whose
node points at the serialized engine beside it. onnxruntime loads it like any model and skips
the build. The engine is built for one fixed shape profile (batch 1, prompt and total lengths from
the recipe), with a timing cache reused across exports on the same GPU.

Nothing here is simulated: :func:`require_tensorrt` fails at once, before any model is loaded,
when this machine lacks onnxruntime's TensorRT provider, a CUDA GPU or the TensorRT libraries.
"""

from __future__ import annotations

import logging
from pathlib import Path

from metabgm_edge.bundle import Engine, ModelIO, ShapeProfile
from metabgm_edge.export.recipe import RecipeError, TensorRTOptions
from metabgm_edge.llm import device

log = logging.getLogger(__name__)

CONTEXT_MODEL = "model_ctx.onnx"


def require_tensorrt() -> tuple[str, device.Gpu]:
    """(TensorRT version, GPU) of this machine, or a RecipeError that says what is missing."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "TensorrtExecutionProvider" not in available:
        raise RecipeError(
            f"--target tensorrt needs onnxruntime-gpu with its TensorRT provider; this onnxruntime "
            f"{ort.__version__} offers only {', '.join(available)}. On a machine with an NVIDIA GPU: "
            "pip install 'metabgm-edge[gpu]' (onnxruntime-gpu and tensorrt 10), or export --target cuda "
            "or --target cpu instead"
        )
    gpu = device.gpu()
    if gpu is None:
        raise RecipeError(
            "--target tensorrt needs a CUDA GPU and its driver (libcuda.so.1); none was found. "
            "Build the engine on the machine that will run it, or export --target cpu"
        )
    version = device.tensorrt_version()
    if version is None:
        raise RecipeError(
            "--target tensorrt needs the TensorRT 10 libraries (libnvinfer.so.10); none was found. "
            "pip install tensorrt-cu12 (or tensorrt-cu13, matching onnxruntime-gpu) or add TensorRT's "
            "lib folder to LD_LIBRARY_PATH"
        )
    return version, gpu


def shape_profile(io: ModelIO, options: TensorRTOptions) -> ShapeProfile:
    """One profile: prompt of 1..max_prompt tokens, past of 0..max_total-1 tokens, batch 1."""
    kv = [io.num_kv_heads, io.head_dim]
    lo: dict[str, list[int]] = {}
    opt: dict[str, list[int]] = {}
    hi: dict[str, list[int]] = {}
    for name in io.inputs:
        if name in ("input_ids", "position_ids"):
            lo[name], opt[name], hi[name] = (
                [1, 1],
                [1, options.opt_prompt_tokens],
                [1, options.max_prompt_tokens],
            )
        elif name == "attention_mask":
            lo[name], opt[name], hi[name] = (
                [1, 1],
                [1, options.opt_total_tokens],
                [1, options.max_total_tokens],
            )
        elif name.startswith("past_key_values"):
            lo[name] = [1, kv[0], 0, kv[1]]
            opt[name] = [1, kv[0], options.opt_total_tokens - 1, kv[1]]
            hi[name] = [1, kv[0], options.max_total_tokens - 1, kv[1]]
    return ShapeProfile(min=lo, opt=opt, max=hi)


def _shapes(shapes: dict[str, list[int]]) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def compile_engine(
    folder: Path, model_file: str, io: ModelIO, options: TensorRTOptions, precision: str
) -> Engine:
    """Build the engine for ``folder/model_file``; writes ``model_ctx.onnx`` and the engine beside it."""
    import onnxruntime as ort

    version, gpu = require_tensorrt()
    profile = shape_profile(io, options)
    timing_cache = Path(options.timing_cache).expanduser()
    timing_cache.mkdir(parents=True, exist_ok=True)
    provider_options = {
        "device_id": str(gpu.index),
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(timing_cache),
        "trt_dump_ep_context_model": "1",
        "trt_ep_context_file_path": str(folder / CONTEXT_MODEL),
        "trt_ep_context_embed_mode": "0",
        "trt_builder_optimization_level": str(options.builder_optimization_level),
        "trt_max_workspace_size": str(int(options.workspace_gb * (1 << 30))),
        "trt_profile_min_shapes": _shapes(profile.min),
        "trt_profile_opt_shapes": _shapes(profile.opt),
        "trt_profile_max_shapes": _shapes(profile.max),
    }
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 2
    session = ort.InferenceSession(
        str(folder / model_file),
        session_options,
        providers=[("TensorrtExecutionProvider", provider_options), "CUDAExecutionProvider"],
    )
    if session.get_providers()[0] != "TensorrtExecutionProvider":
        raise RecipeError(
            f"onnxruntime did not use TensorRT (it ran {session.get_providers()}): check that "
            "libnvinfer.so.10 and the CUDA libraries load (onnxruntime logs the reason above)"
        )
    del session
    if not (folder / CONTEXT_MODEL).is_file():
        raise RecipeError(f"TensorRT built no EPContext model at {folder / CONTEXT_MODEL}")
    relocate_engines(folder / CONTEXT_MODEL)
    return Engine(
        model_file=CONTEXT_MODEL,
        tensorrt_version=version,
        gpu_arch=gpu.arch,
        gpu_name=gpu.name,
        onnxruntime_version=ort.__version__,
        precision=precision,
        shape_profiles=[profile],
    )


def relocate_engines(context_model: Path) -> list[str]:
    """Make every engine an EPContext node points at a file inside the bundle, named relatively.

    Depending on the onnxruntime version the node may hold an absolute or working-directory
    path; a bundle must keep working when its folder is copied elsewhere.
    """
    import shutil

    import onnx
    from onnx import helper

    folder = context_model.parent
    model = onnx.load(str(context_model), load_external_data=False)
    engines = []
    changed = False
    for node in model.graph.node:
        if node.op_type != "EPContext":
            continue
        attrs = {a.name: a for a in node.attribute}
        if "embed_mode" in attrs and helper.get_attribute_value(attrs["embed_mode"]) != 0:
            continue
        raw = helper.get_attribute_value(attrs["ep_cache_context"])
        ref = Path(raw.decode() if isinstance(raw, bytes) else raw)
        candidates = [folder / ref, ref, Path.cwd() / ref]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise RecipeError(f"the EPContext model names an engine {ref} that does not exist")
        if folder.resolve() not in found.resolve().parents:
            target = folder / found.name
            shutil.move(str(found), target)
            found = target
        rel = found.resolve().relative_to(folder.resolve()).as_posix()
        engines.append(rel)
        if rel != str(ref):
            attrs["ep_cache_context"].s = rel.encode()
            changed = True
    if changed:
        onnx.save(model, str(context_model))
    return engines
