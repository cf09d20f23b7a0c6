"""Compiling a bundle's graphs into engines through one of onnxruntime's two TensorRT providers.

Each engine is written as an EPContext model: a small ONNX file whose node points at the
serialized engine beside it; onnxruntime loads it like any model and skips the build.

* **TensorRT-RTX** (the plugin ``onnxruntime-ep-nv-tensorrt-rtx-*``, used where installed): compiled
  with onnxruntime's ``ModelCompiler`` into ``<graph>_rtx_ctx.onnx``; such engines run on any RTX
  card with the same EP and onnxruntime versions (TensorRT-RTX specializes them at load, caching
  the result in its runtime cache). Without an engine the runtime compiles the graph at load.
* **TensorRT** (``onnxruntime-gpu``'s ``TensorrtExecutionProvider`` and the TensorRT 10 libraries):
  built while dumping the EPContext model (``trt_dump_ep_context_model``) into ``<graph>_ctx.onnx``,
  for one fixed shape profile, with a timing cache reused across exports on the same GPU; used only
  on the exact GPU architecture, TensorRT and onnxruntime versions. Nodes TensorRT cannot take
  (GroupQueryAttention, MatMulNBits) stay in the EPContext model and run on CUDA.

Nothing here is simulated: :func:`require_tensorrt` fails at once, before any model is loaded,
when this machine has neither provider usable (or no GPU, or no TensorRT libraries).
"""

from __future__ import annotations

import logging
from pathlib import Path

from metabgm_edge.bundle import Engine, Graph, ShapeProfile
from metabgm_edge.export.recipe import RecipeError, TensorRTOptions
from metabgm_edge.ort import device

log = logging.getLogger(__name__)


def require_tensorrt() -> str:
    """``tensorrt_rtx`` or ``tensorrt``: the provider this machine compiles engines with, or a
    RecipeError that says what is missing."""
    import onnxruntime as ort

    from metabgm_edge.ort.session import RTX_INSTALL, rtx_installed, rtx_plugin

    if rtx_installed():
        plugin = rtx_plugin()
        if not isinstance(plugin, str):
            return "tensorrt_rtx"
        rtx_reason = plugin
    else:
        rtx_reason = f"no TensorRT-RTX EP ({RTX_INSTALL})"
    available = ort.get_available_providers()
    if "TensorrtExecutionProvider" not in available:
        raise RecipeError(
            f"--target tensorrt needs onnxruntime-gpu with its TensorRT provider or the TensorRT-RTX EP; "
            f"{rtx_reason}, and this onnxruntime {ort.__version__} offers only {', '.join(available)}. On a "
            "machine with an NVIDIA GPU: pip install 'metabgm-edge[rtx]' (RTX cards) or 'metabgm-edge[gpu]' "
            "(onnxruntime-gpu and TensorRT 10), or export --target cuda or --target cpu instead"
        )
    if device.gpu() is None:
        raise RecipeError(
            "--target tensorrt needs a CUDA GPU and its driver (libcuda.so.1); none was found. "
            "Build the engine on the machine that will run it, or export --target cpu"
        )
    if device.tensorrt_version() is None:
        raise RecipeError(
            "--target tensorrt needs the TensorRT 10 libraries (libnvinfer.so.10); none was found. "
            "pip install 'metabgm-edge[gpu]' (tensorrt-cu12-libs 10.x, matching onnxruntime-gpu) or add "
            "TensorRT's lib folder to LD_LIBRARY_PATH"
        )
    return "tensorrt"


def compile_engine(
    folder: Path,
    graph_name: str,
    graph: Graph,
    options: TensorRTOptions,
    precision: str,
    profile: ShapeProfile,
) -> Engine:
    """Build the engine for ``folder/graph.file`` with this machine's TensorRT provider; writes the
    EPContext model and the engine beside the graph. ``profile``'s corners are real shapes."""
    provider = require_tensorrt()
    if provider == "tensorrt_rtx":
        return _compile_rtx(folder, graph_name, graph, precision, profile)
    return _compile_trt(folder, graph_name, graph, options, precision, profile)


def _compile_rtx(
    folder: Path, graph_name: str, graph: Graph, precision: str, profile: ShapeProfile
) -> Engine:
    import onnxruntime as ort

    from metabgm_edge.ort.session import (
        profile_options,
        rtx_cache_dir,
        rtx_options,
        rtx_plugin,
        session_options,
    )

    plugin = rtx_plugin()
    assert not isinstance(plugin, str)  # require_tensorrt checked it
    if not hasattr(ort, "ModelCompiler"):
        raise RecipeError(f"onnxruntime {ort.__version__} has no ModelCompiler (1.23 or newer is needed)")
    context_file = f"{Path(graph.file).stem}_rtx_ctx.onnx"
    cache = rtx_cache_dir(folder, graph_name)
    cache.mkdir(parents=True, exist_ok=True)
    so = session_options(log_level=2)
    so.add_provider_for_devices(
        list(plugin.devices),
        rtx_options(nv_runtime_cache_path=str(cache), **profile_options(profile, "tensorrt_rtx")),
    )
    try:
        compiler = ort.ModelCompiler(so, str(folder / graph.file), embed_compiled_data_into_model=False)
        compiler.compile_to_file(str(folder / context_file))
    except Exception as exc:  # onnxruntime raises several unrelated classes here
        raise RecipeError(f"TensorRT-RTX could not compile {graph_name}: {exc}") from None
    if not (folder / context_file).is_file():
        raise RecipeError(f"TensorRT-RTX wrote no EPContext model at {folder / context_file}")
    relocate_engines(folder / context_file)
    gpu = device.gpu()
    return Engine(
        graph=graph_name,
        provider="tensorrt_rtx",
        model_file=context_file,
        tensorrt_version=plugin.version,
        gpu_arch=gpu.arch if gpu else "",
        gpu_name=gpu.name if gpu else "",
        onnxruntime_version=ort.__version__,
        precision=precision,
        shape_profiles=[profile],
    )


def _compile_trt(
    folder: Path,
    graph_name: str,
    graph: Graph,
    options: TensorRTOptions,
    precision: str,
    profile: ShapeProfile,
) -> Engine:
    import onnxruntime as ort

    from metabgm_edge.ort.session import create_session, profile_options, trt_options

    gpu = device.gpu()
    version = device.tensorrt_version()
    assert gpu is not None and version is not None  # require_tensorrt checked them
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
        **profile_options(profile, "tensorrt"),
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

    onnxruntime names the engine relative to the context model's folder when no engine cache path
    is given; a path that is absolute or relative to the working directory (older versions) is
    moved into the bundle and renamed, so the bundle keeps working when its folder is copied.
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
