"""Small Hugging Face transformers models with seeded random weights, built in code (no download).

Each preset names an architecture class of transformers and a config small enough for the CPU
backend (``*-tiny``) or shaped like a real checkpoint for timing on a GPU (``llama-1b``). Weights
come from transformers' own initialisation under ``torch.manual_seed(seed)``, with a larger
``initializer_range`` than the library default so that attention is far from uniform and the
greedy choice has a clear margin, plus seeded noise on the parameters the default initialisation
leaves constant (norm weights, biases), so every parameter takes part.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Preset:
    arch: str            # transformers class name
    config: dict         # config keyword arguments
    note: str = ""


_TINY = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=4096, initializer_range=0.08,
             rms_norm_eps=1e-6, tie_word_embeddings=False)

PRESETS: dict[str, Preset] = {
    "llama-tiny": Preset("LlamaForCausalLM", dict(_TINY), "GQA 4/2, head_dim 64"),
    "qwen2-tiny": Preset("Qwen2ForCausalLM", dict(_TINY), "q/k/v biases"),
    "mistral-tiny": Preset("MistralForCausalLM", dict(_TINY, sliding_window=32),
                           "sliding window 32 on every layer"),
    "gemma2-tiny": Preset("Gemma2ForCausalLM",
                          dict(_TINY, sliding_window=32, query_pre_attn_scalar=48, attn_logit_softcapping=5.0,
                               final_logit_softcapping=10.0, hidden_activation="gelu_pytorch_tanh",
                               tie_word_embeddings=False),
                          "window 32 on even layers, attention soft-cap 5, scale 48**-0.5, final soft-cap 10"),
    # Shaped like Llama 3.2 1B (random weights): for timing on a GPU.
    "llama-1b": Preset("LlamaForCausalLM",
                       dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                            max_position_embeddings=8192, initializer_range=0.02, rms_norm_eps=1e-5,
                            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                            tie_word_embeddings=True),
                       "Llama-3.2-1B shapes, random weights"),
}

ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma2")


def build_model(name: str, *, device="cpu", dtype=torch.float32, seed: int = 0, attn_implementation="eager",
                **overrides):
    """A ``*ForCausalLM`` of preset `name` with seeded random weights, in eval mode on `device`.

    The weights depend only on (`name`, `seed`, `overrides`) and on the device's random generator:
    they are drawn in float32 on the CPU and then moved, so CPU and GPU models are identical.
    EOS is disabled (``eos_token_id=None``) so that generation always runs to its length.
    """
    import transformers

    preset = PRESETS[name]
    cfg_kwargs = dict(preset.config, **overrides)
    config_cls = getattr(transformers, preset.arch.replace("ForCausalLM", "Config"))
    config = config_cls(**cfg_kwargs)
    config.eos_token_id = None
    config.bos_token_id = None
    config.pad_token_id = None
    model_cls = getattr(transformers, preset.arch)
    torch.manual_seed(seed)
    model = model_cls._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or "norm" in pname:
                # norms (1 or 1+w) and biases: constant after init, perturbed here (seeded)
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.to(device=device, dtype=dtype).eval()


def random_prompts(lengths, vocab_size: int, seed: int = 0, shared_prefix: int = 0):
    """Token-id lists of the given lengths (seeded); the first `shared_prefix` tokens are common."""
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, vocab_size, (shared_prefix,), generator=gen).tolist()
    out = []
    for n in lengths:
        k = min(shared_prefix, n)
        out.append(prefix[:k] + torch.randint(0, vocab_size, (n - k,), generator=gen).tolist())
    return out
