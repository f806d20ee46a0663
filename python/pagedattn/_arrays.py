"""Framework glue shared by the public functions: DLPack hand-off, scalars, streams, allocation.

Nothing here imports a framework. A framework is recognised only when the caller already
imported it (``sys.modules``), so ``import pagedattn`` stays cheap for NumPy users.
"""

from __future__ import annotations

import sys

from . import _C

_torch_tensor_type = None
_torch_to_dlpack = None
_torch_raw_stream = None


def _torch_bits():
    """(Tensor type, to_dlpack, current-raw-stream) once torch has been imported, else None."""
    global _torch_tensor_type, _torch_to_dlpack, _torch_raw_stream
    if _torch_tensor_type is None:
        torch = sys.modules.get("torch")
        if torch is None or not hasattr(torch, "Tensor"):
            return None
        from torch.utils.dlpack import to_dlpack

        _torch_to_dlpack = to_dlpack
        _torch_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        _torch_tensor_type = torch.Tensor
    return _torch_tensor_type


def dl(x):
    """What the native module receives for array `x` (zero-copy either way).

    A torch tensor becomes a DLPack capsule made by torch's C exporter: unlike
    ``Tensor.__dlpack__()`` it records no cross-stream event (which would break CUDA graph
    capture) and does not refuse tensors that require grad. Every other object (NumPy, CuPy,
    JAX, capsules, ``None``) is passed as is: nanobind calls its ``__dlpack__``.
    """
    if x is None:
        return None
    tt = _torch_tensor_type if _torch_tensor_type is not None else _torch_bits()
    if tt is not None and isinstance(x, tt):
        return _torch_to_dlpack(x)
    return x


def scalar(x) -> float:
    """k_scale / v_scale as a float: a Python number (fast path, never syncs) or a
    one-element array/tensor (read with ``.item()``: on a CUDA tensor this is a device->host
    copy that synchronises the stream and is not allowed under CUDA graph capture)."""
    if type(x) is float:
        return x
    if isinstance(x, (int, float)):
        return float(x)
    item = getattr(x, "item", None)
    if item is None:
        raise _C.PagedAttnError(f"expected a float or a one-element array for a scale, got {type(x).__name__}")
    return float(item())


def default_stream(x) -> int:
    """The caller's current stream for array `x`, as an int (0 = legacy default / CPU).

    torch: ``torch.cuda.current_stream(x.device)``; CuPy: ``cupy.cuda.get_current_stream()``;
    anything else on a GPU: 0 (pass ``stream=`` explicitly)."""
    tt = _torch_tensor_type if _torch_tensor_type is not None else _torch_bits()
    if tt is not None and isinstance(x, tt):
        if not x.is_cuda:
            return 0
        if _torch_raw_stream is not None:
            return _torch_raw_stream(x.device.index)
        import torch

        return torch.cuda.current_stream(x.device).cuda_stream
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy

        return cupy.cuda.get_current_stream().ptr
    return 0


def on_host(x) -> bool:
    """Whether array `x` lives in host memory (DLPack kDLCPU or kDLCUDAHost)."""
    dev = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else 1
    return dev in (1, 3)


def empty_bytes_like(x, nbytes: int):
    """A 1-D uint8 buffer of `nbytes` on `x`'s device, allocated by `x`'s own framework."""
    tt = _torch_tensor_type if _torch_tensor_type is not None else _torch_bits()
    if tt is not None and isinstance(x, tt):
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy

        with cupy.cuda.Device(x.device.id):
            return cupy.empty(nbytes, dtype=cupy.uint8)
    if on_host(x):
        import numpy

        return numpy.empty(nbytes, dtype=numpy.uint8)
    raise _C.PagedAttnError(
        f"paged_attention: cannot allocate a {nbytes}-byte workspace for a {type(x).__name__} on device type "
        f"{x.__dlpack_device__()[0]}; pass workspace= (see workspace_size())"
    )
