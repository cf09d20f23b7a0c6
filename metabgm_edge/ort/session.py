"""Opening one graph of a bundle on the best ONNX Runtime provider this machine really has.

Every model kind (the LLM decoder, MusicGen's text encoder, decoder and codec) opens its graphs
here, so provider choice, session options and engine matching are decided once.

Order, best first: TensorRT (only for a graph with a compiled engine, and only on an exact match
of GPU architecture, TensorRT version and onnxruntime version), then CUDA, then CPU. A provider
onnxruntime merely was built with is not trusted. Sessions are created with onnxruntime's
automatic fallback turned off (``enable_fallback=0``: otherwise a failing provider prints "EP
Error" to stdout and the session is silently rebuilt on CUDA + CPU without its options), and
``session.get_providers()`` decides what the session really runs on. Every provider skipped is
logged with its reason, and the reasons travel with the result.

onnxruntime's Python layer takes the TensorRT provider's on/off options only as ``"True"`` or
``"False"``; :func:`trt_options` writes them that way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import onnxruntime as ort

from metabgm_edge.bundle import Engine, Manifest, Target
from metabgm_edge.errors import BundleError
from metabgm_edge.ort import device, gpulibs

log = logging.getLogger(__name__)

ORT_NAMES: Final = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PROVIDERS: Final = tuple(ORT_NAMES)
GPU_PROVIDERS: Final = frozenset({ORT_NAMES["cuda"], ORT_NAMES["tensorrt"]})

_warned: set[tuple[str, str]] = set()

_CHAIN: Final[dict[str, tuple[str, ...]]] = {
    "tensorrt": ("tensorrt", "cuda", "cpu"),
    "cuda": ("cuda", "cpu"),
    "cpu": ("cpu",),
}


@dataclass
class OpenedSession:
    session: ort.InferenceSession
    provider: str
    """``tensorrt``, ``cuda`` or ``cpu``: what the session really runs on."""
    model_file: Path
    skipped: list[str] = field(default_factory=list)
    """Why each better provider was not used."""

    @property
    def device(self) -> str:
        """Where tensors bound for this session live: ``cuda`` for GPU providers, else ``cpu``."""
        return "cpu" if self.provider == "cpu" else "cuda"

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]


def has_gpu_provider() -> bool:
    """Whether this onnxruntime was built with a GPU provider (not whether a GPU is there)."""
    return bool(GPU_PROVIDERS & set(ort.get_available_providers()))


def chain_for(target: Target | str, requested: Sequence[str] | None = None) -> list[str]:
    """The providers to try, best first. ``requested`` narrows the bundle's own chain."""
    chain = list(_CHAIN[target])
    if requested:
        unknown = [p for p in requested if p not in ORT_NAMES]
        if unknown:
            raise ValueError(f"unknown provider(s) {unknown}: use {', '.join(PROVIDERS)}")
        chain = [p for p in requested if p in ORT_NAMES]
    return chain


def engine_mismatch(engine: Engine) -> str | None:
    """Why this machine cannot run ``engine``, or None on an exact match."""
    here_gpu = device.gpu()
    if here_gpu is None:
        return "no CUDA GPU on this machine"
    problems = []
    if here_gpu.arch != engine.gpu_arch:
        problems.append(f"GPU {here_gpu.name} is {here_gpu.arch}, the engine was built for {engine.gpu_arch}")
    trt = device.tensorrt_version()
    if trt != engine.tensorrt_version:
        problems.append(f"TensorRT here is {trt or 'missing'}, the engine needs {engine.tensorrt_version}")
    if ort.__version__ != engine.onnxruntime_version:
        problems.append(
            f"onnxruntime here is {ort.__version__}, the engine was built with {engine.onnxruntime_version}"
        )
    return "; ".join(problems) or None


def session_options(threads: int | None = None, *, log_level: int = 3) -> ort.SessionOptions:
    """All graph optimizations, quiet logs, and ``threads`` intra-op threads (None: onnxruntime's)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = log_level
    if threads:
        options.intra_op_num_threads = threads
    return options


def trt_options(**options: Any) -> dict[str, str]:
    """TensorRT provider options as onnxruntime's Python layer takes them (booleans as True/False)."""
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        out[key] = ("True" if value else "False") if isinstance(value, bool) else str(value)
    return out


def provider_list(name: str, extra: Mapping[str, Mapping[str, Any]] | None = None) -> list[Any]:
    """The providers handed to onnxruntime for ``name`` (with CPU last for nodes it cannot take)."""
    extra = extra or {}
    chain: list[str]
    if name == "tensorrt":
        chain = ["tensorrt", "cuda", "cpu"]
    elif name == "cuda":
        chain = ["cuda", "cpu"]
    else:
        chain = ["cpu"]
    out: list[Any] = []
    for p in chain:
        opts = dict(extra.get(p, {}))
        if p == "tensorrt":
            opts = {**trt_options(trt_fp16_enable=True), **{k: str(v) for k, v in opts.items()}}
        out.append((ORT_NAMES[p], opts) if opts else ORT_NAMES[p])
    return out


def _why_not(name: str, engine: Engine | None, available: list[str]) -> str | None:
    if ORT_NAMES[name] not in available:
        extra = "metabgm-edge[gpu] (onnxruntime-gpu)" if name != "cpu" else "onnxruntime"
        return f"this onnxruntime {ort.__version__} has no {ORT_NAMES[name]} (install {extra})"
    if name != "cpu":  # the NVIDIA libraries the provider loads, named with how to get each
        missing = gpulibs.prepare().reason(name)
        if missing:
            return missing
    if name == "tensorrt":
        if engine is None:
            return "the bundle has no TensorRT engine for this graph"
        return engine_mismatch(engine)
    if name == "cuda" and device.gpu() is None:
        return "no CUDA GPU on this machine"
    return None


def create_session(
    model_file: Path | str,
    options: ort.SessionOptions,
    providers: list[Any],
) -> ort.InferenceSession:
    """An InferenceSession with onnxruntime's silent provider fallback turned off."""
    return ort.InferenceSession(str(model_file), options, providers=providers, enable_fallback=0)


def open_graph(
    folder: Path,
    manifest: Manifest,
    graph: str,
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> OpenedSession:
    """Open graph ``graph`` of the bundle at ``folder`` on the first provider that really runs it.

    The graph's inputs and outputs are checked against the manifest: a mismatched bundle is
    refused naming the file.
    """
    folder = Path(folder)
    spec = manifest.graphs.get(graph)
    if spec is None:
        raise BundleError(f"{folder / 'manifest.json'} has no graph {graph!r}; re-export the bundle")
    engine = manifest.engine_for(graph)
    available = ort.get_available_providers()
    skipped: list[str] = []
    for name in chain_for(manifest.target, providers):
        reason = _why_not(name, engine, available)
        if reason is None:
            model_file = folder / (engine.model_file if name == "tensorrt" and engine else spec.file)
            try:
                session = create_session(
                    model_file, session_options(threads), provider_list(name, provider_options)
                )
            except Exception as exc:  # onnxruntime raises several unrelated classes here
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                if name == "cpu":
                    raise BundleError(f"{model_file} cannot be loaded by onnxruntime: {first}") from None
                reason = f"creating the session failed: {first}"
            else:
                got = session.get_providers()
                if got and got[0] == ORT_NAMES[name]:
                    opened = OpenedSession(session, name, model_file, skipped)
                    _check_io(opened, spec.inputs, spec.outputs)
                    for line in skipped:  # once per bundle and reason, not once per graph
                        if (str(folder), line) not in _warned:
                            _warned.add((str(folder), line))
                            log.warning("%s: %s", folder.name, line)
                    log.info("%s/%s runs on %s (%s)", folder.name, graph, name, ", ".join(got))
                    return opened
                reason = f"onnxruntime used {got} instead (libraries or device missing)"
        skipped.append(f"not using {name}: {reason}")
        if name != "cpu":
            log.debug("%s/%s: not using %s: %s", folder.name, graph, name, reason)
    raise BundleError(f"no provider can run {graph} of bundle {folder}: " + "; ".join(skipped))


def _check_io(opened: OpenedSession, inputs: list[str], outputs: list[str]) -> None:
    have_in, have_out = opened.input_names, opened.output_names
    if sorted(have_in) != sorted(inputs) or sorted(have_out) != sorted(outputs):
        missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
        extra = [n for n in have_in if n not in inputs] + [n for n in have_out if n not in outputs]
        raise BundleError(
            f"{opened.model_file} does not have the inputs and outputs its manifest lists (missing "
            f"{missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}): the bundle is "
            "mismatched; re-export it"
        )
