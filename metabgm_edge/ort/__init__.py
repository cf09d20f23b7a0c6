"""The one ONNX Runtime layer under every model kind (LLM bundles, MusicGen).

- :mod:`.device`: what GPU and TensorRT this machine really has (asked of the driver with ctypes).
- :mod:`.session`: provider choice (TensorRT -> CUDA -> CPU, decided from ``get_providers()``),
  session options, engine matching, one session per graph of a bundle.
- :mod:`.binding`: IO binding helpers, so state fed back every step stays on the device.
"""
