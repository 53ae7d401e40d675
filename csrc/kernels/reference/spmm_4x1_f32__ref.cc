// Reference kernel for fp32 4x1-block SpMM (op spmm_f32): plain C++, the specification the vector kernels are
// tested against.
#include "kernels/reference/reference.h"

namespace sparsecpu {

void spmm_4x1_f32__ref(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  bsr_rows<float, float>(p.w, p.N, g0, g1, m0, std::min(p.M, m0 + kRefTileRows), static_cast<const float*>(p.xk), 1,
                         p.ldk, [&](float acc, int64_t m, int64_t ch) { store_f32(p, acc, m, ch); });
}

}  // namespace sparsecpu
