"""Exported bundles: a folder of model files described by ``manifest.json``.

``metabgm-edge export`` writes a bundle; the runtime reads it. Both sides use the one schema below,
so a field added here is written and read alike. The manifest lists every other file of the
bundle with its size and SHA-256; :func:`open_bundle` checks them all before anything is loaded,
and a flipped byte, a missing file or a manifest that does not parse is refused with a
:class:`~metabgm_edge.errors.BundleError` that names the file.

The format, field by field, is documented in ``engines/README.md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path, PurePosixPath
from typing import Final, Literal

import msgspec
from msgspec import Struct

from metabgm_edge.errors import BundleError

log = logging.getLogger(__name__)

MANIFEST: Final = "manifest.json"
FORMAT_VERSION: Final = 1

Quantization = Literal["fp32", "fp16", "int8", "int4"]
Target = Literal["cpu", "cuda", "tensorrt"]
ChatTemplate = Literal["chatml", "llama2"]


class FileEntry(Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    """Relative to the bundle folder, with '/' separators."""
    size: int
    sha256: str


class Source(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    model: str
    """What ``--model`` named: an HF folder, a GGUF file, or ``package:NAME/FILE``."""
    model_sha256: str | None = None
    """Of the GGUF file, when the source was one."""
    adapter: str | None = None
    """The LoRA adapter folder merged into the weights, if any."""
    architecture: str = ""
    """The transformers class, for example ``LlamaForCausalLM``."""


class ShapeProfile(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A TensorRT optimization profile: per input, its min / opt / max shape."""

    min: dict[str, list[int]]
    opt: dict[str, list[int]]
    max: dict[str, list[int]]


class Engine(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A compiled TensorRT engine (EPContext model). Used only on an exact match of all three."""

    provider: Literal["tensorrt"] = "tensorrt"
    model_file: str
    """The EPContext ONNX model that points at the serialized engine."""
    tensorrt_version: str
    gpu_arch: str
    """Compute capability as ``sm_XY``."""
    gpu_name: str = ""
    onnxruntime_version: str
    precision: str = "fp16"
    shape_profiles: list[ShapeProfile] = msgspec.field(default_factory=list)


class ModelIO(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The ONNX graph's interface, so the runtime never guesses names."""

    inputs: list[str]
    outputs: list[str]
    past_key: str = "past_key_values.{layer}.key"
    past_value: str = "past_key_values.{layer}.value"
    present_key: str = "present.{layer}.key"
    present_value: str = "present.{layer}.value"
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_dtype: Literal["float32", "float16"] = "float32"
    logits_last_only: bool = True
    """True when the graph returns logits for the last position only (shape batch x 1 x vocab)."""
    vocab_size: int
    context_length: int
    """The most tokens (prompt + generated) the model or engine accepts."""


class Generation(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Generation defaults of the bundle; a request may override max_new_tokens and seed."""

    max_new_tokens: int = 96
    do_sample: bool = True
    temperature: float = 0.6
    top_p: float = 0.9
    repetition_penalty: float = 1.05
    no_repeat_ngram_size: int = 0
    """When > 0, no n-gram of this size occurs twice in prompt + answer (no loops, no long copies of
    the prompt); 0 turns it off."""
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    stop_strings: list[str] = msgspec.field(default_factory=list)


class Chat(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    template: ChatTemplate
    bos_token: str | None = None
    eos_token: str | None = None
    default_system: str | None = None
    """Prepended as the system message when a request has none (SmolLM2's template does this)."""
    template_file: str | None = None
    """The model's own Jinja chat template, kept for reference; the runtime uses ``template``."""


class Manifest(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    format_version: int = FORMAT_VERSION
    kind: Literal["llm"]
    name: str
    created: str
    """UTC, ISO 8601."""
    source: Source
    quantization: Quantization
    target: Target
    opset: int
    onnxruntime_version: str
    """The onnxruntime that wrote (and for engines, compiled) the bundle."""
    exporter: dict[str, str] = msgspec.field(default_factory=dict)
    """Versions of the export tools (torch, transformers, optimum-onnx, peft)."""
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    io: ModelIO
    generation: Generation = msgspec.field(default_factory=Generation)
    chat: Chat
    engine: Engine | None = None
    files: list[FileEntry] = msgspec.field(default_factory=list)


# -- write ----------------------------------------------------------------------------------------


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def list_files(folder: Path) -> list[FileEntry]:
    """Every regular file under ``folder`` except the manifest, sorted, with size and digest."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        entries.append(FileEntry(rel, path.stat().st_size, sha256_of(path)))
    return entries


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Write ``manifest.json`` listing every file now in ``folder``; returns what was written."""
    folder = Path(folder)
    final = msgspec.structs.replace(manifest, files=list_files(folder))
    data = msgspec.json.format(msgspec.json.encode(final), indent=2)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_bytes(data + b"\n")
    os.replace(tmp, folder / MANIFEST)
    return final


# -- read and verify ------------------------------------------------------------------------------


def read_manifest(folder: Path) -> Manifest:
    """Parse ``manifest.json``; no checksums (see :func:`verify_files`)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} does not exist or is not a folder")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"{path} is missing: {folder} is not a bundle (make one with 'metabgm-edge export llm')"
        ) from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BundleError(f"{path} is not a valid bundle manifest: {exc}; re-export the bundle") from None
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{path} has format_version {manifest.format_version}; this metabgm-edge reads "
            f"{FORMAT_VERSION}: re-export the bundle with this version"
        )
    listed = {entry.path for entry in manifest.files}
    engine_file = [manifest.engine.model_file] if manifest.engine else []
    for needed in (manifest.model_file, manifest.tokenizer_file, *engine_file):
        if needed not in listed:
            raise BundleError(f"{path} does not list {needed!r} among its files; re-export the bundle")
    return manifest


def _safe_path(folder: Path, rel: str, manifest_path: Path) -> Path:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise BundleError(f"{manifest_path} lists an unsafe file path {rel!r}; re-export the bundle")
    return folder.joinpath(*pure.parts)


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check that every listed file exists with its size and SHA-256. Raises on the first mismatch."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    t0 = time.perf_counter()
    for entry in manifest.files:
        path = _safe_path(folder, entry.path, manifest_path)
        if not path.is_file():
            raise BundleError(
                f"bundle {folder} is missing {entry.path} (listed in {MANIFEST}): copy the whole "
                "folder again or re-export it"
            )
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(
                f"{path} is {size} bytes, the manifest says {entry.size}: the file is truncated or "
                "replaced; copy the bundle again or re-export it"
            )
        if sha256_of(path) != entry.sha256:
            raise BundleError(
                f"{path} is corrupt: its SHA-256 differs from the manifest's; copy the bundle again "
                "or re-export it"
            )
    log.debug("verified %d files of %s in %.2f s", len(manifest.files), folder, time.perf_counter() - t0)


def open_bundle(folder: Path, kind: str = "llm") -> Manifest:
    """Read and fully verify a bundle of ``kind``: what the runtime calls before loading anything."""
    manifest = read_manifest(folder)
    if manifest.kind != kind:
        raise BundleError(f"{Path(folder) / MANIFEST} is a {manifest.kind!r} bundle, not {kind!r}")
    verify_files(folder, manifest)
    return manifest


# -- discovery ------------------------------------------------------------------------------------


def find_bundles(engines_dir: Path, kind: str) -> list[Path]:
    """Folders directly under ``engines_dir`` whose manifest parses and is of ``kind``, sorted by name.

    Only the manifests are read (no checksums): the runtime verifies the one it opens.
    """
    engines_dir = Path(engines_dir)
    if not engines_dir.is_dir():
        return []
    found = []
    for folder in sorted(p for p in engines_dir.iterdir() if (p / MANIFEST).is_file()):
        try:
            manifest = read_manifest(folder)
        except BundleError as exc:
            log.warning("skipping %s: %s", folder, exc)
            continue
        if manifest.kind == kind:
            found.append(folder)
    return found


_QUANT_RANK: Final = {"int8": 0, "int4": 1, "fp16": 2, "fp32": 3}
"""On a CPU: int8 keeps the most quality for its speed; int4 is smaller and a little faster."""
_TARGET_RANK: Final = {"tensorrt": 0, "cuda": 1, "cpu": 2}


def _gpu_providers() -> set[str]:
    try:
        import onnxruntime

        return set(onnxruntime.get_available_providers()) & {
            "CUDAExecutionProvider",
            "TensorrtExecutionProvider",
        }
    except ImportError:  # pragma: no cover - onnxruntime is a runtime dependency
        return set()


def default_bundle(engines_dir: Path, kind: str) -> Path | None:
    """The bundle ``play`` uses when none is named, or None.

    GPU bundles qualify only when this onnxruntime has a GPU provider; among those that qualify,
    the GPU target first, then the quantization order int8, int4, fp16, fp32, then the newest.
    """
    gpu = _gpu_providers()
    candidates: list[tuple[Manifest, Path]] = []
    for folder in find_bundles(engines_dir, kind):
        manifest = read_manifest(folder)
        if manifest.target != "cpu" and not gpu:
            log.debug("not picking %s: target %s needs onnxruntime-gpu", folder, manifest.target)
            continue
        candidates.append((manifest, folder))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[0].created, reverse=True)
    candidates.sort(key=lambda c: (_TARGET_RANK[c[0].target], _QUANT_RANK[c[0].quantization]))
    return candidates[0][1]
