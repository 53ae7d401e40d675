// fp32 4x1-block SpMM on AVX-512F: tile 64 rows x 4 channels, 16 zmm accumulators.
#include "kernels/avx512/vec512.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

SPARSECPU_KERNELS_BEGIN
void spmm_4x1_f32_64x4__avx512f(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  spmm_f32<Vec512, 4>(p, g0, g1, m0);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
