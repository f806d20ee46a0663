// A program outside the project: links the installed library and calls the public API.
#include <cmath>
#include <cstdio>
#include <vector>

#include <pagedattn/pagedattn.h>

int main() {
  using namespace pagedattn;
  // One sequence of 3 tokens, 1 head of size 32, block size 8, float32 cache (x = 4).
  const int D = 32, bs = 8, x = 4, L = 3;
  std::vector<float> q(D, 0.0f), out(D, -1.0f), kc(D * bs, 0.0f), vc(D * bs, 0.0f);
  for (int t = 0; t < L; ++t)
    for (int d = 0; d < D; ++d) vc[d * bs + t] = float(t + 1);  // every value vector is (t+1)
  std::vector<int> bt = {0}, lens = {L};
  PagedAttentionParams p;
  p.out = TensorView::contiguous(out.data(), DType::kFloat32, {1, 1, D});
  p.query = TensorView::contiguous(q.data(), DType::kFloat32, {1, 1, D});
  p.key_cache = TensorView::contiguous(kc.data(), DType::kFloat32, {1, 1, D / x, bs, x});
  p.value_cache = TensorView::contiguous(vc.data(), DType::kFloat32, {1, 1, D, bs});
  p.block_tables = TensorView::contiguous(bt.data(), DType::kInt32, {1, 1});
  p.seq_lens = TensorView::contiguous(lens.data(), DType::kInt32, {1});
  p.num_kv_heads = 1;
  p.block_size = bs;
  p.max_seq_len = L;
  p.scale = 1.0f;
  paged_attention_v1(p);
  // q = 0: uniform softmax over 3 tokens, output = mean(1, 2, 3) = 2.
  for (float v : out)
    if (std::fabs(v - 2.0f) > 1e-6f) {
      std::printf("wrong output %f\n", v);
      return 1;
    }
  try {
    p.block_size = 12;
    paged_attention_v1(p);
    return 1;
  } catch (const Error& e) {
    std::printf("consumer ok (pagedattn %s; error path: %s)\n", version(), e.what());
  }
  return 0;
}
