"""What GPU and TensorRT this machine really has, asked of the driver and libraries themselves.

onnxruntime's provider list only says what the package was built with; a TensorRT engine runs only
on the GPU architecture and TensorRT version it was built for. Both are read here with ctypes, so
neither the ``tensorrt`` Python package nor a CUDA toolkit is needed. Export and runtime call the
same functions, so the strings they compare are made the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import logging
from pathlib import Path

from msgspec import Struct

log = logging.getLogger(__name__)

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


class Gpu(Struct, frozen=True):
    index: int
    name: str
    arch: str
    """``sm_XY`` from the compute capability X.Y."""


def _load(names: list[str]) -> ctypes.CDLL | None:
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@functools.cache
def gpu(index: int = 0) -> Gpu | None:
    """The CUDA device ``index`` as the driver reports it, or None without a driver or device."""
    lib = _load(["libcuda.so.1", "libcuda.so", "nvcuda.dll"])
    if lib is None:
        log.debug("no CUDA driver library: no GPU")
        return None
    try:
        if lib.cuInit(0) != 0:
            log.debug("cuInit failed: no usable GPU")
            return None
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= index:
            return None
        device = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(device), index) != 0:
            return None
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, device)
    except AttributeError:  # pragma: no cover - a library named libcuda without the driver API
        return None
    return Gpu(index, name.value.decode(errors="replace"), f"sm_{major.value}{minor.value}")


def decode_trt_version(value: int) -> str:
    """``getInferLibVersion()``: major*10000+minor*100+patch since TensorRT 10, major*1000+... before."""
    major, rest = divmod(value, 10000) if value >= 100000 else divmod(value, 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def _trt_candidates() -> list[str]:
    names = ["libnvinfer.so.10", "libnvinfer.so", "nvinfer_10.dll", "nvinfer.dll"]
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations)))
        names = [str(p) for p in sorted(folder.glob("*nvinfer*")) if "plugin" not in p.name] + names
    found = ctypes.util.find_library("nvinfer")
    if found:
        names.append(found)
    return names


@functools.cache
def tensorrt_version() -> str | None:
    """The TensorRT library version this process would load, or None when there is none."""
    lib = _load(_trt_candidates())
    if lib is None:
        return None
    try:
        return decode_trt_version(int(lib.getInferLibVersion()))
    except AttributeError:  # pragma: no cover
        return None
