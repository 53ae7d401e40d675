// int8 4x1-block SpMM on AVX-512BW without VNNI (Skylake-X): the same gather, vpmaddwd dots.
#include "kernels/avx512/vec512.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

SPARSECPU_KERNELS_BEGIN
void spmm_4x1_s8_64x4__avx512bw(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  spmm_s8<Vec512, QuadGather<Vec512, DotMadd<Vec512>>>(p, g0, g1, m0);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
