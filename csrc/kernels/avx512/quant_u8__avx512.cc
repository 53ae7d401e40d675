// Activation passes (u8 quantize + K-major transpose, fp32 transpose) with AVX-512.
#include "kernels/avx512/vec512.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

bool quant_u8_kmajor__avx512(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, uint8_t* xq,
                             int64_t ldq, float* scale, int32_t* zp, float* absmax) {
  return quant_u8_kmajor<Vec512>(x, M, K, m0, m1, xq, ldq, scale, zp, absmax);
}

bool transpose_f32_kmajor__avx512(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, float* xt,
                                  int64_t ldt) {
  return transpose_f32_kmajor<Vec512>(x, M, K, m0, m1, xt, ldt);
}

}  // namespace sparsecpu
