// fp32 x to K-major for the fp32 SpMM kernels (op transpose_f32), with AVX2.
#include "kernels/avx2/vec256.h"
#include "kernels/activation_passes.h"

namespace sparsecpu {

bool transpose_f32_kmajor__avx2(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, float* xt,
                                int64_t ldt) {
  return transpose_f32_kmajor<Vec256>(x, M, K, m0, m1, xt, ldt);
}

}  // namespace sparsecpu
