// Reference kernel for dynamic per-row u8 quantization of x, written K-major (op quant_u8): plain C++, the
// specification the vector kernels are tested against.
#include "kernels/reference/reference.h"

namespace sparsecpu {

bool quant_u8_kmajor__ref(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, uint8_t* xq,
                          int64_t ldq, float* scale, int32_t* zp, float* absmax) {
  bool finite = true;
  for (int64_t m = m0; m < m1; ++m) {
    if (m >= M) {
      scale[m] = 1.0f;
      zp[m] = 0;
      if (absmax) absmax[m] = 0.0f;
      for (int64_t k = 0; k < K; ++k) xq[k * ldq + m] = 0;
      continue;
    }
    const float* row = x + m * K;
    RowQParams q;
    finite &= quant_row_ref(row, K, &q, absmax ? absmax + m : nullptr);
    scale[m] = q.scale;
    zp[m] = q.zp;
    for (int64_t k = 0; k < K; ++k) xq[k * ldq + m] = quantize_u8(row[k], q);
  }
  return finite;
}

}  // namespace sparsecpu
