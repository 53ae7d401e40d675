// The activation passes before the kernels, written once over a vector-traits type (Vec512, Vec256) like
// kernels/spmm_4x1.h and instantiated by one small file per kernel and ISA: x [M][K] row-major to K-major
// (the SpMM kernels: quant_u8_kmajor, transpose_f32_kmajor) or row-major u8 (the row kernels:
// quant_u8_rows). Anonymous namespace for the same reason as there: one copy per ISA object.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/scalar.h"

namespace sparsecpu {
namespace {

// Every pass checks finiteness on the way (x - x is NaN exactly for NaN and Inf).

// Byte transpose of 16 rows x (16 * lanes) columns: each 128-bit lane of the vectors is its own
// 16x16 block, so one 4-stage unpack network transposes 4 blocks (zmm) or 2 (ymm) at once. Output
// row c (column c of the source) goes to dst + c * ldd; only columns < cols are stored.
template <class V>
inline void transpose16xL_u8(const uint8_t* src, int64_t lds, uint8_t* dst, int64_t ldd, int cols) {
  using I = typename V::I;
  constexpr int kLanes128 = V::kBytes / 16;
  I a[16], t[16];
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) a[r] = V::load(src + r * lds);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[i] = V::unpacklo8(a[2 * i], a[2 * i + 1]);
    t[i + 8] = V::unpackhi8(a[2 * i], a[2 * i + 1]);
  }
  // t[i]: rows 2i, 2i+1 interleaved for columns 0..7 of each lane; t[i + 8]: columns 8..15.
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      a[8 * h + i] = V::unpacklo16(t[8 * h + 2 * i], t[8 * h + 2 * i + 1]);
      a[8 * h + 4 + i] = V::unpackhi16(t[8 * h + 2 * i], t[8 * h + 2 * i + 1]);
    }
  }
  // a[4q + r]: rows 4r..4r+3 of columns 4q..4q+3 (per lane).
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const I l01 = V::unpacklo32(a[4 * q + 0], a[4 * q + 1]), h01 = V::unpackhi32(a[4 * q + 0], a[4 * q + 1]);
    const I l23 = V::unpacklo32(a[4 * q + 2], a[4 * q + 3]), h23 = V::unpackhi32(a[4 * q + 2], a[4 * q + 3]);
    const I out[4] = {V::unpacklo64(l01, l23), V::unpackhi64(l01, l23), V::unpacklo64(h01, h23), V::unpackhi64(h01, h23)};
#pragma GCC unroll 4
    for (int j = 0; j < kLanes128; ++j) {
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const int c = 16 * j + 4 * q + i;
        if (c < cols) V::store_lane(dst + c * ldd, out[i], j);
      }
    }
  }
}

// Range of one row of x for its quantization parameters, with the finiteness check folded in:
// x - x is +0.0 exactly when x is finite, so OR-ing its bits finds NaN and Inf in one cheap op.
template <class V>
inline void row_range(const float* row, int64_t K, typename V::I& bad, bool& finite, float& mn, float& mx) {
  using F = typename V::F;
  constexpr int L = V::kLanes;
  // Four independent accumulator sets: one chain of min/max would run at their latency.
  F vmn[4] = {V::zerof(), V::zerof(), V::zerof(), V::zerof()};
  F vmx[4] = {V::zerof(), V::zerof(), V::zerof(), V::zerof()};
  int64_t k = 0;
  for (; k + 4 * L <= K; k += 4 * L) {
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const F v = V::loadf(row + k + i * L);
      vmn[i] = V::min(vmn[i], v);
      vmx[i] = V::max(vmx[i], v);
      bad = V::or_(bad, V::asi(V::sub(v, v)));
    }
  }
  for (; k + L <= K; k += L) {
    const F v = V::loadf(row + k);
    vmn[0] = V::min(vmn[0], v);
    vmx[0] = V::max(vmx[0], v);
    bad = V::or_(bad, V::asi(V::sub(v, v)));
  }
  mn = V::hmin(V::min(V::min(vmn[0], vmn[1]), V::min(vmn[2], vmn[3])));
  mx = V::hmax(V::max(V::max(vmx[0], vmx[1]), V::max(vmx[2], vmx[3])));
  for (; k < K; ++k) {
    finite &= std::isfinite(row[k]);
    mn = std::min(mn, row[k]);
    mx = std::max(mx, row[k]);
  }
}

// kc values of one row to u8 (4 vectors at a time, the tail scalar; both round the same way).
template <class V>
inline void quant_row(const float* row, int64_t kc, const RowQParams& q, uint8_t* dst) {
  using I = typename V::I;
  constexpr int L = V::kLanes;
  const auto inv = V::set1f(q.inv);
  const I zpv = V::set1(q.zp);
  int64_t k = 0;
  for (; k + 4 * L <= kc; k += 4 * L) {
    I v[4];
    for (int i = 0; i < 4; ++i) v[i] = V::add32(V::cvt_round(V::mul(V::loadf(row + k + i * L), inv)), zpv);
    V::store_u8x4(dst + k, v[0], v[1], v[2], v[3]);
  }
  for (; k < kc; ++k) dst[k] = quantize_u8(row[k], q);
}

// Rows are taken 64 at a time (m0 and m1 are multiples of 64) so that each 64-byte line of the
// K-major output is written by four back-to-back stores: written 16 rows at a time, every line
// would miss four times, and store misses commit one after another.
template <class V>
bool quant_u8_kmajor(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, uint8_t* xq, int64_t ldq,
                     float* scale, int32_t* zp, float* absmax) {
  using I = typename V::I;
  constexpr int L = V::kLanes;
  constexpr int kRows = 64, kCols = 4 * L;
  alignas(64) uint8_t stage[kRows][kCols];
  I bad = V::zero();
  bool finite = true;
  for (int64_t mb = m0; mb < m1; mb += kRows) {
    RowQParams q[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t m = mb + r;
      float mn = 0.0f, mx = 0.0f;
      if (m >= M) {
        q[r] = {1.0f, 1.0f, 0};
      } else {
        row_range<V>(x + m * K, K, bad, finite, mn, mx);
        q[r] = row_qparams(mn, mx);
      }
      scale[m] = q[r].scale;
      zp[m] = q[r].zp;
      if (absmax) absmax[m] = std::max(-mn, mx);
    }
    const int rows = static_cast<int>(std::min<int64_t>(kRows, M - mb));
    for (int64_t k0 = 0; k0 < K; k0 += kCols) {
      const int64_t kc = std::min<int64_t>(kCols, K - k0);
      for (int r = 0; r < rows; ++r) quant_row<V>(x + (mb + r) * K + k0, kc, q[r], stage[r]);
      if (rows < kRows) std::memset(stage[rows], 0, sizeof(stage[0]) * (kRows - rows));
      for (int blk = 0; blk < kRows / 16; ++blk) {
        transpose16xL_u8<V>(&stage[16 * blk][0], kCols, xq + k0 * ldq + mb + 16 * blk, ldq, static_cast<int>(kc));
      }
    }
  }
  return finite && V::all_zero(V::asf(bad));
}

// The same quantization, row-major (dense GEMM and skinny kernels): rows [m0, m1) all < M.
template <class V>
bool quant_u8_rows(const float* x, int64_t /*M*/, int64_t K, int64_t m0, int64_t m1, uint8_t* xq, int64_t ldq,
                   float* scale, int32_t* zp, float* absmax) {
  typename V::I bad = V::zero();
  bool finite = true;
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = x + m * K;
    float mn = 0.0f, mx = 0.0f;
    row_range<V>(row, K, bad, finite, mn, mx);
    const RowQParams q = row_qparams(mn, mx);
    scale[m] = q.scale;
    zp[m] = q.zp;
    if (absmax) absmax[m] = std::max(-mn, mx);
    quant_row<V>(row, K, q, xq + m * ldq);
    std::memset(xq + m * ldq + K, 0, ldq - K);
  }
  return finite && V::all_zero(V::asf(bad));
}

// In-register transpose of 8 rows of 8 floats: r[i] becomes column i.
inline void transpose8x8(__m256 r[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
  }
}

// 16 rows at a time (m0 and m1 are multiples of 16), so that each 64-byte line of the K-major
// output gets its pieces back to back.
template <class V>
bool transpose_f32_kmajor(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, float* xt, int64_t ldt) {
  __m128 bad = _mm_setzero_ps();
  __m256 bad8 = _mm256_setzero_ps();
  bool finite = true;
  for (int64_t mb = m0; mb < m1; mb += 16) {
    int64_t k = 0;
    if (mb + 16 <= M) {
      // 8 x 8 blocks: 24 shuffles per 64 values (the 4 x 4 form below needs 32) and 32-byte stores.
      for (; k + 8 <= K; k += 8) {
#pragma GCC unroll 2
        for (int half = 0; half < 2; ++half) {
          const float* src = x + (mb + 8 * half) * K + k;
          __m256 r[8];
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) {
            r[i] = _mm256_loadu_ps(src + i * K);
            bad8 = _mm256_or_ps(bad8, _mm256_sub_ps(r[i], r[i]));
          }
          transpose8x8(r);
          float* dst = xt + k * ldt + mb + 8 * half;
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + i * ldt, r[i]);
        }
      }
      for (; k + 4 <= K; k += 4) {
#pragma GCC unroll 4
        for (int sub = 0; sub < 4; ++sub) {
          const float* src = x + (mb + 4 * sub) * K + k;
          __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + K);
          __m128 r2 = _mm_loadu_ps(src + 2 * K), r3 = _mm_loadu_ps(src + 3 * K);
          bad = _mm_or_ps(bad, _mm_or_ps(_mm_or_ps(_mm_sub_ps(r0, r0), _mm_sub_ps(r1, r1)),
                                         _mm_or_ps(_mm_sub_ps(r2, r2), _mm_sub_ps(r3, r3))));
          _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
          float* dst = xt + k * ldt + mb + 4 * sub;
          _mm_storeu_ps(dst, r0);
          _mm_storeu_ps(dst + ldt, r1);
          _mm_storeu_ps(dst + 2 * ldt, r2);
          _mm_storeu_ps(dst + 3 * ldt, r3);
        }
      }
    }
    for (; k < K; ++k) {
      for (int r = 0; r < 16; ++r) {
        const float v = mb + r < M ? x[(mb + r) * K + k] : 0.0f;
        finite &= std::isfinite(v);
        xt[k * ldt + mb + r] = v;
      }
    }
  }
  // x - x is +0.0 exactly when x is finite (see quant_u8_kmajor).
  bad = _mm_or_ps(bad, _mm_or_ps(_mm256_castps256_ps128(bad8), _mm256_extractf128_ps(bad8, 1)));
  return finite && _mm_movemask_ps(_mm_cmpneq_ps(bad, _mm_setzero_ps())) == 0;
}

}  // namespace
}  // namespace sparsecpu
