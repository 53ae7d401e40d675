// 512-bit vector traits for the templates in kernels/spmm_4x1.h. Include only from the AVX-512
// kernel sources (built natively with the AVX-512 flags, and emulated: see avx512/simd512.h).
#pragma once
#include "kernels/avx512/simd512.h"

#include <cstdint>

namespace sparsecpu {
namespace {

struct Vec512 {
  static constexpr int kBytes = 64;
  static constexpr int kLanes = 16;  // 32-bit lanes
  using I = simde__m512i;
  using F = simde__m512;

  static I load(const void* p) { return simde_mm512_loadu_si512(p); }
  static I zero() { return simde_mm512_setzero_si512(); }
  static I set1(int32_t v) { return simde_mm512_set1_epi32(v); }
  static I bcast32(const void* p) { return simde_mm512_set1_epi32(*static_cast<const int32_t*>(p)); }
  static I unpacklo8(I a, I b) { return simde_mm512_unpacklo_epi8(a, b); }
  static I unpackhi8(I a, I b) { return simde_mm512_unpackhi_epi8(a, b); }
  static I unpacklo16(I a, I b) { return simde_mm512_unpacklo_epi16(a, b); }
  static I unpackhi16(I a, I b) { return simde_mm512_unpackhi_epi16(a, b); }
  static I unpacklo32(I a, I b) { return simde_mm512_unpacklo_epi32(a, b); }
  static I unpackhi32(I a, I b) { return simde_mm512_unpackhi_epi32(a, b); }
  static I unpacklo64(I a, I b) { return simde_mm512_unpacklo_epi64(a, b); }
  static I unpackhi64(I a, I b) { return simde_mm512_unpackhi_epi64(a, b); }
  static I add32(I a, I b) { return simde_mm512_add_epi32(a, b); }
  static I sub32(I a, I b) { return simde_mm512_sub_epi32(a, b); }
  static I mullo32(I a, I b) { return simde_mm512_mullo_epi32(a, b); }
  static I madd16(I a, I b) { return simde_mm512_madd_epi16(a, b); }
  static I and_(I a, I b) { return simde_mm512_and_si512(a, b); }
  static I or_(I a, I b) { return simde_mm512_or_si512(a, b); }
  static I srli16(I a, int n) { return simde_mm512_srli_epi16(a, n); }
  static I slli16(I a, int n) { return simde_mm512_slli_epi16(a, n); }
  static I srai16(I a, int n) { return simde_mm512_srai_epi16(a, n); }
  static I slli32(I a, int n) { return simde_mm512_slli_epi32(a, n); }
  static I max32(I a, I b) { return simde_mm512_max_epi32(a, b); }
  static I loadi(const int32_t* p) { return simde_mm512_loadu_si512(p); }

  static F loadf(const float* p) { return simde_mm512_loadu_ps(p); }
  static void storef(float* p, F v) { simde_mm512_storeu_ps(p, v); }
  static F zerof() { return simde_mm512_setzero_ps(); }
  static F set1f(float v) { return simde_mm512_set1_ps(v); }
  static F add(F a, F b) { return simde_mm512_add_ps(a, b); }
  static F sub(F a, F b) { return simde_mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return simde_mm512_mul_ps(a, b); }
  static F rcp(F a) { return simde_mm512_rcp14_ps(a); }  // relative error <= 1.5 * 2^-12 (2^-14 on AVX-512)
  static F fmadd(F a, F b, F c) { return simde_mm512_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return simde_mm512_fnmadd_ps(a, b, c); }  // c - a * b
  static F min(F a, F b) { return simde_mm512_min_ps(a, b); }
  static F max(F a, F b) { return simde_mm512_max_ps(a, b); }
  static F and_(F a, F b) { return simde_mm512_and_ps(a, b); }
  static F xor_(F a, F b) { return simde_mm512_xor_ps(a, b); }
  // b where m's sign bit is set, else a.
  static F select_neg(F a, F b, F m) { return simde_mm512_mask_blend_ps(simde_mm512_movepi32_mask(asi(m)), a, b); }
  static F cvt(I a) { return simde_mm512_cvtepi32_ps(a); }
  static I cvt_round(F a) { return simde_mm512_cvtps_epi32(a); }  // current mode: round to nearest even
  static F asf(I a) { return simde_mm512_castsi512_ps(a); }
  static I asi(F a) { return simde_mm512_castps_si512(a); }
  static F unpacklo(F a, F b) { return simde_mm512_unpacklo_ps(a, b); }
  static F unpackhi(F a, F b) { return simde_mm512_unpackhi_ps(a, b); }
  static F unpacklo64(F a, F b) { return simde_mm512_castpd_ps(simde_mm512_unpacklo_pd(simde_mm512_castps_pd(a), simde_mm512_castps_pd(b))); }
  static F unpackhi64(F a, F b) { return simde_mm512_castpd_ps(simde_mm512_unpackhi_pd(simde_mm512_castps_pd(a), simde_mm512_castps_pd(b))); }
  static float hmin(F a) { return simde_mm512_reduce_min_ps(a); }
  static float hmax(F a) { return simde_mm512_reduce_max_ps(a); }
  // Halves added in a fixed order (the native and emulated builds must give the same bits).
  static float hsum(F a) {
    const __m256 h = _mm256_add_ps(simde_mm512_castps512_ps256(a), simde_mm512_extractf32x8_ps(a, 1));
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
  }
  static bool all_zero(F a) { return simde_mm512_cmp_ps_mask(a, simde_mm512_setzero_ps(), SIMDE_CMP_NEQ_UQ) == 0; }

  // The 128-bit lane j of v.
  static __m128 lane(F v, int j) {
    switch (j) {
      case 0: return simde_mm512_castps512_ps128(v);
      case 1: return simde_mm512_extractf32x4_ps(v, 1);
      case 2: return simde_mm512_extractf32x4_ps(v, 2);
      default: return simde_mm512_extractf32x4_ps(v, 3);
    }
  }
  static void store_lane(void* dst, I v, int j) {
    __m128i q;
    switch (j) {
      case 0: q = simde_mm512_castsi512_si128(v); break;
      case 1: q = simde_mm512_extracti32x4_epi32(v, 1); break;
      case 2: q = simde_mm512_extracti32x4_epi32(v, 2); break;
      default: q = simde_mm512_extracti32x4_epi32(v, 3); break;
    }
    _mm_storeu_si128(static_cast<__m128i*>(dst), q);
  }
  // Stores the first n (1..4) floats of a 128-bit lane.
  static void store4(float* dst, __m128 v, int n) {
    if (n == 4) _mm_storeu_ps(dst, v);
    else _mm_maskstore_ps(dst, _mm_cmpgt_epi32(_mm_set1_epi32(n), _mm_setr_epi32(0, 1, 2, 3)), v);
  }
  // 4 x 16 int32 -> 64 u8 with unsigned saturation, in order. Two in-lane packs and one dword
  // permute: the store form of vpmovusdb would be far slower.
  static void store_u8x4(uint8_t* dst, I v0, I v1, I v2, I v3) {
    const I b = simde_mm512_packus_epi16(simde_mm512_packus_epi32(v0, v1), simde_mm512_packus_epi32(v2, v3));
    const I order = simde_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    simde_mm512_storeu_si512(dst, simde_mm512_permutexvar_epi32(order, b));
  }
};

}  // namespace
}  // namespace sparsecpu
