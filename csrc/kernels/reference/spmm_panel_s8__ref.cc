// Reference block-sparse int8 on the panel format: plain C++, the executable specification of the
// panel layout (format.h) over the row-kernel contract (kernels.h). The s32 accumulators are the
// bsr and dense references' on the same quantized inputs: the same products, in exact integer sums.
#include "kernels/reference/reference.h"

namespace sparsecpu {

void spmm_panel_s8__ref(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  const auto* vals = static_cast<const int8_t*>(p.w.values);
  const auto* cols = static_cast<const uint16_t*>(p.w.col_idx);
  const int64_t P = static_cast<int64_t>(kDensePanel);
  for (int64_t panel = c0; panel < c1; ++panel) {
    const int64_t b0 = p.w.row_ptr[panel], b1 = p.w.row_ptr[panel + 1];
    for (int64_t m = m0; m < m1; ++m) {
      const uint8_t* x = p.xq + m * p.ldx;
      for (int64_t c = 0; c < P && panel * P + c < p.N; ++c) {
        int32_t acc = 0;
        // Stored column b of channel c: VNNI quad b / 4, byte b % 4 (padding columns hold zeros).
        for (int64_t b = b0; b < b1; ++b) acc += int32_t(x[cols[b]]) * vals[(b / 4) * P * 4 + c * 4 + b % 4];
        store_s8(p, acc, m, panel * P + c);
      }
    }
  }
}

}  // namespace sparsecpu
