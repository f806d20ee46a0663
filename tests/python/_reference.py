"""Float64 NumPy reference of SPEC §3 and §3b for the Python tests, plus case builders.

Written from the spec, independent of the library: gathers each sequence's keys/values from
the vLLM cache layout and, per query row and head, applies the logit rule (scale, soft-cap,
ALiBi), the masks (causal position, sliding window, block-sparse) and a plain stable softmax in
float64; the log-sum-exp and the merge of two states follow SPEC §3b literally.
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


def sparse_block_attended(p, t, h, g, block_size, num_heads, num_kv_heads, tp_rank, local_blocks, vert_stride,
                          sparse_block_size, head_sliding_step):
    """SPEC §3 block-sparse rule for the cache block holding token t, seen from a query row at
    position p (SPEC §3b: the query block comes from p), query head h of kv head g."""
    B = sparse_block_size
    qb = p // B
    kb = (t // block_size) * block_size // B  # sparse block of the cache block's first token
    if kb > qb - local_blocks:
        return True
    step = head_sliding_step
    off = (tp_rank * num_heads + h) * step + 1 if step >= 0 else (tp_rank * num_kv_heads + g) * (-step) + 1
    return (kb + off) % vert_stride == 0


def per_head(scale, ndim):
    """A per-tensor scale as is; a per-kv-head array shaped to broadcast over dimension 1 of a
    cache of `ndim` dimensions."""
    a = np.asarray(scale, dtype=np.float64)
    if a.ndim == 0 or a.size == 1:
        return float(a.reshape(-1)[0])
    return a.reshape((1, -1) + (1,) * (ndim - 2))


def attention(query, key_cache, value_cache, block_tables, seq_lens, scale, block_size, alibi_slopes=None,
              decode=None, k_scale=1.0, v_scale=1.0, *, query_start_loc=None, window_left=-1, logits_soft_cap=0.0,
              blocksparse=None, tp_rank=0, with_lse=False):
    """SPEC §3 and §3b in float64: (out, lse) with `with_lse`, else out.

    `decode` maps a uint8 cache to values (fp8); None = cache as is. `k_scale`/`v_scale`: a number
    or a per-kv-head array. Rows: one per sequence at p = L - 1, or, with `query_start_loc`,
    q_len_i rows for sequence i at p = L - q_len_i + j. Per row and head: s = scale * q.k, then
    soft-cap, + alibi[h] * (t - p); attended t: t <= p, t >= p - window_left (window_left >= 0),
    and the block-sparse rule (`blocksparse` = (local_blocks, vert_stride, block_size,
    head_sliding_step), on when vert_stride > 1). A row that attends nothing gives zeros and
    lse -inf. NaNs propagate as plain arithmetic propagates them.
    """
    q = np.asarray(query, dtype=np.float64)
    rows, num_heads, head_size = q.shape
    if decode is not None:
        kc = decode[key_cache] * per_head(k_scale, key_cache.ndim)
        vc = decode[value_cache] * per_head(v_scale, value_cache.ndim)
    else:
        kc = np.asarray(key_cache, dtype=np.float64)
        vc = np.asarray(value_cache, dtype=np.float64)
    num_kv_heads = kc.shape[1]
    group = num_heads // num_kv_heads
    num_seqs = len(seq_lens)
    qsl = np.arange(num_seqs + 1) if query_start_loc is None else np.asarray(query_start_loc, dtype=np.int64)
    sparse = blocksparse is not None and blocksparse[1] > 1
    out = np.zeros((rows, num_heads, head_size))
    lse = np.full((rows, num_heads), -np.inf)
    for i in range(num_seqs):
        L = int(seq_lens[i])
        first, q_len = int(qsl[i]), int(qsl[i + 1] - qsl[i])
        if L == 0:
            continue
        for h in range(num_heads):
            g = h // group
            k, v = gather_kv(kc, vc, block_tables[i], L, g, block_size)
            for j in range(q_len):
                r, p = first + j, L - q_len + j
                t = np.arange(L)
                keep = t <= p
                if window_left >= 0:
                    keep &= t >= p - window_left
                if sparse:
                    keep &= np.array([sparse_block_attended(p, int(tt), h, g, block_size, num_heads, num_kv_heads,
                                                            tp_rank, *blocksparse) for tt in t])
                if not keep.any():
                    continue
                t = t[keep]
                s = scale * (k[keep] @ q[r, h])
                if logits_soft_cap > 0:
                    s = logits_soft_cap * np.tanh(s / logits_soft_cap)
                if alibi_slopes is not None:
                    s = s + float(alibi_slopes[h]) * (t - p)
                m = s.max()
                w = np.exp(s - m)
                out[r, h] = (w @ v[keep]) / w.sum()
                lse[r, h] = m + np.log(w.sum())
    return (out, lse) if with_lse else out


def merge(out_a, lse_a, out_b, lse_b):
    """SPEC §3b merge of two states in float64: (out, lse). A -inf state contributes nothing
    (whatever its out holds); two -inf give zeros and -inf."""
    oa, ob = np.asarray(out_a, np.float64), np.asarray(out_b, np.float64)
    la, lb = np.asarray(lse_a, np.float64), np.asarray(lse_b, np.float64)
    M = np.maximum(la, lb)
    empty = M == -np.inf
    Ms = np.where(empty, 0.0, M)
    wa = np.where(la == -np.inf, 0.0, np.exp(la - Ms))
    wb = np.where(lb == -np.inf, 0.0, np.exp(lb - Ms))
    tot = np.where(empty, 1.0, wa + wb)
    ta = np.where((wa == 0)[..., None], 0.0, wa[..., None] * oa)
    tb = np.where((wb == 0)[..., None], 0.0, wb[..., None] * ob)
    out = (ta + tb) / tot[..., None]
    lse = np.where(empty, -np.inf, Ms + np.log(tot))
    return out, lse


class Case:
    """A random attention problem in vLLM layout. Cache slots no sequence may read hold NaN,
    so a result that touches memory past a sequence's end shows it."""

    def __init__(self, rng, seq_lens, num_heads=4, num_kv_heads=2, head_size=64, block_size=16,
                 dtype=np.float32, alibi=False, cache_bytes=False, extra_blocks=3, q_lens=None):
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
        # Query rows: one per sequence, or q_lens[i] for sequence i (SPEC §3b, query_start_loc).
        if q_lens is None:
            self.query_start_loc = None
            self.rows = self.num_seqs
        else:
            assert len(q_lens) == self.num_seqs and all(0 <= q <= L for q, L in zip(q_lens, self.seq_lens))
            self.query_start_loc = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
            self.rows = int(self.query_start_loc[-1])
            self.max_query_len = int(max(q_lens)) if len(q_lens) else 0
        self.query = rng.standard_normal((self.rows, num_heads, head_size)).astype(dtype)
        self.alibi = rng.uniform(-0.5, 0.0, size=num_heads).astype(np.float32) if alibi else None
        self.scale = 1.0 / math.sqrt(head_size)
        self.dtype = dtype

    def out(self):
        return np.full((self.rows, self.num_heads, self.head_size), np.nan, dtype=self.dtype)

    def lse(self):
        """An lse output buffer, NaN-filled so an unwritten entry shows."""
        return np.full((self.rows, self.num_heads), np.nan, dtype=np.float32)

    def args(self, kv_cache_dtype="auto", k_scale=1.0, v_scale=1.0):
        """Arguments after `out` (or after V2's workspaces), in SPEC §5 order."""
        return (self.query, self.key_cache, self.value_cache, self.num_kv_heads, self.scale, self.block_tables,
                self.seq_lens, self.block_size, self.max_seq_len, self.alibi, kv_cache_dtype, k_scale, v_scale)

    def reference(self, decode=None, k_scale=1.0, v_scale=1.0, query=None, **variants):
        """float64 reference; `variants` are attention()'s keywords (query_start_loc defaults to
        the case's own)."""
        variants.setdefault("query_start_loc", self.query_start_loc)
        return attention(self.query if query is None else query, self.key_cache, self.value_cache,
                         self.block_tables, self.seq_lens, self.scale, self.block_size, self.alibi, decode, k_scale,
                         v_scale, **variants)


def tolerance(dtype):
    """(atol, rtol) for outputs of magnitude <= ~1: float32 accumulation, rounded to `dtype`."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    return {"float32": (2e-5, 1e-4), "float16": (2e-3, 2e-3), "bfloat16": (1.6e-2, 1.6e-2)}[name]
