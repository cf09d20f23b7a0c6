"""Opening one graph of a bundle on the best ONNX Runtime provider this machine really has.

Every model kind (the LLM decoder, MusicGen's text encoder, decoder and codec) opens its graphs
here, so provider choice, session options and engine matching are decided once.

Order, best first, for a ``tensorrt`` bundle: TensorRT-RTX (the plugin execution provider
``onnxruntime-ep-nv-tensorrt-rtx-*``, where installed: it compiles the graph on the player's RTX
card in seconds, or loads the bundle's TensorRT-RTX engine), then TensorRT (only for a graph with
a compiled engine, and only on an exact match of GPU architecture, TensorRT version and
onnxruntime version), then CUDA, then CPU. A ``cuda`` bundle tries CUDA, then CPU. A session
holds at most one of the two TensorRT providers. A provider onnxruntime merely was built with is
not trusted: sessions are created with onnxruntime's automatic fallback turned off
(``enable_fallback=0``: otherwise a failing provider prints "EP Error" to stdout and the session
is silently rebuilt on CUDA + CPU without its options), and ``session.get_providers()`` decides
what the session really runs on. Every provider skipped is logged with its reason, and the
reasons travel with the result.

Option spellings differ per provider and are written here: onnxruntime's Python layer takes the
TensorRT provider's on/off options only as ``"True"`` / ``"False"`` (:func:`trt_options`), and
its shape profiles as ``name:1x2,name2:1x3``; TensorRT-RTX takes ``"1"`` / ``"0"``
(:func:`rtx_options`) and ``name:1x2;name2:1x3``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from metabgm_edge.bundle import Engine, Manifest, ShapeProfile, Target
from metabgm_edge.errors import NO_ONNXRUNTIME, BundleError

try:
    import onnxruntime as ort
except ImportError as exc:  # the runtime extra is missing; the embedded defaults still work
    raise ImportError(NO_ONNXRUNTIME) from exc

from metabgm_edge.ort import device, gpulibs

log = logging.getLogger(__name__)

ORT_NAMES: Final = {
    "tensorrt_rtx": "NvTensorRTRTXExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PROVIDERS: Final = tuple(ORT_NAMES)
GPU_PROVIDERS: Final = frozenset({ORT_NAMES["cuda"], ORT_NAMES["tensorrt"]})

_warned: set[tuple[str, str]] = set()

_CHAIN: Final[dict[str, tuple[str, ...]]] = {
    "tensorrt": ("tensorrt_rtx", "tensorrt", "cuda", "cpu"),
    "cuda": ("cuda", "cpu"),
    "cpu": ("cpu",),
}

RTX_PACKAGE: Final = "onnxruntime_ep_nv_tensorrt_rtx"
RTX_INSTALL: Final = "pip install 'metabgm-edge[rtx]' (onnxruntime-ep-nv-tensorrt-rtx-cu13)"
ORT_DISTRIBUTIONS: Final = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


@dataclass
class OpenedSession:
    session: ort.InferenceSession
    provider: str
    """``tensorrt_rtx``, ``tensorrt``, ``cuda`` or ``cpu``: what the session really runs on."""
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


# -- packaging ------------------------------------------------------------------------------------


def onnxruntime_distributions() -> list[str]:
    """The onnxruntime packages installed in this environment (they all write one ``onnxruntime``
    folder, so with two of them the one installed last silently wins)."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def packaging_problem() -> str | None:
    """A sentence when this environment has more than one onnxruntime package, else None."""
    found = onnxruntime_distributions()
    if len(found) < 2:
        return None
    return (
        f"{' and '.join(found)} are installed together: they share one folder, the last one installed "
        "wins and a GPU provider can be hidden; keep one: pip uninstall -y "
        + " ".join(f.split()[0] for f in found)
        + " && pip install 'metabgm-edge[gpu]' (or [cpu])"
    )


@functools.cache
def _warn_packaging_once() -> None:
    problem = packaging_problem()
    if problem:
        log.warning("%s", problem)


def has_gpu_provider() -> bool:
    """Whether this onnxruntime has a GPU provider (built in, or the TensorRT-RTX plugin installed);
    not whether a GPU is there."""
    return bool(GPU_PROVIDERS & set(ort.get_available_providers())) or rtx_installed()


# -- TensorRT-RTX (a plugin execution provider) ---------------------------------------------------


def rtx_installed() -> bool:
    return importlib.util.find_spec(RTX_PACKAGE) is not None


@dataclass(frozen=True)
class RtxPlugin:
    registration: str
    """The name the library was registered under (the package's ``get_ep_name()``)."""
    version: str
    devices: tuple[Any, ...]
    """The ``OrtEpDevice`` objects of this EP (one per RTX GPU)."""
    ep_names: frozenset[str]
    """Names ``get_providers()`` may report for it."""


@functools.cache
def rtx_plugin() -> RtxPlugin | str:
    """Register the TensorRT-RTX EP library with onnxruntime once; the plugin, or why it cannot run."""
    if not rtx_installed():
        return f"the TensorRT-RTX EP is not installed ({RTX_INSTALL})"
    if not hasattr(ort, "register_execution_provider_library") or not hasattr(ort, "get_ep_devices"):
        return f"onnxruntime {ort.__version__} cannot load plugin execution providers (needs 1.23 or newer)"
    try:
        import onnxruntime_ep_nv_tensorrt_rtx as package

        registration = package.get_ep_name()
        library = package.get_library_path()
    except Exception as exc:  # a broken install: missing or unloadable libraries
        return f"the TensorRT-RTX EP package does not load: {exc}"
    try:
        ort.register_execution_provider_library(registration, library)
    except Exception as exc:  # already registered in this process, or the library does not load
        if not _rtx_devices(registration):
            if "libcuda.so" in str(exc) or "nvcuda.dll" in str(exc):  # the plugin brings all but the driver
                return (
                    "the TensorRT-RTX EP needs the NVIDIA driver (libcuda.so.1 / nvcuda.dll does not load): "
                    "install the NVIDIA driver for your RTX card"
                )
            return f"onnxruntime could not register the TensorRT-RTX EP ({library}): {exc}"
    devices = _rtx_devices(registration)
    if not devices:
        return "the TensorRT-RTX EP found no RTX GPU (it needs an NVIDIA RTX card and its driver)"
    names = frozenset({registration, ORT_NAMES["tensorrt_rtx"], *(d.ep_name for d in devices)})
    try:
        version = metadata.version("onnxruntime-ep-nv-tensorrt-rtx-cu13")
    except metadata.PackageNotFoundError:
        version = str(getattr(package, "__version__", "unknown"))
    return RtxPlugin(registration, version, tuple(devices), names)


def _rtx_devices(registration: str) -> list[Any]:
    wanted = {registration, ORT_NAMES["tensorrt_rtx"]}
    return [d for d in ort.get_ep_devices() if getattr(d, "ep_name", None) in wanted]


def rtx_cache_dir(folder: Path, graph: str) -> Path:
    """Where TensorRT-RTX keeps the kernels it compiled for this graph (its runtime cache): outside
    the bundle, which stays as exported and checksummed."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metabgm-edge" / "tensorrt-rtx"
    return root / f"{Path(folder).resolve().name}-{graph}"


# -- options --------------------------------------------------------------------------------------


def trt_options(**options: Any) -> dict[str, str]:
    """TensorRT provider options as onnxruntime's Python layer takes them (booleans as True/False)."""
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        out[key] = ("True" if value else "False") if isinstance(value, bool) else str(value)
    return out


def rtx_options(**options: Any) -> dict[str, str]:
    """TensorRT-RTX provider options as the EP parses them (booleans as 1/0)."""
    out = {}
    for key, value in options.items():
        if value is None:
            continue
        out[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out


def profile_shapes(shapes: Mapping[str, Sequence[int]], provider: str) -> str:
    """One corner of a shape profile in the provider's syntax (TensorRT ``,``, TensorRT-RTX ``;``)."""
    joint = ";" if provider == "tensorrt_rtx" else ","
    return joint.join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


def profile_options(profile: ShapeProfile, provider: str) -> dict[str, str]:
    """The profile's three corners as ``trt_profile_*`` or ``nv_profile_*`` options."""
    prefix = "nv_profile" if provider == "tensorrt_rtx" else "trt_profile"
    return {
        f"{prefix}_{corner}_shapes": profile_shapes(getattr(profile, corner), provider)
        for corner in ("min", "opt", "max")
    }


def provider_list(name: str, extra: Mapping[str, Mapping[str, Any]] | None = None) -> list[Any]:
    """The providers handed to onnxruntime for ``name``: the provider, CUDA behind TensorRT for the
    nodes TensorRT cannot take, CPU last. Never both TensorRT providers; TensorRT-RTX is not in such
    a list at all (plugin providers are added per device, see :func:`create_session`)."""
    extra = extra or {}
    chain = {"tensorrt": ["tensorrt", "cuda", "cpu"], "cuda": ["cuda", "cpu"]}.get(name, ["cpu"])
    out: list[Any] = []
    for p in chain:
        opts = dict(extra.get(p, {}))
        if p == "tensorrt":
            opts = {**trt_options(trt_fp16_enable=True), **trt_options(**opts)}
        else:
            opts = {k: str(v) for k, v in opts.items()}
        out.append((ORT_NAMES[p], opts) if opts else ORT_NAMES[p])
    return out


SPIN_ENV: Final = "METABGM_EDGE_ORT_SPIN"
SPIN_POLICIES: Final = ("run", "always", "never")


def spin_policy() -> str:
    """How intra-op threads wait for work: $METABGM_EDGE_ORT_SPIN, else ``run``.

    ``run``: they spin while a run is in progress (between its kernels: a decode step is some 340
    kernels of a few microseconds each, and waking sleeping threads for each cost about a third
    of the LLM's decode rate) and stop at once when it returns, so nothing spins while Python
    samples a token, while another model runs, or between segments. ``always``: onnxruntime's
    own default (they also spin for a while after a run). ``never``: they always sleep, which is
    faster only when every core is busy with something else (a 2-core machine running the game).
    """
    value = os.environ.get(SPIN_ENV, "run").strip().lower() or "run"
    if value not in SPIN_POLICIES:
        raise BundleError(f"{SPIN_ENV}={value!r} must be one of {', '.join(SPIN_POLICIES)}")
    return value


def session_options(
    threads: int | None = None, *, log_level: int = 3, spin: str | None = None
) -> ort.SessionOptions:
    """All graph optimizations, quiet logs, ``threads`` intra-op threads (None: onnxruntime's),
    and the threads' spin policy (None: :func:`spin_policy`)."""
    policy = spin_policy() if spin is None else spin
    if policy not in SPIN_POLICIES:
        raise ValueError(f"spin must be one of {SPIN_POLICIES}, got {policy!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = log_level
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if policy == "never" else "1")
    if policy == "run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads:
        options.intra_op_num_threads = threads
    return options


# -- choosing and opening -------------------------------------------------------------------------


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
    """Why this machine cannot run ``engine``, or None on a match (see :class:`Engine`)."""
    if engine.provider == "tensorrt_rtx":
        plugin = rtx_plugin()
        if isinstance(plugin, str):
            return plugin
        problems = []
        if plugin.version != engine.tensorrt_version:
            problems.append(
                f"TensorRT-RTX EP here is {plugin.version}, the engine needs {engine.tensorrt_version}"
            )
        if ort.__version__ != engine.onnxruntime_version:
            problems.append(
                f"onnxruntime here is {ort.__version__}, the engine needs {engine.onnxruntime_version}"
            )
        return "; ".join(problems) or None
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


def _why_not(name: str, engine: Engine | None, available: list[str]) -> str | None:
    if name == "tensorrt_rtx":
        plugin = rtx_plugin()
        return plugin if isinstance(plugin, str) else None
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


def create_rtx_session(
    model_file: Path | str, options: ort.SessionOptions, provider_options: Mapping[str, str]
) -> ort.InferenceSession:
    """A session on the TensorRT-RTX plugin (CPU behind it for what it leaves)."""
    plugin = rtx_plugin()
    if isinstance(plugin, str):
        raise BundleError(plugin)
    options.add_provider_for_devices(list(plugin.devices), dict(provider_options))
    return ort.InferenceSession(str(model_file), sess_options=options)


def _rtx_model(folder: Path, spec_file: str, graph: str, manifest: Manifest, skipped: list[str]) -> Path:
    """The bundle's TensorRT-RTX engine where it matches, else the ONNX graph (compiled at load)."""
    engine = manifest.engine_for(graph, "tensorrt_rtx")
    if engine is not None:
        reason = engine_mismatch(engine)
        if reason is None:
            return folder / engine.model_file
        skipped.append(f"not using the TensorRT-RTX engine (compiling the graph instead): {reason}")
    return folder / spec_file


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

    ``provider_options`` per provider name (``tensorrt_rtx``, ``tensorrt``, ``cuda``) are added to
    the defaults. The graph's inputs and outputs are checked against the manifest: a mismatched
    bundle is refused naming the file.
    """
    folder = Path(folder)
    spec = manifest.graphs.get(graph)
    if spec is None:
        raise BundleError(f"{folder / 'manifest.json'} has no graph {graph!r}; re-export the bundle")
    if manifest.target != "cpu":
        _warn_packaging_once()
    spin_policy()  # a bad $METABGM_EDGE_ORT_SPIN is said as itself, not as a session that failed
    engine = manifest.engine_for(graph, "tensorrt")
    available = ort.get_available_providers()
    extra = provider_options or {}
    skipped: list[str] = []
    for name in chain_for(manifest.target, providers):
        reason = _why_not(name, engine, available)
        if reason is None:
            try:
                if name == "tensorrt_rtx":
                    model_file = _rtx_model(folder, spec.file, graph, manifest, skipped)
                    cache = rtx_cache_dir(folder, graph)
                    cache.mkdir(parents=True, exist_ok=True)
                    opts = rtx_options(nv_runtime_cache_path=str(cache), **extra.get(name, {}))
                    session = create_rtx_session(model_file, session_options(threads), opts)
                    wanted = rtx_plugin().ep_names  # type: ignore[union-attr]
                else:
                    model_file = folder / (engine.model_file if name == "tensorrt" and engine else spec.file)
                    session = create_session(model_file, session_options(threads), provider_list(name, extra))
                    wanted = frozenset({ORT_NAMES[name]})
            except Exception as exc:  # onnxruntime raises several unrelated classes here
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                if name == "cpu":
                    raise BundleError(f"{model_file} cannot be loaded by onnxruntime: {first}") from None
                reason = f"creating the session failed: {first}"
            else:
                got = session.get_providers()
                if got and got[0] in wanted:
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
