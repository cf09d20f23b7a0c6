"""The NVIDIA libraries onnxruntime-gpu's providers need, found before a session is made.

onnxruntime-gpu ships its CUDA and TensorRT providers as shared libraries that load the player's
CUDA runtime, cuBLAS, cuFFT, cuRAND, cuDNN (and TensorRT's libnvinfer) by name. When one is
missing, onnxruntime drops the provider with a long native message; here the missing library is
named with how to get it, once, and the session runs on the CPU instead.

:func:`prepare` runs once per process, before the first GPU session: it loads the libraries from
``$METABGM_EDGE_CUDA_DIR`` (a folder with them, for example an unpacked CUDA/cuDNN download), from
``<data dir>/cuda`` and from the nvidia wheels beside onnxruntime (``onnxruntime.preload_dlls()``),
then checks what each provider library needs. On Linux the list is read from the provider
library itself (its ELF ``DT_NEEDED`` entries), so it is what this onnxruntime was built against;
on Windows it is the CUDA 12 / cuDNN 9 set onnxruntime-gpu documents.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import struct
import sys
from pathlib import Path
from typing import Final

import msgspec

log = logging.getLogger(__name__)

CUDA_DIR_ENV: Final = "METABGM_EDGE_CUDA_DIR"
PROVIDER_LIBS: Final = {
    "cuda": "onnxruntime_providers_cuda",
    "tensorrt": "onnxruntime_providers_tensorrt",
}
WINDOWS_NEEDS: Final = {
    "cuda": ["cudart64_12.dll", "cublas64_12.dll", "cublasLt64_12.dll", "cufft64_11.dll",
             "curand64_10.dll", "cudnn64_9.dll"],
    "tensorrt": ["nvinfer_10.dll", "nvinfer_plugin_10.dll", "nvonnxparser_10.dll"],
}  # fmt: skip
_TOOLKIT: Final = "the CUDA Toolkit 12 (developer.nvidia.com/cuda-downloads)"
_TRT: Final = ("TensorRT 10", "TensorRT 10 (developer.nvidia.com/tensorrt) or pip install tensorrt-cu12-libs")
HOW: Final = (
    # (library name prefixes on Linux and Windows, what it is, how to get it)
    (("libcuda.", "nvcuda"), "the NVIDIA driver", "install the NVIDIA driver for your GPU"),
    (("libcudart", "cudart"), "the CUDA runtime", f"{_TOOLKIT} or pip install nvidia-cuda-runtime-cu12"),
    (("libcublas", "cublas"), "cuBLAS", f"{_TOOLKIT} or pip install nvidia-cublas-cu12"),
    (("libcufft", "cufft"), "cuFFT", f"{_TOOLKIT} or pip install nvidia-cufft-cu12"),
    (("libcurand", "curand"), "cuRAND", f"{_TOOLKIT} or pip install nvidia-curand-cu12"),
    (
        ("libcudnn", "cudnn"),
        "cuDNN 9",
        "cuDNN 9 for CUDA 12 (developer.nvidia.com/cudnn) or pip install nvidia-cudnn-cu12",
    ),
    (("libnvinfer", "nvinfer", "libnvonnxparser", "nvonnxparser"), *_TRT),
)
SYSTEM: Final = ("libc.", "libm.", "libdl.", "libpthread.", "librt.", "libstdc++", "libgcc_s", "ld-linux")


class Missing(msgspec.Struct, frozen=True):
    library: str
    what: str
    how: str

    def line(self) -> str:
        return f"{self.library} ({self.what}) is missing: {self.how}"


class GpuLibraries(msgspec.Struct, kw_only=True):
    searched: list[str]
    """Folders the libraries were loaded from, in order."""
    preloaded: list[str]
    """What onnxruntime.preload_dlls() and the folders loaded."""
    missing: dict[str, list[Missing]]
    """Per provider (``cuda``, ``tensorrt``): what it needs that does not load here."""

    def reason(self, provider: str) -> str | None:
        gone = self.missing.get(provider) or []
        if not gone:
            return None
        where = f"; or put them in a folder and set {CUDA_DIR_ENV} to it"
        return "; ".join(m.line() for m in gone) + where


def _how(library: str) -> tuple[str, str]:
    low = library.lower()
    for prefixes, what, how in HOW:
        if low.startswith(prefixes):
            return what, how
    return "a library the GPU provider needs", "install it, or put it in a folder named by " + CUDA_DIR_ENV


def elf_needed(path: Path) -> list[str]:
    """The ``DT_NEEDED`` entries of a 64-bit little-endian ELF shared library ([] if it is not one)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(shnum):
        _name, sh_type, _flags, _addr, offset, size, link = struct.unpack_from(
            "<IIQQQQI", data, shoff + i * shentsize
        )
        sections.append((sh_type, offset, size, link))
    needed = []
    for sh_type, offset, size, link in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        str_offset = sections[link][1]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", str_offset + value)
                needed.append(data[str_offset + value : end].decode())
    return needed


def _ort_capi() -> Path | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return Path(onnxruntime.__file__).parent / "capi"


def _provider_library(provider: str) -> Path | None:
    capi = _ort_capi()
    if capi is None:
        return None
    stem = PROVIDER_LIBS[provider]
    for name in (f"lib{stem}.so", f"{stem}.dll"):
        if (capi / name).is_file():
            return capi / name
    return None


def _loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def search_dirs() -> list[Path]:
    """Folders to load NVIDIA libraries from, before the system's: $METABGM_EDGE_CUDA_DIR, <data>/cuda."""
    from metabgm_edge import paths

    dirs = []
    env = os.environ.get(CUDA_DIR_ENV)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(paths.data_root() / "cuda")
    return [d for d in dirs if d.is_dir()]


def _preload_folder(folder: Path) -> list[str]:
    """Load every NVIDIA library in ``folder`` (and its lib/ and bin/) globally; a library whose
    dependency comes later in the folder loads on a later pass."""
    files = [
        p
        for sub in (folder, folder / "lib", folder / "bin")
        if sub.is_dir()
        for p in sorted(sub.iterdir())
        if p.is_file() and (".so" in p.name or p.suffix.lower() == ".dll")
    ]
    if sys.platform == "win32":
        for sub in {p.parent for p in files}:
            os.add_dll_directory(str(sub))  # type: ignore[attr-defined]
    loaded: list[str] = []
    pending = files
    for _ in range(4):
        left = []
        for p in pending:
            try:
                ctypes.CDLL(str(p), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
                loaded.append(str(p))
            except OSError:
                left.append(p)
        if not left or len(left) == len(pending):
            break
        pending = left
    return loaded


@functools.cache
def prepare() -> GpuLibraries:
    """Load what can be loaded, then say per GPU provider what is still missing. Once per process."""
    import onnxruntime as ort

    searched, preloaded = [], []
    for folder in search_dirs():
        searched.append(str(folder))
        preloaded += _preload_folder(folder)
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is not None:
        try:
            preload(directory="")  # the nvidia-*-cu12 wheels beside onnxruntime, when installed
        except Exception as exc:  # it raises or prints for what it does not find: not fatal
            log.debug("onnxruntime.preload_dlls: %s", exc)
    available = ort.get_available_providers()
    missing: dict[str, list[Missing]] = {}
    for provider, ort_name in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if ort_name not in available:
            continue
        library = _provider_library(provider)
        if sys.platform == "win32":
            needs = list(WINDOWS_NEEDS[provider])
        else:
            needs = [n for n in elf_needed(library) if not n.startswith(SYSTEM)] if library else []
            if library is not None and not any(n.startswith("libcuda.") for n in needs):
                needs.insert(0, "libcuda.so.1")  # loaded by the CUDA runtime at start
        if provider == "tensorrt":
            needs = [n for n in needs if "onnxruntime" not in n]
        gone = []
        for name in needs:
            if "onnxruntime_providers_shared" in name:
                continue
            if not _loads(name):
                gone.append(Missing(name, *_how(name)))
        missing[provider] = gone
    result = GpuLibraries(searched=searched, preloaded=preloaded, missing=missing)
    for provider, gone in missing.items():
        if gone:
            log.debug("%s provider: %s", provider, result.reason(provider))
    return result
