// int8 4x1-block SpMM for few rows (M <= 8, token-by-token decoding) on AVX2: vectorized over the
// 4 output channels of a group instead of over rows. Tile: up to 8 rows x one group (4 channels).
//
// Per quad of blocks (4 kept input columns x 4 channels = 16 weight bytes, one VNNI dword per
// channel): the weights are split once into even / odd columns as int16; for each row its 4 u8
// activations at the quad's columns are gathered into one dword, broadcast, split the same way and
// met with one vpmaddwd per half (exact, like the SpMM kernels). Two quads go through one ymm per
// step (the 8 bytes gathered with scalar loads: vpgatherdd measured slower on Zen 3). Each stored
// block costs 4 weight bytes and one index, read once for all rows; the byte gather of x, not the
// weight bytes, sets the pace. Two groups' results are joined into one 8-channel vector for the
// epilogue and the store.
#include "kernels/avx2/vec256.h"
#include "kernels/epilogue.h"

namespace sparsecpu {
namespace {

using V = Vec256;

template <int MR, class Idx>
__attribute__((always_inline)) inline void group_dots(const RowParams& p, int64_t g, const uint8_t* x, __m128i acc[MR]) {
  const Idx* cols = static_cast<const Idx*>(p.w.col_idx);
  const int8_t* vals = static_cast<const int8_t*>(p.w.values);
  const int64_t ldx = p.ldx;
  const __m128i low = _mm_set1_epi32(0x00FF00FF);
  const uint64_t b1 = p.w.row_ptr[g + 1];
  uint64_t b = p.w.row_ptr[g];
  {
    // Two quads per step in one ymm (lane j: quad b + 4 j), folded into the xmm sums after.
    __m256i a2[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) a2[r] = V::zero();
    const __m256i low2 = V::set1(0x00FF00FF);
    for (; b + 8 <= b1; b += 8) {
      const __m256i w = V::load(vals + 4 * b);
      const __m256i we = V::srai16(V::slli16(w, 8), 8), wo = V::srai16(w, 8);
      const uint64_t k0 = cols[b], k1 = cols[b + 1], k2 = cols[b + 2], k3 = cols[b + 3];
      const uint64_t k4 = cols[b + 4], k5 = cols[b + 5], k6 = cols[b + 6], k7 = cols[b + 7];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const uint8_t* xr = x + r * ldx;
        const uint32_t d0 = uint32_t(xr[k0]) | uint32_t(xr[k1]) << 8 | uint32_t(xr[k2]) << 16 | uint32_t(xr[k3]) << 24;
        const uint32_t d1 = uint32_t(xr[k4]) | uint32_t(xr[k5]) << 8 | uint32_t(xr[k6]) << 16 | uint32_t(xr[k7]) << 24;
        const __m256i xv = _mm256_set_m128i(_mm_set1_epi32(static_cast<int32_t>(d1)), _mm_set1_epi32(static_cast<int32_t>(d0)));
        const __m256i xe = V::and_(xv, low2), xo = V::srli16(xv, 8);
        a2[r] = V::add32(a2[r], V::add32(V::madd16(xe, we), V::madd16(xo, wo)));
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r] = _mm_add_epi32(_mm256_castsi256_si128(a2[r]), _mm256_extracti128_si256(a2[r], 1));
  }
  for (; b < b1; b += 4) {
    const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(vals + 4 * b));
    const __m128i we = _mm_srai_epi16(_mm_slli_epi16(w, 8), 8), wo = _mm_srai_epi16(w, 8);
    const uint64_t k0 = cols[b], k1 = cols[b + 1], k2 = cols[b + 2], k3 = cols[b + 3];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const uint8_t* xr = x + r * ldx;
      const uint32_t d = uint32_t(xr[k0]) | uint32_t(xr[k1]) << 8 | uint32_t(xr[k2]) << 16 | uint32_t(xr[k3]) << 24;
      const __m128i xv = _mm_set1_epi32(static_cast<int32_t>(d));
      const __m128i xe = _mm_and_si128(xv, low), xo = _mm_srli_epi16(xv, 8);
      acc[r] = _mm_add_epi32(acc[r], _mm_add_epi32(_mm_madd_epi16(xe, we), _mm_madd_epi16(xo, wo)));
    }
  }
}

template <int MR, class Idx, Activation kAct, bool kRaw>
void skinny_run(const RowParams& p, int64_t g0, int64_t g1, int64_t m0) {
  const uint8_t* x = p.xq + m0 * p.ldx;
  for (int64_t g = g0; g < g1; g += 2) {
    const bool pair = g + 1 < g1;
    __m128i a0[MR], a1[MR];
    group_dots<MR, Idx>(p, g, x, a0);
    if (pair) {
      group_dots<MR, Idx>(p, g + 1, x, a1);
    } else {
      for (int r = 0; r < MR; ++r) a1[r] = _mm_setzero_si128();
    }
    const int64_t ch0 = 4 * g;
    const int64_t cols = std::min<int64_t>(pair ? 8 : 4, p.N - ch0);
    // Channel parameters 8 wide; for a range ending on an unpaired group, the second half is zero.
    __m256 wsv = V::zerof(), bv = V::zerof();
    __m256i wsumv = V::zero();
    if (!kRaw) {
      wsv = V::loadf_pair(p.w.w_scale + ch0, pair);
      wsumv = V::loadi_pair(p.w.w_sum + ch0, pair);
      if (p.bias) bv = V::loadf_pair(p.bias + ch0, pair);
    }
    for (int r = 0; r < MR; ++r) {
      const int64_t m = m0 + r;
      const __m256i acc = _mm256_set_m128i(a1[r], a0[r]);
      __m256 f;
      if (kRaw) {
        f = V::asf(acc);
      } else {
        const __m256i centered = V::sub32(acc, V::mullo32(V::set1(p.x_zp[m]), wsumv));
        f = vactivate<V>(V::fmadd(V::cvt(centered), V::mul(V::set1f(p.x_scale[m]), wsv), bv), kAct);
      }
      float* y = p.y + m * p.ldy + ch0;
      V::storef_n(y, f, cols);
    }
  }
}

template <class Idx, Activation kAct, bool kRaw>
void skinny_rows(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  if (m1 <= m0 || m1 - m0 > 8) return;
  with_rows<8>(m1 - m0, [&](auto r) { skinny_run<decltype(r)::value, Idx, kAct, kRaw>(p, g0, g1, m0); });
}

template <class Idx>
void skinny_idx(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  with_epilogue(p.act, p.raw_s32, [&](auto e) {
    skinny_rows<Idx, decltype(e)::kAct, decltype(e)::kRaw>(p, g0, g1, m0, m1);
  });
}

}  // namespace

void spmm_4x1_s8_skinny_8x4__avx2(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  skinny_idx<uint16_t>(p, g0, g1, m0, m1);  // int8: always 16-bit column indices (see spmm_s8)
}

}  // namespace sparsecpu
