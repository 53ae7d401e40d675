// 256-bit vector traits for the templates in kernels/spmm_4x1.h. Include only from files compiled
// with the AVX2/FMA flags.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace sparsecpu {
namespace {

struct Vec256 {
  static constexpr int kBytes = 32;
  static constexpr int kLanes = 8;
  using I = __m256i;
  using F = __m256;

  static I load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static I zero() { return _mm256_setzero_si256(); }
  static I set1(int32_t v) { return _mm256_set1_epi32(v); }
  static I bcast32(const void* p) { return _mm256_set1_epi32(*static_cast<const int32_t*>(p)); }
  static I unpacklo8(I a, I b) { return _mm256_unpacklo_epi8(a, b); }
  static I unpackhi8(I a, I b) { return _mm256_unpackhi_epi8(a, b); }
  static I unpacklo16(I a, I b) { return _mm256_unpacklo_epi16(a, b); }
  static I unpackhi16(I a, I b) { return _mm256_unpackhi_epi16(a, b); }
  static I unpacklo32(I a, I b) { return _mm256_unpacklo_epi32(a, b); }
  static I unpackhi32(I a, I b) { return _mm256_unpackhi_epi32(a, b); }
  static I unpacklo64(I a, I b) { return _mm256_unpacklo_epi64(a, b); }
  static I unpackhi64(I a, I b) { return _mm256_unpackhi_epi64(a, b); }
  static I add32(I a, I b) { return _mm256_add_epi32(a, b); }
  static I sub32(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I mullo32(I a, I b) { return _mm256_mullo_epi32(a, b); }
  static I madd16(I a, I b) { return _mm256_madd_epi16(a, b); }
  static I and_(I a, I b) { return _mm256_and_si256(a, b); }
  static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  static I srli16(I a, int n) { return _mm256_srli_epi16(a, n); }
  static I slli16(I a, int n) { return _mm256_slli_epi16(a, n); }
  static I srai16(I a, int n) { return _mm256_srai_epi16(a, n); }
  static I slli32(I a, int n) { return _mm256_slli_epi32(a, n); }
  static I max32(I a, I b) { return _mm256_max_epi32(a, b); }
  static I loadi(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

  static F loadf(const float* p) { return _mm256_loadu_ps(p); }
  // Per-channel parameters of two 4-channel groups (pair) or of one, the upper half zero.
  static F loadf_pair(const float* p, bool pair) {
    return pair ? loadf(p) : _mm256_insertf128_ps(_mm256_setzero_ps(), _mm_loadu_ps(p), 0);
  }
  static I loadi_pair(const int32_t* p, bool pair) {
    return pair ? loadi(p) : _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), 0);
  }
  static void storef(float* p, F v) { _mm256_storeu_ps(p, v); }
  // The first n (0..8) lanes of v to p: one store when n == 8, else through a stack copy.
  static void storef_n(float* p, F v, int64_t n) {
    if (n == kLanes) return storef(p, v);
    alignas(32) float tmp[kLanes];
    storef(tmp, v);
    std::memcpy(p, tmp, n * sizeof(float));
  }
  static F zerof() { return _mm256_setzero_ps(); }
  static F set1f(float v) { return _mm256_set1_ps(v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F rcp(F a) { return _mm256_rcp_ps(a); }  // relative error <= 1.5 * 2^-12 (2^-14 on AVX-512)
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F and_(F a, F b) { return _mm256_and_ps(a, b); }
  static F xor_(F a, F b) { return _mm256_xor_ps(a, b); }
  static F select_neg(F a, F b, F m) { return _mm256_blendv_ps(a, b, m); }  // b where m's sign bit is set, else a
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static I cvt_round(F a) { return _mm256_cvtps_epi32(a); }
  static F asf(I a) { return _mm256_castsi256_ps(a); }
  static I asi(F a) { return _mm256_castps_si256(a); }
  static F unpacklo(F a, F b) { return _mm256_unpacklo_ps(a, b); }
  static F unpackhi(F a, F b) { return _mm256_unpackhi_ps(a, b); }
  static F unpacklo64(F a, F b) { return _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(a), _mm256_castps_pd(b))); }
  static F unpackhi64(F a, F b) { return _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(a), _mm256_castps_pd(b))); }
  static float hmin(F a) {
    __m128 v = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    v = _mm_min_ps(v, _mm_movehl_ps(v, v));
    v = _mm_min_ss(v, _mm_shuffle_ps(v, v, 1));
    return _mm_cvtss_f32(v);
  }
  static float hmax(F a) {
    __m128 v = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    v = _mm_max_ps(v, _mm_movehl_ps(v, v));
    v = _mm_max_ss(v, _mm_shuffle_ps(v, v, 1));
    return _mm_cvtss_f32(v);
  }
  static float hsum(F a) {
    __m128 v = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));
    return _mm_cvtss_f32(v);
  }
  static bool all_zero(F a) {
    return _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_NEQ_UQ)) == 0;
  }

  static __m128 lane(F v, int j) { return j == 0 ? _mm256_castps256_ps128(v) : _mm256_extractf128_ps(v, 1); }
  static void store_lane(void* dst, I v, int j) {
    _mm_storeu_si128(static_cast<__m128i*>(dst), j == 0 ? _mm256_castsi256_si128(v) : _mm256_extracti128_si256(v, 1));
  }
  static void store4(float* dst, __m128 v, int n) {
    if (n == 4) {
      _mm_storeu_ps(dst, v);
    } else {
      const __m128i mask = _mm_cmpgt_epi32(_mm_set1_epi32(n), _mm_setr_epi32(0, 1, 2, 3));
      _mm_maskstore_ps(dst, mask, v);
    }
  }
  // 4 x 8 int32 -> 32 u8 with unsigned saturation, in order.
  static void store_u8x4(uint8_t* dst, I v0, I v1, I v2, I v3) {
    const I b = _mm256_packus_epi16(_mm256_packus_epi32(v0, v1), _mm256_packus_epi32(v2, v3));
    const I order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(b, order));
  }
};

}  // namespace
}  // namespace sparsecpu
