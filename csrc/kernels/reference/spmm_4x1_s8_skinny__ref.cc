// Reference kernel for int8 4x1-block SpMM for few rows, x row-major (op spmm_s8_skinny): plain C++, the
// specification the vector kernels are tested against.
#include "kernels/reference/reference.h"

namespace sparsecpu {

void spmm_4x1_s8_skinny__ref(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  bsr_rows<int8_t, int32_t>(p.w, p.N, g0, g1, m0, m1, p.xq, p.ldx, 1,
                            [&](int32_t acc, int64_t m, int64_t ch) { store_s8(p, acc, m, ch); });
}

}  // namespace sparsecpu
