// Scaled dot-product attention over every (batch, head) pair, split over sparsecpu's pool: the op
// behind sparsecpu's attention for Hugging Face models. Shapes and strides come checked by the
// front door; see AttnParams in kernels/kernels.h for the contract.
#pragma once
#include "kernels/kernels.h"
#include "ops/linear.h"

namespace sparsecpu {

// The precision a caller accepts. fp32: op attention_f32. bf16: op attention_bf16 (Q, K, V and the softmax
// weights in bf16, sums in fp32; within cosine 0.9999 of fp32 on BERT-base and GPT-2) where the active
// level has a kernel of its own for it (AMX-BF16 tiles) and at the reference level (its specification);
// at the other levels the fp32 kernel, which is as fast there and exact.
enum class AttnPrecision { fp32, bf16 };

// parallel: another runtime's pool to split the pairs over (ONNX Runtime's); null: sparsecpu's own.
void attention(const AttnParams& p, const ParallelFor* parallel = nullptr,
               AttnPrecision precision = AttnPrecision::fp32);

// The kernel attention() runs at the active level.
const char* attention_kernel_name(AttnPrecision precision = AttnPrecision::fp32);

}  // namespace sparsecpu
