"""Compiling a bundle's graphs into TensorRT engines through onnxruntime's TensorRT provider.

Each engine is written as an EPContext model (``trt_dump_ep_context_model``): a small ONNX file
whose node points at the serialized engine beside it. onnxruntime loads it like any model and
skips the build. An engine is built for one fixed shape profile (for the LLM decoder: batch 1,
prompt and total lengths from the recipe; for MusicGen: the guidance batch and the segment
length), with a timing cache reused across exports on the same GPU.

Nothing here is simulated: :func:`require_tensorrt` fails at once, before any model is loaded,
when this machine lacks onnxruntime's TensorRT provider, a CUDA GPU or the TensorRT libraries.
"""

from __future__ import annotations

import logging
from pathlib import Path

from metabgm_edge.bundle import Engine, Graph, KVCache, ShapeProfile
from metabgm_edge.export.recipe import RecipeError, TensorRTOptions
from metabgm_edge.ort import device

log = logging.getLogger(__name__)


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


def shape_profile(graph: Graph, cache: KVCache, options: TensorRTOptions) -> ShapeProfile:
    """The LLM decoder's one profile (batch 1): a prompt of 1..max_prompt tokens, a past of
    0..max_total-1 tokens. Every corner is a shape the graph can really take: the attention mask
    covers past + input (min 0 + 1, opt (T-P) + P = T, max (T-1) + P), so TensorRT can build it."""
    kv = [cache.num_kv_heads, cache.head_dim]
    p_opt, p_max = options.opt_prompt_tokens, options.max_prompt_tokens
    t_opt, t_max = options.opt_total_tokens, options.max_total_tokens
    past = {"min": 0, "opt": t_opt - p_opt, "max": t_max - 1}
    new = {"min": 1, "opt": p_opt, "max": p_max}
    shapes: dict[str, dict[str, list[int]]] = {"min": {}, "opt": {}, "max": {}}
    for corner, table in shapes.items():
        for name in graph.inputs:
            if name in ("input_ids", "position_ids"):
                table[name] = [1, new[corner]]
            elif name == "attention_mask":
                table[name] = [1, past[corner] + new[corner]]
            elif name.startswith("past_key_values"):
                table[name] = [1, kv[0], past[corner], kv[1]]
    return ShapeProfile(min=shapes["min"], opt=shapes["opt"], max=shapes["max"])


def _shapes(shapes: dict[str, list[int]]) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def compile_engine(
    folder: Path,
    graph_name: str,
    graph: Graph,
    cache: KVCache | None,
    options: TensorRTOptions,
    precision: str,
    profile: ShapeProfile | None = None,
) -> Engine:
    """Build the engine for ``folder/graph.file``; writes ``<graph>_ctx.onnx`` and the engine beside it.

    ``profile`` is the graph's fixed shape profile; for the LLM decoder it is derived from the
    recipe's ``[tensorrt]`` table. The engine cache path is left to onnxruntime, which puts the
    engine beside the context model and names it relatively, so the bundle can be moved.
    """
    import onnxruntime as ort

    from metabgm_edge.ort.session import create_session, trt_options

    version, gpu = require_tensorrt()
    if profile is None:
        if cache is None:
            raise RecipeError(f"no shape profile for graph {graph_name}")
        profile = shape_profile(graph, cache, options)
    timing_cache = Path(options.timing_cache).expanduser()
    timing_cache.mkdir(parents=True, exist_ok=True)
    context_file = f"{Path(graph.file).stem}_ctx.onnx"
    provider_options = trt_options(
        device_id=gpu.index,
        trt_fp16_enable=True,
        trt_engine_cache_enable=True,
        trt_timing_cache_enable=True,
        trt_timing_cache_path=str(timing_cache),
        trt_dump_ep_context_model=True,
        trt_ep_context_file_path=str(folder / context_file),
        trt_ep_context_embed_mode=0,
        trt_builder_optimization_level=options.builder_optimization_level,
        trt_max_workspace_size=int(options.workspace_gb * (1 << 30)),
        trt_profile_min_shapes=_shapes(profile.min),
        trt_profile_opt_shapes=_shapes(profile.opt),
        trt_profile_max_shapes=_shapes(profile.max),
    )
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 2
    try:
        session = create_session(
            folder / graph.file,
            session_options,
            [("TensorrtExecutionProvider", provider_options), "CUDAExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises several unrelated classes here
        raise RecipeError(f"TensorRT could not build the engine for {graph_name}: {exc}") from None
    if session.get_providers()[0] != "TensorrtExecutionProvider":
        raise RecipeError(
            f"onnxruntime did not use TensorRT (it ran {session.get_providers()}): check that "
            "libnvinfer.so.10 and the CUDA libraries load (onnxruntime logs the reason above)"
        )
    del session
    if not (folder / context_file).is_file():
        raise RecipeError(f"TensorRT built no EPContext model at {folder / context_file}")
    relocate_engines(folder / context_file)
    return Engine(
        graph=graph_name,
        model_file=context_file,
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
