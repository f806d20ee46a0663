"""pagedattn: decode-phase paged attention with vLLM's op signatures.

Framework-neutral functions take any DLPack array (NumPy, PyTorch, CuPy, JAX inputs) without
copying; when PyTorch is installed, ``torch.ops.pagedattn.*`` are registered as well (on
``import pagedattn`` if torch is already imported or importable, see :mod:`pagedattn.torch_ops`).
"""

from __future__ import annotations

import importlib.util as _ilu
import os as _os

from . import _C
from ._C import PARTITION_SIZE, BlockManager, PagedAttnError, build_info, built_with_cuda, vllm_rule_prefers_v1
from .ops import (
    copy_blocks,
    is_supported,
    merge_attention_states,
    paged_attention,
    paged_attention_v1,
    paged_attention_v2,
    reshape_and_cache,
    swap_blocks,
    v2_workspace_shapes,
    workspace_size,
)

__version__ = _C.__version__

from . import ops as _ops

__all__ = ["PagedAttnError", "PARTITION_SIZE", "BlockManager", "build_info", "built_with_cuda", "vllm_rule_prefers_v1",
           *_ops.__all__]

# torch.ops.pagedattn.* exist whenever torch is importable. PAGEDATTN_NO_TORCH=1 skips the
# (slow, ~1-2 s) torch import for NumPy-only processes; `import pagedattn.torch_ops` later still
# registers the ops.
if _os.environ.get("PAGEDATTN_NO_TORCH", "0") in ("", "0") and _ilu.find_spec("torch") is not None:
    from . import torch_ops  # noqa: F401
