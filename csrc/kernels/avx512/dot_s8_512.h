// u8 x s8 -> s32 dword dot products over 16 lanes, the two ways an AVX-512 level has them, as policies
// for the kernel templates of avx512/gemm_s8_512.h and avx512/spmm_4x1_s8_skinny_512.h; and partial
// loads and stores that touch no byte outside their n lanes. Include only from the AVX-512 kernel
// sources (built natively and emulated, see avx512/simd512.h).
//
// A policy splits its work so that whatever is shared is prepared once: weights(w) per weight vector,
// x(v) per activation vector, then dot(acc, x, w) adds 4 u8 x s8 products per 32-bit lane to acc.
#pragma once
#include "kernels/avx512/vec512.h"
#include "kernels/epilogue.h"

namespace sparsecpu {
namespace {

// AVX-512 VNNI: one vpdpbusd.
struct DotVnni512 {
  using I = simde__m512i;
  struct W { I w; };
  struct X { I x; };
  // Independent accumulators needed to hide vpdpbusd's latency (5 cycles at 2 per cycle).
  static constexpr int kChains = 10;
  static W weights(I w) { return {w}; }
  static X x(I v) { return {v}; }
  static I dot(I acc, const X& x, const W& w) { return simde_mm512_dpbusd_epi32(acc, x.x, w.w); }
};

// AVX-512BW without VNNI: even / odd bytes widened to int16 and met in vpmaddwd, which is exact
// (255 * 127 * 2 fits; vpmaddubsw would saturate). acc depends only on the final add (1 cycle), so
// one accumulator chain per output keeps the ports busy.
struct DotMadd512 {
  using I = simde__m512i;
  struct W { I even, odd; };
  struct X { I even, odd; };
  static constexpr int kChains = 1;
  static W weights(I w) { return {simde_mm512_srai_epi16(simde_mm512_slli_epi16(w, 8), 8), simde_mm512_srai_epi16(w, 8)}; }
  static X x(I v) { return {simde_mm512_and_si512(v, simde_mm512_set1_epi32(0x00FF00FF)), simde_mm512_srli_epi16(v, 8)}; }
  static I dot(I acc, const X& x, const W& w) {
    return simde_mm512_add_epi32(acc, simde_mm512_add_epi32(simde_mm512_madd_epi16(x.even, w.even),
                                                            simde_mm512_madd_epi16(x.odd, w.odd)));
  }
};

// Accumulator sets a dot loop of `outputs` accumulators interleaves over K so that at least
// Dot::kChains are in flight (at most 4: a short tile is bound by its loads before that).
template <class Dot>
constexpr int k_split(int outputs) {
  const int s = (Dot::kChains + outputs - 1) / outputs;
  return s < 1 ? 1 : s > 4 ? 4 : s;
}

// Row r (0..7) of a tile whose row 0 is at xa, with xb = xa + 3 ldx: base + index x {1, 2, 4} reaches
// every row from 4 registers (xa, xb, l1 = ldx, l3 = 3 ldx). With one pointer per row, GCC runs out
// of general registers in the 8-row loops and reloads them from the stack every step.
__attribute__((always_inline)) inline const uint8_t* tile_row(int r, const uint8_t* xa, const uint8_t* xb, int64_t l1,
                                                              int64_t l3) {
  switch (r) {
    case 0: return xa;
    case 1: return xa + l1;
    case 2: return xa + 2 * l1;
    case 3: return xb;
    case 4: return xa + 4 * l1;
    case 5: return xb + 2 * l1;
    case 6: return xa + 2 * l3;
    default: return xb + 4 * l1;
  }
}

// Called at the top of a hot loop: the strides become opaque there, so GCC cannot strength-reduce
// tile_row's addresses into one pointer per row (and panel) again. Emits no instruction; the
// emulated build has no register pressure of this kind and needs no twin.
__attribute__((always_inline)) inline void opaque_stride(int64_t& v) {
#if !defined(SPARSECPU_EMULATED)
  __asm__("" : "+r"(v));
#else
  (void)v;
#endif
}
template <class... T>
__attribute__((always_inline)) inline void opaque_strides(T&... v) {
  (opaque_stride(v), ...);
}
// The same for an accumulator leaving its loop (native build only, as above).
__attribute__((always_inline)) inline void opaque_acc(simde__m512i& v) {
#if !defined(SPARSECPU_EMULATED)
  __asm__("" : "+v"(v));
#else
  (void)v;
#endif
}

// Partial loads and stores of lanes [0, n), n in 0..16: the other lanes read as zero, and no byte
// outside the n lanes is read or written (neighbouring channels may belong to another thread, and a
// section may end there). Natively masked moves; the emulated build uses AVX2 vpmaskmov, because
// SIMDe's masked forms move all 64 bytes (its masked store writes zeros to the other lanes).
inline simde__m512i load_n32(const void* p, int64_t n) {
#if defined(SPARSECPU_EMULATED)
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int* q = static_cast<const int*>(p);
  const __m256i lo = _mm256_maskload_epi32(q, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane));
  const __m256i hi = n > 8 ? _mm256_maskload_epi32(q + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - 8)), lane))
                           : _mm256_setzero_si256();
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(lo), hi, 1);
#else
  return simde_mm512_mask_loadu_epi32(simde_mm512_setzero_si512(), static_cast<simde__mmask16>((1u << n) - 1), p);
#endif
}

inline simde__m512 load_n32f(const float* p, int64_t n) { return simde_mm512_castsi512_ps(load_n32(p, n)); }

inline void store_n32f(float* p, simde__m512 v, int64_t n) {
  if (n == 16) return simde_mm512_storeu_ps(p, v);
#if defined(SPARSECPU_EMULATED)
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane), simde_mm512_castps512_ps256(v));
  if (n > 8)
    _mm256_maskstore_ps(p + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - 8)), lane), simde_mm512_extractf32x8_ps(v, 1));
#else
  simde_mm512_mask_storeu_ps(p, static_cast<simde__mmask16>((1u << n) - 1), v);
#endif
}

// The int8 epilogue of 16 channels of one row: act(((acc - zp * w_sum) as float) * (x_scale * w_scale) + bias),
// the same operations, in the same order, as the other kernels; or, with kRaw, acc's bits.
template <Activation kAct, bool kRaw>
inline simde__m512 dequantize(simde__m512i acc, int32_t x_zp, float x_scale, simde__m512i w_sum, simde__m512 w_scale,
                              simde__m512 bias) {
  if (kRaw) return simde_mm512_castsi512_ps(acc);
  const simde__m512i centered = simde_mm512_sub_epi32(acc, simde_mm512_mullo_epi32(simde_mm512_set1_epi32(x_zp), w_sum));
  const simde__m512 scale = simde_mm512_mul_ps(simde_mm512_set1_ps(x_scale), w_scale);
  return vactivate<Vec512>(simde_mm512_fmadd_ps(simde_mm512_cvtepi32_ps(centered), scale, bias), kAct);
}

}  // namespace
}  // namespace sparsecpu
