// int8 4x1-block SpMM for M <= 8 on AVX-512BW without VNNI: the same gather, vpmaddwd dots.
#include "kernels/avx512/spmm_4x1_s8_skinny_512.h"

namespace sparsecpu {

SPARSECPU_KERNELS_BEGIN
void spmm_4x1_s8_skinny_8x4__avx512bw(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  skinny_s8_512<DotMadd512>(p, g0, g1, m0, m1);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
