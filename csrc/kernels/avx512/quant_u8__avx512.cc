// Activation passes (u8 quantize K-major or row-major), the outlier path's y = act(y + c) pass and
// the residual add + LayerNorm pass, with AVX-512. The fp32 transpose: transpose_f32_16x16__avx512f.cc.
#include "kernels/avx512/vec512.h"
#include "kernels/epilogue.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

SPARSECPU_KERNELS_BEGIN
bool quant_u8_kmajor__avx512(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, uint8_t* xq,
                             int64_t ldq, float* scale, int32_t* zp, float* absmax) {
  return quant_u8_kmajor<Vec512>(x, M, K, m0, m1, xq, ldq, scale, zp, absmax);
}

bool quant_u8_rows__avx512(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, uint8_t* xq, int64_t ldq,
                           float* scale, int32_t* zp, float* absmax) {
  return quant_u8_rows<Vec512>(x, M, K, m0, m1, xq, ldq, scale, zp, absmax);
}

void add_act_f32__avx512(const float* c, float* y, int64_t n, Activation act) { add_act_f32<Vec512>(c, y, n, act); }

void add_norm_f32__avx512(float* y, const float* r, int64_t rows, int64_t n, const float* gamma, const float* beta,
                          float eps) {
  add_norm_f32<Vec512>(y, r, rows, n, gamma, beta, eps);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
