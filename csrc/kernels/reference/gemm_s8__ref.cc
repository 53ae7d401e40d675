// Reference dense int8 GEMM: plain C++, the executable specification of the dense panel layout
// (format.h) and of the row-kernel contract (kernels.h).
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/scalar.h"

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
        const int64_t ch = panel * P + c;
        float* y = p.y + m * p.ldy + ch;
        if (p.raw_s32) std::memcpy(y, &acc, 4);
        else *y = dequant_scalar(acc, p.x_zp[m], p.w.w_sum[ch], p.x_scale[m], p.w.w_scale[ch],
                                 p.bias ? p.bias[ch] : 0.0f, p.act);
      }
    }
  }
}

}  // namespace sparsecpu
