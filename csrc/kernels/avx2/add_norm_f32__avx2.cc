// The residual add + LayerNorm pass (op add_norm_f32), with AVX2.
#include "kernels/avx2/vec256.h"
#include "kernels/epilogue.h"

namespace sparsecpu {

void add_norm_f32__avx2(float* y, const float* r, int64_t rows, int64_t n, const float* gamma, const float* beta,
                        float eps) {
  add_norm_f32<Vec256>(y, r, rows, n, gamma, beta, eps);
}

}  // namespace sparsecpu
