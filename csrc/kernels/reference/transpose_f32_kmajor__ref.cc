// Reference kernel for fp32 x to K-major (op transpose_f32): plain C++, the specification the vector kernels
// are tested against.
#include "kernels/reference/reference.h"

namespace sparsecpu {

bool transpose_f32_kmajor__ref(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, float* xt,
                               int64_t ldt) {
  bool finite = true;
  for (int64_t m = m0; m < m1; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      const float v = m < M ? x[m * K + k] : 0.0f;
      finite &= std::isfinite(v);
      xt[k * ldt + m] = v;
    }
  }
  return finite;
}

}  // namespace sparsecpu
