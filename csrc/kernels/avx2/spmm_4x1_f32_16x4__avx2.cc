// fp32 4x1-block SpMM on AVX2/FMA: tile 16 rows x 4 channels (8 accumulators: the 16 of a
// 32 x 4 tile left no ymm register for the activations and were spilled around every FMA).
#include "kernels/avx2/vec256.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

void spmm_4x1_f32_16x4__avx2(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  spmm_f32<Vec256, 2>(p, g0, g1, m0);
}

}  // namespace sparsecpu
