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


# What each array type needs, decided once per type: _PLAIN (passed as is, stream 0 unless given),
# _TORCH (exported with torch's C exporter, torch's current stream), _CUPY (CuPy's current stream).
# A type is classified on first sight; torch types cannot be seen before torch is imported, so a
# cached _PLAIN never goes stale.
_PLAIN, _TORCH, _CUPY = 0, 1, 2
_kinds: dict = {type(None): _PLAIN}


def _kind(tp) -> int:
    k = _kinds.get(tp)
    if k is None:
        tt = _torch_tensor_type if _torch_tensor_type is not None else _torch_bits()
        if tt is not None and issubclass(tp, tt):
            k = _TORCH
        elif tp.__module__.startswith("cupy"):
            k = _CUPY
        else:
            k = _PLAIN
        _kinds[tp] = k
    return k


def dl(x):
    """What the native module receives for array `x` (zero-copy either way).

    A torch tensor becomes a DLPack capsule made by torch's C exporter: unlike
    ``Tensor.__dlpack__()`` it records no cross-stream event (which would break CUDA graph
    capture) and does not refuse tensors that require grad. Every other object (NumPy, CuPy,
    JAX, capsules, ``None``) is passed as is: nanobind calls its ``__dlpack__``.
    """
    k = _kinds.get(type(x))  # inlined: this runs for every array of every call
    if k is None:
        k = _kind(type(x))
    return _torch_to_dlpack(x) if k == _TORCH else x


def scale_arg(x, name: str):
    """A k_scale / v_scale argument as the native module takes it.

    * a Python number: the per-tensor scale (the fast path; never syncs);
    * a one-element array/tensor (how vLLM passes the per-tensor scale): read on the host with
      ``.item()``; for a CUDA tensor that is a device->host copy that synchronises the stream
      and is not allowed under CUDA graph capture;
    * any other array: the per-kv-head scales, float32 ``[num_kv_heads]`` on the call's device,
      handed over as is (read by the kernel: graph-safe). The library checks its dtype, shape
      and device, and that the cache is fp8.
    """
    if type(x) is float:
        return x
    if isinstance(x, (int, float)):
        return float(x)
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be a float or an array (one element: per tensor; float32 [num_kv_heads]: "
                        f"per kv head); got {type(x).__name__}")
    size = 1
    for n in shape:
        size *= int(n)
    if size == 1:
        return float(x.item())
    return dl(x)


def default_stream(x) -> int:
    """The caller's current stream for array `x`, as an int (0 = legacy default / CPU).

    torch: ``torch.cuda.current_stream(x.device)``; CuPy: ``cupy.cuda.get_current_stream()``;
    anything else on a GPU: 0 (pass ``stream=`` explicitly)."""
    k = _kinds.get(type(x))
    if k is None:
        k = _kind(type(x))
    if k == _PLAIN:
        return 0
    if k == _TORCH:
        if not x.is_cuda:
            return 0
        if _torch_raw_stream is not None:
            return _torch_raw_stream(x.device.index)
        import torch

        return torch.cuda.current_stream(x.device).cuda_stream
    import cupy

    return cupy.cuda.get_current_stream().ptr


def on_host(x) -> bool:
    """Whether array `x` lives in host memory (DLPack kDLCPU or kDLCUDAHost)."""
    dev = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else 1
    return dev in (1, 3)


def empty_bytes_like(x, nbytes: int):
    """A 1-D uint8 buffer of `nbytes` on `x`'s device, allocated by `x`'s own framework."""
    k = _kind(type(x))
    if k == _TORCH:
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    if k == _CUPY:
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
