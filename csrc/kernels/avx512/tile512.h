// Pieces the fp32 AVX-512 kernels share (transpose, attention, skinny SpMM): loads and stores of
// the first n lanes of a vector, the in-lane 4x4 transpose and the 16 x 16 block transpose. Include
// only from the AVX-512 kernel sources (built natively and emulated: see avx512/simd512.h).
#pragma once
#include "kernels/avx512/vec512.h"

#include <cstdint>

namespace sparsecpu {
namespace {

// Lanes [0, n) of a vector (0 <= n <= 16): loads that zero the other lanes and stores that leave
// their memory alone; neither touches memory past lane n - 1. The emulated build goes through
// AVX2's maskload / maskstore: SIMDe's emulated masked loads and stores access all 64 bytes.
class Lanes {
 public:
  explicit Lanes(int n)
#if defined(SPARSECPU_EMULATED)
      : lo_(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))),
        hi_(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15))) {}
#else
      : k_(static_cast<simde__mmask16>((1u << n) - 1)) {}
#endif

  simde__m512 load(const float* p) const {
#if defined(SPARSECPU_EMULATED)
    return simde_mm512_insertf32x8(simde_mm512_castps256_ps512(_mm256_maskload_ps(p, lo_)),
                                   _mm256_maskload_ps(p + 8, hi_), 1);
#else
    return simde_mm512_maskz_loadu_ps(k_, p);
#endif
  }

  void store(float* p, simde__m512 v) const {
#if defined(SPARSECPU_EMULATED)
    _mm256_maskstore_ps(p, lo_, simde_mm512_castps512_ps256(v));
    _mm256_maskstore_ps(p + 8, hi_, simde_mm512_extractf32x8_ps(v, 1));
#else
    simde_mm512_mask_storeu_ps(p, k_, v);
#endif
  }

 private:
#if defined(SPARSECPU_EMULATED)
  __m256i lo_, hi_;
#else
  simde__mmask16 k_;
#endif
};

// 4x4 transpose within each 128-bit lane: element i of lane L of v[c] becomes element c of lane L
// of v[i].
__attribute__((always_inline)) inline void transpose4x4_lanes(simde__m512 v[4]) {
  using V = Vec512;
  const simde__m512 t0 = V::unpacklo(v[0], v[1]), t1 = V::unpackhi(v[0], v[1]);
  const simde__m512 t2 = V::unpacklo(v[2], v[3]), t3 = V::unpackhi(v[2], v[3]);
  v[0] = V::unpacklo64(t0, t2);
  v[1] = V::unpackhi64(t0, t2);
  v[2] = V::unpacklo64(t1, t3);
  v[3] = V::unpackhi64(t1, t3);
}

// out[c] = column c of the block of `rows` rows x `cols` columns whose row r is at
// g[r / 4] + (r % 4) * ld (ld3 = 3 ld), zero outside the block (kFull: rows = cols = 16); element
// 4 L + i of out[c] is row 4 L + i, plain row order. Four group pointers and ld, ld3 address all 16
// rows (base + index * 1 or 2): given 16 row addresses, GCC keeps 16 pointers and spills them.
// Each 4-column piece of a row is one 128-bit load that its insert puts straight into the lane it
// ends up in, so crossing lanes costs a load port and a p0/p5 uop per piece, never a 512-bit
// shuffle (those run on p5 only); an in-lane 4x4 transpose per 4 columns does the rest: 16 x 16
// floats in 64 loads, 48 inserts and 32 in-lane shuffles.
template <bool kFull>
__attribute__((always_inline)) inline void transpose16x16(const float* const g[4], int64_t ld, int64_t ld3, int rows,
                                                          int cols, simde__m512 out[16]) {
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    auto piece = [&](int L, int i) -> __m128 {
      const float* p = g[L] + (i == 3 ? ld3 : i * ld) + 4 * q;
      if (kFull) return _mm_loadu_ps(p);
      const int n = cols - 4 * q;
      if (4 * L + i >= rows || n <= 0) return _mm_setzero_ps();
      if (n >= 4) return _mm_loadu_ps(p);
      return _mm_maskload_ps(p, _mm_cmpgt_epi32(_mm_set1_epi32(n), _mm_setr_epi32(0, 1, 2, 3)));
    };
    simde__m512 a[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      // Lane L of a[i]: row 4 L + i, columns 4 q .. 4 q + 3.
      simde__m512 v = simde_mm512_castps128_ps512(piece(0, i));
      v = simde_mm512_insertf32x4(v, piece(1, i), 1);
      v = simde_mm512_insertf32x4(v, piece(2, i), 2);
      a[i] = simde_mm512_insertf32x4(v, piece(3, i), 3);
    }
    transpose4x4_lanes(a);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) out[4 * q + c] = a[c];
  }
}

// The rows x cols block at src (row r at src + r * ld) through transpose16x16.
template <bool kFull>
__attribute__((always_inline)) inline void transpose16x16(const float* src, int64_t ld, int rows, int cols,
                                                          simde__m512 out[16]) {
  const float* const g[4] = {src, src + 4 * ld, src + 8 * ld, src + 12 * ld};
  transpose16x16<kFull>(g, ld, 3 * ld, rows, cols, out);
}

}  // namespace
}  // namespace sparsecpu
