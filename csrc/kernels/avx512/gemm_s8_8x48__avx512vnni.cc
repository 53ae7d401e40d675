// Dense int8 GEMM with AVX-512 VNNI: tile 8 rows x 3 panels (48 channels), one vpdpbusd per row and
// panel per 4 input columns.
//
// Register budget (32 zmm): 24 accumulators, 3 panel weights, the row broadcast (GCC uses 2-4 to
// overlap the broadcasts): nothing spills. Per step 24 vpdpbusd (12 cycles on ports 0 and 5) need
// 8 broadcasts + 3 weight loads, well under the two 512-bit loads a cycle; 8 x 2 panels would need
// 10 loads for 16 dots and reload each row's activations once more per 48 channels. 64-row blocks
// from the driver are 8 whole tiles.
#include "kernels/avx512/gemm_s8_512.h"

namespace sparsecpu {

SPARSECPU_KERNELS_BEGIN
void gemm_s8_8x48__avx512vnni(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  gemm_s8_512<DotVnni512, 8, 3>(p, c0, c1, m0, m1);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
