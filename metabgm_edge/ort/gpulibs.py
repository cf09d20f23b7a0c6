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
on Windows it is the CUDA / cuDNN 9 set onnxruntime-gpu documents for the CUDA version it was
built with (onnxruntime-gpu 1.31 on PyPI is built for CUDA 13: libcudart.so.13, libcublas.so.13).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
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
DRIVER: Final = ("the NVIDIA driver", "install the NVIDIA driver for your GPU")
# (library name prefixes on Linux and Windows, what it is): how to get each is said with the CUDA
# version this onnxruntime was built for (CUDA 12 and 13 builds need different libraries).
KINDS: Final = (
    (("libcudart", "cudart"), "the CUDA runtime"),
    (("libcublas", "cublas"), "cuBLAS"),
    (("libcufft", "cufft"), "cuFFT"),
    (("libcurand", "curand"), "cuRAND"),
    (("libnvrtc", "nvrtc"), "NVRTC"),
    (("libcudnn", "cudnn"), "cuDNN 9"),
    (("libnvinfer", "nvinfer", "libnvonnxparser", "nvonnxparser"), "TensorRT 10"),
)
SYSTEM: Final = ("libc.", "libm.", "libdl.", "libpthread.", "librt.", "libstdc++", "libgcc_s", "ld-linux")


class Missing(msgspec.Struct, frozen=True):
    library: str
    what: str
    how: str


class GpuLibraries(msgspec.Struct, kw_only=True):
    searched: list[str]
    """Folders the libraries were loaded from, in order."""
    preloaded: list[str]
    """What onnxruntime.preload_dlls() and the folders loaded."""
    missing: dict[str, list[Missing]]
    """Per provider (``cuda``, ``tensorrt``): what it needs that does not load here."""

    def reason(self, provider: str) -> str | None:
        """What is missing for ``provider`` and how to get it, in one line (None: nothing)."""
        gone = self.missing.get(provider) or []
        if not gone:
            return None
        by_how: dict[str, list[Missing]] = {}
        for m in sorted(gone, key=lambda m: m.what != DRIVER[0]):  # the driver first
            by_how.setdefault(m.how, []).append(m)
        parts = []
        for how, libs in by_how.items():
            names = ", ".join(f"{m.library} ({m.what})" for m in libs)
            parts.append(f"missing {names}: {how}")
        return "; ".join(parts) + f"; or put the libraries in a folder and set {CUDA_DIR_ENV} to it"


def cuda_major() -> str:
    """The CUDA major version this onnxruntime-gpu was built with ("12", "13"; "" for a CPU build)."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return ""
    return str(getattr(info, "cuda_version", "") or "").split(".")[0]


def windows_needs(provider: str, major: str) -> list[str]:
    """The DLLs onnxruntime-gpu's providers load on Windows (its documented CUDA / cuDNN set)."""
    cufft = "12" if major.isdigit() and int(major) >= 13 else "11"
    if provider == "tensorrt":
        return ["nvinfer_10.dll", "nvonnxparser_10.dll"]
    return [f"cudart64_{major}.dll", f"cublas64_{major}.dll", f"cublasLt64_{major}.dll",
            f"cufft64_{cufft}.dll", "curand64_10.dll", "cudnn64_9.dll"]  # fmt: skip


def _how(library: str, major: str) -> tuple[str, str]:
    low = library.lower()
    cuda = f"CUDA {major}" if major else "CUDA"
    if low.startswith(("libcuda.", "nvcuda")):
        return DRIVER
    pip = "or, for a Python install, pip install 'onnxruntime-gpu[cuda,cudnn]'"
    for prefixes, what in KINDS:
        if not low.startswith(prefixes):
            continue
        if what == "cuDNN 9":
            return what, f"cuDNN 9 for {cuda} (developer.nvidia.com/cudnn) {pip}"
        if what == "TensorRT 10":
            return what, f"TensorRT 10 for {cuda} (developer.nvidia.com/tensorrt)"
        return what, f"the {cuda} Toolkit's runtime libraries (developer.nvidia.com/cuda-downloads) {pip}"
    return "a library the GPU provider needs", f"install it, or put it in a folder named by {CUDA_DIR_ENV}"


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
    available = ort.get_available_providers()
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is not None and "CUDAExecutionProvider" in available:
        said = io.StringIO()
        try:  # it prints what it cannot load (to stdout, where `doctor --json` writes): keep that for -v
            with contextlib.redirect_stdout(said):
                preload(directory="")  # the nvidia wheels beside onnxruntime, when installed
        except Exception as exc:  # it raises for a folder that is not there: not fatal
            log.debug("onnxruntime.preload_dlls: %s", exc)
        if said.getvalue().strip():
            log.debug("onnxruntime.preload_dlls: %s", " | ".join(said.getvalue().split("\n")).strip(" |"))
    major = cuda_major()
    missing: dict[str, list[Missing]] = {}
    for provider, ort_name in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if ort_name not in available:
            continue
        library = _provider_library(provider)
        if sys.platform == "win32":
            needs = windows_needs(provider, major)
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
                gone.append(Missing(name, *_how(name, major)))
        missing[provider] = gone
    result = GpuLibraries(searched=searched, preloaded=preloaded, missing=missing)
    for provider, gone in missing.items():
        if gone:
            log.debug("%s provider: %s", provider, result.reason(provider))
    return result
