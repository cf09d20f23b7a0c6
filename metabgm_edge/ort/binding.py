"""IO binding helpers: tensors that stay where the provider computes them.

On a GPU provider, state that is fed back every step (a KV cache) must stay in device memory:
outputs are bound to the device and bound back as the next step's inputs, and only what the host
needs (the logits) is copied out. On the CPU the same calls work with host memory, which is how
the tests exercise them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import onnxruntime as ort

NP_DTYPE: Final = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_}


_ORT_TYPES: Final = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def input_dtype(session: ort.InferenceSession, name: str) -> type:
    """The numpy type a session wants for input ``name`` (an fp16 graph wants float16)."""
    for value in session.get_inputs():
        if value.name == name:
            return _ORT_TYPES.get(value.type, np.float32)
    raise KeyError(name)


def output_dtype(session: ort.InferenceSession, name: str) -> type:
    """The numpy type of a session's output ``name``."""
    for value in session.get_outputs():
        if value.name == name:
            return _ORT_TYPES.get(value.type, np.float32)
    raise KeyError(name)


def empty(shape: Sequence[int], dtype: str | type, device: str) -> ort.OrtValue:
    """An uninitialised (or zero-sized) tensor on ``device`` (``cpu`` or ``cuda``)."""
    np_dtype = NP_DTYPE[dtype] if isinstance(dtype, str) else dtype
    return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np_dtype, device, 0)


def zeros(shape: Sequence[int], dtype: str | type, device: str) -> ort.OrtValue:
    """A zero-filled tensor on ``device``."""
    np_dtype = NP_DTYPE[dtype] if isinstance(dtype, str) else dtype
    return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=np_dtype), device, 0)


def to_device(array: np.ndarray, device: str) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)


class Step:
    """One run of a session through an IO binding: host arrays in, device values in, outputs where
    they are wanted. ``run`` returns the outputs in the order they were bound."""

    def __init__(self, session: ort.InferenceSession, device: str) -> None:
        self.session = session
        self.device = device
        self.binding = session.io_binding()
        self._outputs: list[str] = []

    def host(self, inputs: Mapping[str, np.ndarray]) -> Step:
        for name, array in inputs.items():
            self.binding.bind_cpu_input(name, np.ascontiguousarray(array))
        return self

    def values(self, inputs: Mapping[str, ort.OrtValue]) -> Step:
        for name, value in inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        return self

    def out_host(self, names: Sequence[str]) -> Step:
        for name in names:
            self.binding.bind_output(name, "cpu")
            self._outputs.append(name)
        return self

    def out_device(self, names: Sequence[str]) -> Step:
        for name in names:
            self.binding.bind_output(name, self.device, 0)
            self._outputs.append(name)
        return self

    def out_values(self, outputs: Mapping[str, ort.OrtValue]) -> Step:
        """Write outputs into preallocated tensors (fixed addresses: what CUDA graphs need)."""
        for name, value in outputs.items():
            self.binding.bind_ortvalue_output(name, value)
            self._outputs.append(name)
        return self

    def run(self, run_options: ort.RunOptions | None = None) -> dict[str, ort.OrtValue]:
        self.session.run_with_iobinding(self.binding, run_options)
        return dict(zip(self._outputs, self.binding.get_outputs(), strict=True))


class Mirror:
    """A small host array and the tensor a session reads it from, at one fixed address.

    On the CPU the tensor *is* the array (onnxruntime shares a NumPy array's memory on the host),
    so writing the array is all it takes; on a GPU :meth:`sync` copies it into the same device
    buffer, so a captured CUDA graph keeps reading the right place.
    """

    def __init__(self, array: np.ndarray, device: str) -> None:
        self.array = np.ascontiguousarray(array)
        self.device = device
        self.value = ort.OrtValue.ortvalue_from_numpy(self.array, device, 0)

    def sync(self) -> None:
        if self.device != "cpu":
            self.value.update_inplace(self.array)
