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
FORMAT_VERSION: Final = 2

Kind = Literal["llm", "musicgen"]
KINDS: Final = ("llm", "musicgen")
Quantization = Literal["fp32", "fp16", "int8", "int4"]
Target = Literal["cpu", "cuda", "tensorrt"]
ChatTemplate = Literal["chatml", "llama2"]
EngineProvider = Literal["tensorrt", "tensorrt_rtx"]


class FileEntry(Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    """Relative to the bundle folder, with '/' separators."""
    size: int
    sha256: str


class ModelSource(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Where the exported weights came from."""

    model: str
    """What ``--model`` named: an HF folder, a GGUF file, or ``package:NAME/FILE``."""
    model_sha256: str | None = None
    """Of the GGUF file, when the source was one."""
    adapter: str | None = None
    """The LoRA adapter folder merged into the weights, if any."""
    architecture: str = ""
    """The transformers class, for example ``LlamaForCausalLM``."""


class Graph(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One ONNX graph of the bundle and its interface, so the runtime never guesses names."""

    file: str
    inputs: list[str]
    outputs: list[str]
    opset: int


class ShapeProfile(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A TensorRT optimization profile: per input, its min / opt / max shape."""

    min: dict[str, list[int]]
    opt: dict[str, list[int]]
    max: dict[str, list[int]]


class Engine(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A compiled engine for one graph (an EPContext model). A TensorRT engine is used only on an
    exact match of the GPU architecture, the TensorRT version and the onnxruntime version it was
    built with; a TensorRT-RTX engine on a match of onnxruntime and the TensorRT-RTX EP package
    (TensorRT-RTX specializes it for the GPU at load time)."""

    graph: str
    """The name (a key of ``graphs``) of the graph it replaces."""
    provider: EngineProvider = "tensorrt"
    model_file: str
    """The EPContext ONNX model that points at the serialized engine."""
    tensorrt_version: str
    """TensorRT's version, or for ``tensorrt_rtx`` the version of its EP package."""
    gpu_arch: str
    """Compute capability as ``sm_XY``."""
    gpu_name: str = ""
    onnxruntime_version: str
    precision: str = "fp16"
    shape_profiles: list[ShapeProfile] = msgspec.field(default_factory=list)


# -- kind sections --------------------------------------------------------------------------------


class KVCache(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The LLM decoder's KV cache and vocabulary.

    The decoder is a fused graph (GroupQueryAttention with the rotary embedding inside) whose cache
    is one preallocated buffer of ``context_length`` positions per layer and kind, bound as both the
    past input and the present output and written in place. The attention mask always spans the
    whole buffer: 1 for the positions filled so far, 0 after them. Shapes stay the same on every
    decode step, which is what CUDA graphs and TensorRT profiles need.
    """

    past_key: str = "past_key_values.{layer}.key"
    past_value: str = "past_key_values.{layer}.value"
    present_key: str = "present.{layer}.key"
    present_value: str = "present.{layer}.value"
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_dtype: Literal["float32", "float16"] = "float32"
    buffer: Literal["shared"]
    """``shared``: past and present are one buffer of ``context_length`` positions, written in place
    (the only layout this runtime runs; bundles without the field are refused: re-export them)."""
    logits_last_only: bool = True
    """True when the graph returns logits for the last position only (shape batch x 1 x vocab)."""
    vocab_size: int
    context_length: int
    """The most tokens (prompt + generated) the model or engine accepts."""


class Generation(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Generation defaults of an LLM bundle; a request may override max_new_tokens and seed."""

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


class LLMSection(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``kind = "llm"``: a causal language model for the two text stages (graph ``decoder``)."""

    tokenizer_file: str = "tokenizer.json"
    cache: KVCache
    generation: Generation = msgspec.field(default_factory=Generation)
    chat: Chat


class MusicGenDefaults(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """MusicGen's own sampling defaults (its generation_config), and the continuation length."""

    do_sample: bool = True
    top_k: int = 250
    top_p: float = 0.0
    """0 turns top-p off (MusicGen samples with top-k alone)."""
    temperature: float = 1.0
    guidance_scale: float = 3.0
    prompt_seconds: float = 2.0
    """Seconds of the previous segment's codes that prompt the next one (the melodic anchor)."""


class MusicGenSection(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``kind = "musicgen"``: text encoder, decoder with KV cache, EnCodec decoder and encoder.

    Graphs: ``text_encoder`` (input_ids, attention_mask -> last_hidden_state), ``cross_kv``
    (encoder hidden states and mask -> every layer's cross-attention keys and values),
    ``decoder`` (codes, self-attention cache of any length, cross keys/values -> logits, present),
    optionally ``decoder_static`` (the same with a preallocated cache of ``static_cache_length``
    positions written in place at ``position``, for CUDA graphs and TensorRT's fixed profiles),
    ``codec_decode`` (codes -> waveform) and ``codec_encode`` (waveform -> codes).
    """

    tokenizer_file: str = "tokenizer.json"
    sample_rate: int
    audio_channels: int
    """1 (mono) or 2 (stereo: the codebooks interleave left and right)."""
    frame_rate: float
    """Code frames per second of audio (50 for the 32 kHz EnCodec)."""
    num_codebooks: int
    """Codebooks the decoder predicts per frame (both channels together for stereo)."""
    codebook_size: int
    pad_token_id: int
    decoder_start_token_id: int
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    text_hidden_size: int
    max_positions: int
    """Most decoder steps (prompt + generated frames + codebook delay) the position table covers."""
    kv_dtype: Literal["float32", "float16"] = "float32"
    static_cache_length: int | None = None
    max_text_tokens: int = 64
    """The fixed-cache decoder's description length (T5 tokens): descriptions are padded (or cut)
    to it so every shape of that graph is fixed."""
    codec_hop: int
    """Waveform samples per code frame."""
    defaults: MusicGenDefaults = msgspec.field(default_factory=MusicGenDefaults)


class Manifest(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The header every bundle has, then the section of its kind."""

    format_version: int = FORMAT_VERSION
    kind: Kind
    name: str
    created: str
    """UTC, ISO 8601."""
    source: ModelSource
    quantization: Quantization
    target: Target
    versions: dict[str, str] = msgspec.field(default_factory=dict)
    """Versions of what wrote the bundle: onnxruntime (which wrote, and for engines compiled, it),
    metabgm-edge, and the export tools (torch, transformers, onnx, ...)."""
    graphs: dict[str, Graph]
    engines: list[Engine] = msgspec.field(default_factory=list)
    files: list[FileEntry] = msgspec.field(default_factory=list)
    llm: LLMSection | None = None
    musicgen: MusicGenSection | None = None

    def engine_for(self, graph: str, provider: str = "tensorrt") -> Engine | None:
        return next((e for e in self.engines if e.graph == graph and e.provider == provider), None)

    def needed_files(self) -> list[str]:
        """Files the manifest names outside ``files``: each must be listed there too."""
        names = [g.file for g in self.graphs.values()] + [e.model_file for e in self.engines]
        section = self.llm or self.musicgen
        if section is not None:
            names.append(section.tokenizer_file)
        return names


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


class _Header(Struct):
    """The one field read before the rest, so an older or newer format gets its own message."""

    format_version: int = 0


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
            f"{path} is missing: {folder} is not a bundle (make one with 'metabgm-edge export llm' "
            "or 'export musicgen')"
        ) from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None
    try:
        header = msgspec.json.decode(raw, type=_Header)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BundleError(f"{path} is not a valid bundle manifest: {exc}; re-export the bundle") from None
    if header.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{path} has format_version {header.format_version}; this metabgm-edge reads "
            f"{FORMAT_VERSION}: re-export the bundle with this version ('metabgm-edge export ...')"
        )
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BundleError(f"{path} is not a valid bundle manifest: {exc}; re-export the bundle") from None
    section = {"llm": manifest.llm, "musicgen": manifest.musicgen}
    if section[manifest.kind] is None or any(v is not None for k, v in section.items() if k != manifest.kind):
        raise BundleError(
            f"{path} is a {manifest.kind!r} bundle but does not have exactly its {manifest.kind!r} section; "
            "re-export the bundle"
        )
    for name, engine in ((e.graph, e) for e in manifest.engines):
        if name not in manifest.graphs:
            raise BundleError(f"{path} has an engine for graph {engine.graph!r}, which it does not list")
    listed = {entry.path for entry in manifest.files}
    for needed in manifest.needed_files():
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


def default_bundle(engines_dir: Path, kind: str, *, gpu: bool) -> Path | None:
    """The bundle ``play`` uses when none is named, or None.

    GPU bundles qualify only when ``gpu`` (this onnxruntime has a GPU provider: ask
    :func:`metabgm_edge.ort.session.has_gpu_provider`); among those that qualify, the GPU target
    first, then fine-tuned bundles (``source.adapter`` set: a LoRA trained for the two stages was
    merged in), then the quantization order int8, int4, fp16, fp32, then the newest.
    """
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
    candidates.sort(
        key=lambda c: (_TARGET_RANK[c[0].target], c[0].source.adapter is None, _QUANT_RANK[c[0].quantization])
    )
    return candidates[0][1]
