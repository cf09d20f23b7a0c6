"""Opening a bundle's ONNX Runtime session on the best provider this machine really has.

Order: TensorRT (only for a bundle with an engine, and only on an exact match of GPU architecture,
TensorRT version and onnxruntime version), then CUDA, then CPU. A provider onnxruntime merely was
built with is not trusted: the session is created and ``session.get_providers()`` decides, because
onnxruntime silently drops a provider whose libraries or device are missing. Every provider
skipped is logged with its reason, and the reasons travel with the result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import onnxruntime as ort

from metabgm_edge.bundle import Engine, Manifest
from metabgm_edge.errors import BundleError
from metabgm_edge.llm import device

log = logging.getLogger(__name__)

ORT_NAMES: Final = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PROVIDERS: Final = tuple(ORT_NAMES)

_CHAIN: Final = {"tensorrt": ("tensorrt", "cuda", "cpu"), "cuda": ("cuda", "cpu"), "cpu": ("cpu",)}


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
        """Where the KV cache lives: ``cuda`` for GPU providers, else ``cpu``."""
        return "cpu" if self.provider == "cpu" else "cuda"


def chain_for(manifest: Manifest, requested: Sequence[str] | None = None) -> list[str]:
    """The providers to try, best first. ``requested`` narrows the bundle's own chain."""
    chain = list(_CHAIN[manifest.target])
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


def _session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options


def _provider_list(name: str) -> list[Any]:
    if name == "tensorrt":
        # The EPContext node carries the engine; TensorRT nodes it could not take run on CUDA.
        return [(ORT_NAMES["tensorrt"], {"trt_fp16_enable": "1"}), ORT_NAMES["cuda"], ORT_NAMES["cpu"]]
    if name == "cuda":
        return [ORT_NAMES["cuda"], ORT_NAMES["cpu"]]
    return [ORT_NAMES["cpu"]]


def _why_not(name: str, manifest: Manifest, available: list[str]) -> str | None:
    if ORT_NAMES[name] not in available:
        extra = "metabgm-edge[gpu] (onnxruntime-gpu)" if name != "cpu" else "onnxruntime"
        return f"this onnxruntime {ort.__version__} has no {ORT_NAMES[name]} (install {extra})"
    if name == "tensorrt":
        if manifest.engine is None:
            return "the bundle has no TensorRT engine"
        return engine_mismatch(manifest.engine)
    if name == "cuda" and device.gpu() is None:
        return "no CUDA GPU on this machine"
    return None


def open_session(
    folder: Path,
    manifest: Manifest,
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
) -> OpenedSession:
    """The first provider in the chain that really runs the bundle here."""
    available = ort.get_available_providers()
    skipped: list[str] = []
    for name in chain_for(manifest, providers):
        reason = _why_not(name, manifest, available)
        if reason is None:
            model_file = folder / (
                manifest.engine.model_file if name == "tensorrt" and manifest.engine else manifest.model_file
            )
            try:
                session = ort.InferenceSession(
                    str(model_file), _session_options(threads), providers=_provider_list(name)
                )
            except Exception as exc:  # onnxruntime raises several unrelated classes here
                reason = f"creating the session failed: {str(exc).strip().splitlines()[0][:300]}"
            else:
                got = session.get_providers()
                if got and got[0] == ORT_NAMES[name]:
                    for line in skipped:
                        log.warning("%s: %s", folder.name, line)
                    log.info("%s runs on %s (%s)", folder.name, name, ", ".join(got))
                    return OpenedSession(session, name, model_file, skipped)
                reason = f"onnxruntime fell back to {got} (libraries or device missing)"
        skipped.append(f"not using {name}: {reason}")
        if name != "cpu":
            log.info("%s: not using %s: %s", folder.name, name, reason)
    raise BundleError(f"no provider can run bundle {folder}: " + "; ".join(skipped))
