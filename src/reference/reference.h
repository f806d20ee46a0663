// float64 CPU reference of SPEC §3 and §3b: the oracle every backend is judged against.
// Reads host-resident tensors through the same PagedAttentionParams the API takes (any
// strides the API accepts), decodes f16/bf16/fp8 exactly, and computes in double.
// It implements the semantics and nothing else: no speed tricks, and no code shared with
// the library it judges (src/core is not used for the rules).
//
// Query rows (SPEC §3b): without query_start_loc, row i is sequence i with one token at
// position seq_lens[i] - 1. With query_start_loc (int32 [num_seqs + 1], host memory here),
// sequence i owns rows query_start_loc[i] .. query_start_loc[i+1] - 1 and its row j sits at
// position seq_lens[i] - q_len_i + j. num_seqs is seq_lens.shape[0]; the row count is
// query.shape[0]. A row attends the tokens t <= p that the window and block-sparsity keep.
#pragma once

#include <cstdint>
#include <vector>

#include "pagedattn/attention.h"

namespace pagedattn::ref {

/// One query row: the sequence that owns it and the cache position of its token. A row no
/// sequence owns (query.shape[0] past query_start_loc's last entry) has seq = -1.
struct QueryRow {
  int seq = -1;
  std::int64_t pos = -1;
};

/// Every query row of `p`, in row order ([query.shape[0]] entries).
std::vector<QueryRow> query_rows(const PagedAttentionParams& p);

/// Final attention output, [num_rows, num_heads, head_size] row-major, in double, for every
/// variant of SPEC §3b. A row that attends no token (seq_len 0, everything masked, or a row
/// no sequence owns) gives zeros. A NaN in the query row, an attended key or an attended value
/// makes the row's output NaN.
std::vector<double> attention(const PagedAttentionParams& p);

/// Log-sum-exp of the attended logits, [num_rows, num_heads]: ln sum_t exp(s_t); -inf for a
/// row that attends nothing.
std::vector<double> lse(const PagedAttentionParams& p);

/// V2 partial results (SPEC §3) for partitions of `partition_size` tokens. V1/V2 contract
/// only: one query token per sequence, no §3b variants.
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

/// The logits of query row `row`, head `head`: s_t for t = 0 .. seq_len - 1 of the row's
/// sequence (scale * q.k, soft-cap, + alibi * (t - p)), with every masked token (causal,
/// window, block-sparse) set to -inf. Without query_start_loc the row is the sequence.
/// Empty for a row no sequence owns.
std::vector<double> logits(const PagedAttentionParams& p, int row, int head);

/// True when block-sparsity (SPEC §3) lets query head `head` of a sequence of length
/// `seq_len` attend the cache block whose first token is `t0` (the one-token rule: the query
/// sits at seq_len - 1). Always true when sparsity is off.
bool block_attended(const PagedAttentionParams& p, int seq_len, int head, int t0);

/// The same rule for a query token at position `pos` (SPEC §3b: qb = pos / block size).
bool block_attended_at(const PagedAttentionParams& p, std::int64_t pos, int head, std::int64_t t0);

/// Two attention states over disjoint key sets merged by their log-sum-exp (SPEC §3b).
struct MergedStates {
  std::vector<double> out;  ///< [rows * num_heads * head_size]
  std::vector<double> lse;  ///< [rows * num_heads]
};

/// out_x: [n * head_size], lse_x: [n] (n = rows * num_heads). M = max(lse_a, lse_b),
/// w_x = exp(lse_x - M), out = (w_a out_a + w_b out_b) / (w_a + w_b), lse = M + ln(w_a + w_b).
/// A state whose lse is -inf contributes nothing (its out is not read); two give zeros and
/// -inf. A NaN lse makes the merged row NaN.
MergedStates merge_states(const std::vector<double>& out_a, const std::vector<double>& lse_a,
                          const std::vector<double>& out_b, const std::vector<double>& lse_b, int head_size);

/// Reads element `i` of a float32/float16/bfloat16 host array as double (exact).
double load_as_double(const void* base, DType t, std::int64_t i);

}  // namespace pagedattn::ref
