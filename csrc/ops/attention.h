// Scaled dot-product attention over every (batch, head) pair, split over sparsecpu's pool: the op
// behind sparsecpu's attention for Hugging Face models. Shapes and strides come checked by the
// front door; see AttnParams in kernels/kernels.h for the contract.
#pragma once
#include "kernels/kernels.h"
#include "ops/linear.h"

namespace sparsecpu {

// parallel: another runtime's pool to split the pairs over (ONNX Runtime's); null: sparsecpu's own.
void attention(const AttnParams& p, const ParallelFor* parallel = nullptr);

// The kernel attention() runs at the active level.
const char* attention_kernel_name();

}  // namespace sparsecpu
