// Reference dense int8 GEMM: plain C++, the executable specification of the dense panel layout
// (format.h) and of the row-kernel contract (kernels.h).
#include "kernels/reference/reference.h"

namespace sparsecpu {

void gemm_s8__ref(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  const auto* vals = static_cast<const int8_t*>(p.w.values);
  const int64_t kq = static_cast<int64_t>(p.w.kq), P = static_cast<int64_t>(kDensePanel);
  for (int64_t panel = c0; panel < c1; ++panel) {
    const int8_t* w = vals + panel * kq * P * 4;
    for (int64_t m = m0; m < m1; ++m) {
      const uint8_t* x = p.xq + m * p.ldx;
      for (int64_t c = 0; c < P && panel * P + c < p.N; ++c) {
        int32_t acc = 0;
        for (int64_t k = 0; k < 4 * kq; ++k) acc += int32_t(x[k]) * w[(k / 4) * P * 4 + c * 4 + k % 4];
        store_s8(p, acc, m, panel * P + c);
      }
    }
  }
}

}  // namespace sparsecpu
