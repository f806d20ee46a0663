"""Float64 NumPy reference of SPEC §3 for the Python tests, plus case builders.

Written from the spec, independent of the library: gathers each sequence's keys/values from
the vLLM cache layout and runs a plain stable softmax in float64.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

FP8_TABLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "fp8" / "fp8_decode.tsv"


def fp8_decode_tables():
    """(e4m3, e5m2) float64 arrays of 256 decoded values, from the GPU's own conversions."""
    rows = [line.split() for line in FP8_TABLE.read_text().splitlines() if line and not line.startswith("#")]
    bits = np.array([[int(r[1], 16), int(r[2], 16)] for r in rows], dtype=np.uint32)
    vals = bits.view(np.float32).astype(np.float64)
    return vals[:, 0].copy(), vals[:, 1].copy()


def x_of(itemsize: int) -> int:
    return 16 // itemsize


def gather_kv(key_cache, value_cache, block_table, seq_len, kv_head, block_size):
    """Keys and values [seq_len, head_size] of one sequence and kv head, as stored."""
    nblk = math.ceil(seq_len / block_size)
    blocks = np.asarray(block_table[:nblk], dtype=np.int64)
    k = key_cache[blocks, kv_head]  # [nblk, hs/x, bs, x]
    hs = k.shape[1] * k.shape[3]
    k = k.transpose(0, 2, 1, 3).reshape(nblk * block_size, hs)[:seq_len]
    v = value_cache[blocks, kv_head]  # [nblk, hs, bs]
    v = v.transpose(0, 2, 1).reshape(nblk * block_size, hs)[:seq_len]
    return k, v


def attention(query, key_cache, value_cache, block_tables, seq_lens, scale, block_size, alibi_slopes=None,
              decode=None, k_scale=1.0, v_scale=1.0):
    """out[i, h] in float64. `decode` maps a uint8 cache to values (fp8); None = cache as is."""
    q = np.asarray(query, dtype=np.float64)
    num_seqs, num_heads, head_size = q.shape
    kc = decode[key_cache] * k_scale if decode is not None else np.asarray(key_cache, dtype=np.float64)
    vc = decode[value_cache] * v_scale if decode is not None else np.asarray(value_cache, dtype=np.float64)
    num_kv_heads = kc.shape[1]
    group = num_heads // num_kv_heads
    out = np.zeros((num_seqs, num_heads, head_size))
    for i in range(num_seqs):
        L = int(seq_lens[i])
        if L == 0:
            continue
        for h in range(num_heads):
            k, v = gather_kv(kc, vc, block_tables[i], L, h // group, block_size)
            s = scale * (k @ q[i, h])
            if alibi_slopes is not None:
                s = s + float(alibi_slopes[h]) * (np.arange(L) - L + 1)
            w = np.exp(s - s.max())
            out[i, h] = (w @ v) / w.sum()
    return out


class Case:
    """A random attention problem in vLLM layout. Cache slots no sequence may read hold NaN,
    so a result that touches memory past a sequence's end shows it."""

    def __init__(self, rng, seq_lens, num_heads=4, num_kv_heads=2, head_size=64, block_size=16,
                 dtype=np.float32, alibi=False, cache_bytes=False, extra_blocks=3):
        self.seq_lens = np.asarray(seq_lens, dtype=np.int32)
        self.num_seqs = len(seq_lens)
        self.num_heads, self.num_kv_heads, self.head_size = num_heads, num_kv_heads, head_size
        self.block_size = block_size
        self.max_seq_len = int(self.seq_lens.max()) if self.num_seqs else 1
        self.max_blocks = max(1, math.ceil(self.max_seq_len / block_size))
        used = sum(math.ceil(int(L) / block_size) for L in self.seq_lens)
        self.num_blocks = used + extra_blocks
        cache_dtype = np.uint8 if cache_bytes else dtype
        x = x_of(np.dtype(cache_dtype).itemsize)
        nb, nkv, hs, bs = self.num_blocks, num_kv_heads, head_size, block_size
        if cache_bytes:
            # Finite fp8 codes only (0x7F/0xFF are NaN in E4M3; keep to small magnitudes).
            self.key_cache = rng.integers(0, 0x60, size=(nb, nkv, hs // x, bs, x), dtype=np.uint8)
            self.value_cache = rng.integers(0, 0x60, size=(nb, nkv, hs, bs), dtype=np.uint8)
            self.key_cache |= (rng.integers(0, 2, size=self.key_cache.shape, dtype=np.uint8) << 7)
            self.value_cache |= (rng.integers(0, 2, size=self.value_cache.shape, dtype=np.uint8) << 7)
        else:
            self.key_cache = np.full((nb, nkv, hs // x, bs, x), np.nan, dtype=dtype)
            self.value_cache = np.full((nb, nkv, hs, bs), np.nan, dtype=dtype)
        self.block_tables = np.zeros((self.num_seqs, self.max_blocks), dtype=np.int32)
        perm = rng.permutation(nb)
        nxt = 0
        for i, L in enumerate(self.seq_lens):
            nblk = math.ceil(int(L) / bs)
            for b in range(nblk):
                blk = perm[nxt]
                nxt += 1
                self.block_tables[i, b] = blk
                if not cache_bytes:
                    valid = min(bs, int(L) - b * bs)  # tokens of this block inside the sequence
                    k = rng.standard_normal((nkv, hs, valid))
                    kk = self.key_cache[blk]
                    kk[:, :, :valid, :] = k.reshape(nkv, hs // x, x, valid).transpose(0, 1, 3, 2)
                    self.value_cache[blk, :, :, :valid] = rng.standard_normal((nkv, hs, valid))
        self.query = rng.standard_normal((self.num_seqs, num_heads, head_size)).astype(dtype)
        self.alibi = rng.uniform(-0.5, 0.0, size=num_heads).astype(np.float32) if alibi else None
        self.scale = 1.0 / math.sqrt(head_size)
        self.dtype = dtype

    def out(self):
        return np.full((self.num_seqs, self.num_heads, self.head_size), np.nan, dtype=self.dtype)

    def args(self, kv_cache_dtype="auto", k_scale=1.0, v_scale=1.0):
        """Arguments after `out` (or after V2's workspaces), in SPEC §5 order."""
        return (self.query, self.key_cache, self.value_cache, self.num_kv_heads, self.scale, self.block_tables,
                self.seq_lens, self.block_size, self.max_seq_len, self.alibi, kv_cache_dtype, k_scale, v_scale)

    def reference(self, decode=None, k_scale=1.0, v_scale=1.0, query=None):
        return attention(self.query if query is None else query, self.key_cache, self.value_cache,
                         self.block_tables, self.seq_lens, self.scale, self.block_size, self.alibi, decode, k_scale,
                         v_scale)


def tolerance(dtype):
    """(atol, rtol) for outputs of magnitude <= ~1: float32 accumulation, rounded to `dtype`."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    return {"float32": (2e-5, 1e-4), "float16": (2e-3, 2e-3), "bfloat16": (1.6e-2, 1.6e-2)}[name]
