// fp32 activations to K-major for the SpMM kernels (TransposeFn) on AVX-512F, in 16 x 16 blocks
// (tile512.h): 16 rows of x become one 64-byte vector per input column, stored whole, so each line
// of the K-major output is written once (rows [m0, m1) come 16 at a time: m0 and m1 are multiples
// of 16). The fp32 kernels read plain row order (lane i of the vector at m is row m + i), which
// is the order the block transpose leaves.
//   Finiteness rides along at one FMA per output vector: x * 0 + acc is +-0 while every x is finite
// and NaN from the first NaN or Inf on; four accumulators keep that chain (4-cycle FMA latency,
// 16 vectors a block) shorter than the block's shuffles.
#include <algorithm>

#include "kernels/avx512/tile512.h"
#include "kernels/avx512/vec512.h"
#include "kernels/kernels.h"

namespace sparsecpu {

namespace {

using F = simde__m512;
using V = Vec512;

// Columns [k0, k1) of rows [mb, mb + rows) (rows <= 16) to xt + k * ldt + mb; rows past `rows`
// zero. Sources and destinations go through four pointers each, plus the strides and 3x them (see
// transpose16x16).
template <bool kFull>
__attribute__((always_inline)) inline void blocks(const float* src, int64_t K, int rows, int64_t k0, int64_t k1,
                                                  float* dst, int64_t ldt, F bad[4]) {
  const F zero = V::zerof();
  const float* g[4] = {src + k0, src + 4 * K + k0, src + 8 * K + k0, src + 12 * K + k0};
  float* d[4] = {dst + k0 * ldt, dst + (k0 + 4) * ldt, dst + (k0 + 8) * ldt, dst + (k0 + 12) * ldt};
  const int64_t ldt3 = 3 * ldt;
  for (int64_t k = k0; k < k1; k += 16) {
    const int cols = static_cast<int>(std::min<int64_t>(16, K - k));
    F out[16];
    transpose16x16<kFull>(g, K, 3 * K, rows, cols, out);
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c) {
      if (!kFull && c >= cols) break;
      bad[c % 4] = V::fmadd(out[c], zero, bad[c % 4]);
      V::storef(d[c / 4] + (c % 4 == 3 ? ldt3 : c % 4 * ldt), out[c]);
    }
    for (auto& p : g) p += 16;
    for (auto& p : d) p += 16 * ldt;
  }
}

}  // namespace

SPARSECPU_KERNELS_BEGIN
bool transpose_f32_kmajor__avx512(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, float* xt,
                                  int64_t ldt) {
  F bad[4] = {V::zerof(), V::zerof(), V::zerof(), V::zerof()};
  const int64_t k_full = K / 16 * 16;
  for (int64_t mb = m0; mb < m1; mb += 16) {
    const int rows = static_cast<int>(std::clamp<int64_t>(M - mb, 0, 16));
    float* dst = xt + mb;
    if (rows == 0) {
      for (int64_t k = 0; k < K; ++k) V::storef(dst + k * ldt, V::zerof());
      continue;
    }
    const float* src = x + mb * K;
    if (rows == 16) {
      blocks<true>(src, K, 16, 0, k_full, dst, ldt, bad);
      blocks<false>(src, K, 16, k_full, K, dst, ldt, bad);
    } else {
      blocks<false>(src, K, rows, 0, K, dst, ldt, bad);
    }
  }
  return V::all_zero(V::add(V::add(bad[0], bad[1]), V::add(bad[2], bad[3])));
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
