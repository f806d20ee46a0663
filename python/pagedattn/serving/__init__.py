"""pagedattn.serving: a continuous-batching generation loop that runs Hugging Face transformers
models (Llama, Qwen2, Mistral, Gemma 2) on pagedattn's paged KV cache, CPU or CUDA tensors.

* :class:`Engine` -- the loop (chunked prefill, decode, prefix caching, parallel sampling with
  copy-on-write, preemption), see :mod:`pagedattn.serving.engine`;
* :mod:`pagedattn.serving.attention` -- the attention function registered with transformers;
* :func:`build_model` / :data:`PRESETS` -- small models with seeded random weights (no download);
* ``python -m pagedattn.serving`` -- generate or benchmark from the command line (``--help``).

Needs torch and transformers (5.x); importing this module without them raises ImportError.
"""

from .engine import Engine, RequestOutput, SamplingParams
from .models import ARCHITECTURES, PRESETS, build_model, random_prompts

__all__ = ["Engine", "RequestOutput", "SamplingParams", "PRESETS", "ARCHITECTURES", "build_model", "random_prompts"]
