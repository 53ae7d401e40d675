// Reference kernel for fp32 4x1-block SpMM for few rows, x row-major (op spmm_f32_skinny): plain C++, the
// specification the vector kernels are tested against.
#include "kernels/reference/reference.h"

namespace sparsecpu {

void spmm_4x1_f32_skinny__ref(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  bsr_rows<float, float>(p.w, p.N, g0, g1, m0, m1, p.xf, p.ldx, 1,
                         [&](float acc, int64_t m, int64_t ch) { store_f32(p, acc, m, ch); });
}

}  // namespace sparsecpu
