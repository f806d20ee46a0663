"""BlockManager prefix caching through the Python binding: reuse, LRU eviction, watermark,
counters, and a randomized run against a model that keys cached content by its whole token
prefix (seed printed on failure; PAGEDATTN_TEST_SEED reproduces a run)."""
import os
import random
from collections import deque

import numpy as np
import pytest

import pagedattn


def test_prefix_reuse_and_counters():
    bm = pagedattn.BlockManager(num_blocks=10, block_size=4)
    prompt = list(range(100, 110))
    slots, cached = bm.allocate(1, prompt)
    assert cached == 0 and len(slots) == 10 and bm.num_cached_blocks == 2
    h0 = pagedattn.BlockManager.hash_block(0, prompt[:4])
    assert bm.cached_block_hash(0) == h0
    assert bm.cached_block_hash(1) == pagedattn.BlockManager.hash_block(h0, prompt[4:8])
    assert bm.cached_block_hash(2) is None  # partial block
    assert bm.num_cached_prefix_tokens(prompt[:8] + [7]) == 8
    assert bm.can_allocate(prompt) and bm.can_allocate(10)
    slots2, cached2 = bm.allocate(2, prompt[:8] + [7])
    assert cached2 == 8 and bm.block_table(2)[:2] == bm.block_table(1)[:2]
    assert bm.ref_count(0) == 2
    bm.free(1)
    bm.free(2)
    assert bm.num_free_blocks == 10 and bm.num_evictable_blocks == 2 and bm.num_uncached_free_blocks == 8
    _, cached3 = bm.allocate(3, np.arange(100, 108, dtype=np.int32).tolist())
    assert cached3 == 8 and bm.num_evictable_blocks == 0
    # appending after a full cached block opens a new block; the filled one is registered
    slots4, copies = bm.append_tokens(3, [108, 109, 110, 111])
    assert copies == [] and slots4[0] == bm.block_table(3)[2] * 4 and bm.num_cached_blocks == 3
    slot, copy = bm.append_slot(3, 5)
    assert copy is None
    assert bm.prefix_cache_stats == dict(queries=3, query_tokens=10 + 9 + 8, query_blocks=6, hit_tokens=16,
                                         hit_blocks=4, evictions=0)
    bm.reset_prefix_cache_stats()
    assert set(bm.prefix_cache_stats.values()) == {0}
    bm.free(3)
    assert bm.reset_prefix_cache() == 3
    assert bm.num_cached_blocks == 0 and bm.num_uncached_free_blocks == 10


def test_lru_eviction_and_watermark():
    bm = pagedattn.BlockManager(4, 2)
    bm.allocate(1, [1, 2, 3, 4])  # blocks 0, 1
    bm.allocate(2, [5, 6])  # block 2
    bm.free(1)  # eviction order: 1, 0
    bm.free(2)  # then 2
    bm.allocate(3, 4)  # the uncached block 3, then evicts block 1
    assert bm.block_table(3) == [3, 1] and bm.prefix_cache_stats["evictions"] == 1
    assert bm.num_cached_prefix_tokens([1, 2, 3, 4]) == 2 and bm.num_cached_prefix_tokens([5, 6]) == 2

    bm.set_watermark(0.5)
    assert bm.watermark_blocks == 2
    assert not bm.can_allocate(1)  # 2 free, 1 needed would leave 1
    with pytest.raises(pagedattn.PagedAttnError, match="the watermark keeps 2 free"):
        bm.allocate(4, [9])
    assert bm.prefix_cache_stats["queries"] == 2  # a refused allocation is no query
    bm.set_watermark_blocks(1)
    # reusing unreferenced block 2 costs a free block too: 2 needed, 2 free, 1 kept
    assert not bm.can_allocate([5, 6, 7])
    bm.set_watermark_blocks(0)
    _, cached = bm.allocate(4, [5, 6, 7])
    assert cached == 2 and bm.block_table(4)[0] == 2 and bm.num_free_blocks == 0
    with pytest.raises(pagedattn.PagedAttnError):
        bm.set_watermark(2.0)
    # appends ignore the watermark; a shared partial block is still copied on write
    bm.free(3)
    bm.fork(4, 5)
    slots, copies = bm.append_tokens(5, [8])
    assert len(copies) == 1 and copies[0][0] == bm.block_table(4)[1]


def _seed():
    env = os.environ.get("PAGEDATTN_TEST_SEED")
    return int(env, 0) if env else random.SystemRandom().randrange(2**63)


def test_randomized_against_model():
    seed = _seed()
    try:
        _run_model(random.Random(seed))
    except AssertionError as e:
        raise AssertionError(f"PAGEDATTN_TEST_SEED={seed} reproduces this run: {e}") from e


def _run_model(rng):
    for _ in range(12):
        nb, bs, vocab = rng.randint(1, 16), rng.randint(1, 3), rng.randint(1, 3)
        bm = pagedattn.BlockManager(nb, bs)
        memory = [[-1] * bs for _ in range(nb)]
        seqs = {}  # id -> [tokens, tracked]
        cache, cached_block = {}, {}  # prefix tuple -> block, block -> prefix tuple
        lru = deque()
        stats = dict(queries=0, query_tokens=0, query_blocks=0, hit_tokens=0, hit_blocks=0, evictions=0)
        wm = 0

        def refs():
            r = [0] * nb
            for i in seqs:
                for b in bm.block_table(i):
                    r[b] += 1
            return r

        def take(n, uncached):
            for _ in range(max(0, n - uncached)):
                b = lru.popleft()
                del cache[cached_block.pop(b)]
                stats["evictions"] += 1

        def register(i, lo, hi):
            toks, tracked = seqs[i]
            if not tracked:
                return
            for k in range(lo, hi):
                key = tuple(toks[: (k + 1) * bs])
                if key not in cache:
                    cache[key] = bm.block_table(i)[k]
                    cached_block[cache[key]] = key

        def write(slots, toks, first):
            for j, s in enumerate(slots):
                memory[s // bs][s % bs] = toks[first + j]

        for step in range(200):
            i = rng.randint(0, 5)
            live = i in seqs
            r0 = refs()
            free = nb - sum(1 for x in r0 if x)
            uncached = free - len(lru)
            op = rng.randint(0, 7)
            if op <= 2:
                toks = [rng.randint(0, vocab - 1) for _ in range(rng.randint(0, 4 * bs))]
                hits = 0
                while hits < len(toks) // bs and tuple(toks[: (hits + 1) * bs]) in cache:
                    hits += 1
                hit_blocks = [cache[tuple(toks[: (k + 1) * bs])] for k in range(hits)]
                fresh = -(-len(toks) // bs) - hits
                need = fresh + sum(1 for b in hit_blocks if r0[b] == 0)
                ok = not live and need + wm <= free
                assert bm.num_cached_prefix_tokens(toks) == hits * bs
                assert bm.can_allocate(toks) == (need + wm <= free)
                try:
                    slots, cached = bm.allocate(i, toks)
                except pagedattn.PagedAttnError:
                    assert not ok, f"step {step}: allocate refused"
                    continue
                assert ok, f"step {step}: allocate accepted"
                for b in hit_blocks:
                    if b in lru:
                        lru.remove(b)
                take(fresh, uncached)
                stats["queries"] += 1
                stats["query_tokens"] += len(toks)
                stats["query_blocks"] += len(toks) // bs
                stats["hit_blocks"] += hits
                stats["hit_tokens"] += hits * bs
                assert cached == hits * bs and bm.block_table(i)[:hits] == hit_blocks
                seqs[i] = [list(toks), True]
                write(slots[cached:], toks, cached)
                register(i, hits, len(toks) // bs)
            elif op <= 4 and live:
                toks, tracked = seqs[i]
                n, with_ids = rng.randint(0, 2 * bs), rng.random() < 0.8
                L = len(toks)
                need = -(-(L + n) // bs) - (-(-L // bs))
                last = bm.block_table(i)[-1] if L else -1
                if n and L % bs and (r0[last] > 1 or last in cached_block):
                    need += 1
                assert bm.blocks_needed_to_append(i, n) == need
                new = [rng.randint(0, vocab - 1) for _ in range(n)]
                try:
                    slots, copies = bm.append_tokens(i, new) if with_ids else bm.append_tokens(i, n)
                except pagedattn.PagedAttnError:
                    assert need > free, f"step {step}: append refused"
                    continue
                assert need <= free, f"step {step}: append accepted"
                take(need, uncached)
                for src, dst in copies:
                    memory[dst] = list(memory[src])
                    if r0[src] == 1:
                        lru.append(src)
                toks.extend(new)
                write(slots, toks, L)
                if with_ids:
                    register(i, L // bs, (L + n) // bs)
                elif n:
                    seqs[i][1] = False
            elif op == 5 and live:
                c = rng.randint(0, 5)
                if c in seqs:
                    continue
                n = rng.randint(0, len(seqs[i][0]))
                bm.fork_prefix(i, c, n)
                seqs[c] = [seqs[i][0][:n], seqs[i][1]]
            elif op == 6 and live:
                table = bm.block_table(i)
                bm.free(i)
                r = list(r0)
                for b in reversed(table):
                    r[b] -= 1
                    if r[b] == 0 and b in cached_block:
                        lru.append(b)
                del seqs[i]
            elif op == 7:
                if rng.random() < 0.7:
                    wm = rng.randint(0, nb // 3)
                    bm.set_watermark_blocks(wm)
                else:
                    assert bm.reset_prefix_cache() == len(cache)
                    cache.clear()
                    cached_block.clear()
                    lru.clear()
            r = refs()
            assert [bm.ref_count(b) for b in range(nb)] == r, f"step {step}: ref counts"
            assert bm.num_free_blocks == nb - sum(1 for x in r if x)
            assert bm.num_evictable_blocks == len(lru) and all(r[b] == 0 for b in lru)
            assert bm.num_cached_blocks == len(cache)
            assert [bm.cached_block_hash(b) is not None for b in range(nb)] == [b in cached_block for b in range(nb)]
            assert bm.prefix_cache_stats == stats, f"step {step}: counters"
            for sid, (toks, _) in seqs.items():
                got = [memory[s // bs][s % bs] for s in (bm.slot(sid, t) for t in range(len(toks)))]
                assert got == toks, f"step {step}: sequence {sid} reads back other tokens"
