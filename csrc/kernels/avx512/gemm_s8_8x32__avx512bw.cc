// Dense int8 GEMM on AVX-512BW without VNNI (Skylake-X): tile 8 rows x 2 panels (32 channels),
// exact vpmaddwd dots on even / odd columns.
//
// Register budget (32 zmm): 16 accumulators, 2 x 2 weight halves, the row's 2 halves, the 0x00FF
// mask and the products in flight. The VNNI kernel's 8 x 3 tile would need 24 + 6 + 2 + 1: spills.
#include "kernels/avx512/gemm_s8_512.h"

namespace sparsecpu {

SPARSECPU_KERNELS_BEGIN
void gemm_s8_8x32__avx512bw(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  gemm_s8_512<DotMadd512, 8, 2>(p, c0, c1, m0, m1);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
