// Reference kernel for int8 4x1-block SpMM (op spmm_s8): plain C++, the specification the vector kernels are
// tested against.
#include "kernels/reference/reference.h"

namespace sparsecpu {

void spmm_4x1_s8__ref(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  bsr_rows<int8_t, int32_t>(p.w, p.N, g0, g1, m0, std::min(p.M, m0 + kRefTileRows), static_cast<const uint8_t*>(p.xk),
                            1, p.ldk, [&](int32_t acc, int64_t m, int64_t ch) { store_s8(p, acc, m, ch); });
}

}  // namespace sparsecpu
