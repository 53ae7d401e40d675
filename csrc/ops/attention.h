// Scaled dot-product attention over every (batch, head) pair, split over sparsecpu's pool: the op
// behind sparsecpu's attention for Hugging Face models. Front doors describe a call (AttentionCall)
// and run it through an AttentionRequest, which checks it; see AttnParams in kernels/kernels.h for
// what the kernels then take.
#pragma once
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "ops/linear.h"
#include "ops/request.h"

namespace sparsecpu {

// The precision a caller accepts. fp32: op attention_f32. bf16: op attention_bf16 (Q, K, V and the softmax
// weights in bf16, sums in fp32; within cosine 0.9999 of fp32 on BERT-base and GPT-2) where the active
// level has a kernel of its own for it (AMX-BF16 tiles) and at the reference level (its specification);
// at the other levels the fp32 kernel, which is as fast there and exact.
enum class AttnPrecision { fp32, bf16 };
// "fp32" or "bf16", as both front doors name it (else std::invalid_argument).
AttnPrecision parse_precision(const std::string& name);

// The arguments of one attention call as a front door receives them: q [B, H, Sq, D], k [B, H, Skv, D]
// (or K^T [B, H, D, Skv] with k_transposed), v [B, H, Skv, D], float32 with any strides, the last dim
// contiguous in q and v (k: any); mask M, optional, float32 (added to the scores) or bool (true =
// attend), 4-D, each dim that of the scores [B, H, Sq, Skv] or 1 (broadcast); scale finite.
// O = softmax(scale q k^T + M) v per (batch, head) pair; a query row with no key to attend to gets zeros.
struct AttentionCall {
  TensorArg q, k, v, mask;
  bool k_transposed = false;
  float scale = 1.0f;
  AttnPrecision precision = AttnPrecision::fp32;
};

// An attention call checked; it runs once given its output. Each fault of the call throws
// std::invalid_argument with one text, the same from every front door.
class AttentionRequest {
 public:
  // Every check of the call.
  explicit AttentionRequest(const AttentionCall& call);

  // The checks that need no input: the scale. ONNX Runtime runs them on a node's attributes when it
  // creates the kernel.
  static void check_settings(const AttentionCall& call);

  // q's dims [B, H, Sq, D]: the output's.
  const std::vector<int64_t>& out_dims() const { return out_dims_; }

  // Where run() writes: a float32 tensor of out_dims() with any strides, its last dim contiguous
  // (checked like the arguments).
  void set_out(const TensorArg& out);

  // Computes the output set by set_out, over `parallel` (null: sparsecpu's own pool).
  void run(const ParallelFor* parallel = nullptr) const;

 private:
  AttnParams p_{};
  AttnPrecision precision_;
  std::vector<int64_t> out_dims_;
};

// The kernel attention runs at the active level for that precision.
const char* attention_kernel_name(AttnPrecision precision = AttnPrecision::fp32);

}  // namespace sparsecpu
