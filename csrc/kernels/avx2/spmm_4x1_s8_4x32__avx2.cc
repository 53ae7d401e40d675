// int8 4x1-block SpMM on AVX2: tile 4 channels x 32 rows, exact vpmaddwd dots.
#include "kernels/avx2/vec256.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

void spmm_4x1_s8_4x32__avx2(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  spmm_s8<Vec256, QuadGather<Vec256, DotMadd<Vec256>>>(p, g0, g1, m0);
}

}  // namespace sparsecpu
