// Dynamic per-row u8 quantization of x written K-major, for the int8 SpMM kernels (op quant_u8), with AVX-512.
#include "kernels/avx512/vec512.h"
#include "kernels/activation_passes.h"

namespace sparsecpu {

SPARSECPU_KERNELS_BEGIN
bool quant_u8_kmajor__avx512(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, uint8_t* xq, int64_t ldq,
                             float* scale, int32_t* zp, float* absmax) {
  return quant_u8_kmajor<Vec512>(x, M, K, m0, m1, xq, ldq, scale, zp, absmax);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
