// float64 CPU reference of SPEC §3: the oracle every backend is judged against.
// Reads host-resident tensors through the same PagedAttentionParams the API takes (any
// strides the API accepts), decodes f16/bf16/fp8 exactly, and computes in double.
// It implements the semantics and nothing else: no speed tricks.
#pragma once

#include <cstdint>
#include <vector>

#include "pagedattn/attention.h"

namespace pagedattn::ref {

/// Final attention output, [num_seqs, num_heads, head_size] row-major, in double.
/// A sequence with seq_len 0 (or with every token masked by block-sparsity) gives zeros.
std::vector<double> attention(const PagedAttentionParams& p);

/// V2 partial results (SPEC §3) for partitions of `partition_size` tokens.
struct Partials {
  int num_seqs = 0, num_heads = 0, head_size = 0;
  int num_partitions = 0;          ///< ceil(max_seq_len / partition_size), at least 1
  std::vector<double> max_logits;  ///< [num_seqs, num_heads, num_partitions]; -inf where no token is attended
  std::vector<double> exp_sums;    ///< [num_seqs, num_heads, num_partitions]; 0 where no token is attended
  std::vector<double> out;         ///< [num_seqs, num_heads, num_partitions, head_size]; normalised o_j, 0 if l_j == 0
  std::vector<int> valid;          ///< [num_seqs, num_heads, num_partitions]; 1 if the partition starts before seq_len
};

/// Per-partition step of V2 (kernel 1's job).
Partials attention_partitions(const PagedAttentionParams& p, int partition_size = kPartitionSize);

/// Reduce step of V2 (kernel 2's job): merges the valid partitions of each (seq, head).
/// `seq_lens` has num_seqs entries. Output as attention().
std::vector<double> reduce_partitions(const Partials& parts, const std::int32_t* seq_lens, int partition_size = kPartitionSize);

/// The logits s_t (scale * q.k + alibi) of one (seq, head), with masked tokens set to -inf.
std::vector<double> logits(const PagedAttentionParams& p, int seq, int head);

/// True when block-sparsity (SPEC §3) lets query head `head` of a sequence of length
/// `seq_len` attend the cache block whose first token is `t0`. Always true when sparsity is off.
bool block_attended(const PagedAttentionParams& p, int seq_len, int head, int t0);

/// Reads element `i` of a float32/float16/bfloat16 host array as double (exact).
double load_as_double(const void* base, DType t, std::int64_t i);

}  // namespace pagedattn::ref
