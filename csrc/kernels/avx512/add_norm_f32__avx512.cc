// The residual add + LayerNorm pass (op add_norm_f32), with AVX-512.
#include "kernels/avx512/vec512.h"
#include "kernels/epilogue.h"

namespace sparsecpu {

SPARSECPU_KERNELS_BEGIN
void add_norm_f32__avx512(float* y, const float* r, int64_t rows, int64_t n, const float* gamma, const float* beta,
                          float eps) {
  add_norm_f32<Vec512>(y, r, rows, n, gamma, beta, eps);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
