// The masked row softmax of the AVX-512 attention kernels (fp32, and the AMX-BF16 one), 16 keys a
// vector. Include only from AVX-512 and AMX kernel sources.
#pragma once
#include <limits>

#include "kernels/avx512/tile512.h"
#include "kernels/avx512/vec512.h"
#include "kernels/epilogue.h"
#include "kernels/kernels.h"

namespace sparsecpu {
namespace {

// Row i of the scores (scaled): mask, then p = exp(s - max) in place (0 where masked and past Skv); returns
// 1 / sum(p), or 0 when no key is left (the row's output is then 0).
inline float softmax_row(const AttnParams& p, int64_t m0, int64_t i, float* row, int64_t skv) {
  using V = Vec512;
  using F = simde__m512;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t Skv = p.Skv;
  const int64_t mrow = m0 + i * p.m_sq;
  const F ninf = V::set1f(kNegInf);
  if (p.bias) {
    const float* bias = p.bias + mrow;
    if (p.m_sk == 1) {
      int64_t j = 0;
      for (; j + 16 <= Skv; j += 16) V::storef(row + j, V::add(V::loadf(row + j), V::loadf(bias + j)));
      if (j < Skv) V::storef(row + j, V::add(V::loadf(row + j), Lanes(static_cast<int>(Skv - j)).load(bias + j)));
    } else {
      for (int64_t j = 0; j < Skv; ++j) row[j] += bias[j * p.m_sk];
    }
  } else if (p.keep) {
    const uint8_t* keep = p.keep + mrow;
    int64_t j = 0;
    if (p.m_sk == 1) {
      for (; j + 16 <= Skv; j += 16) {
        const __m128i kv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(keep + j));
        const auto drop = static_cast<simde__mmask16>(_mm_movemask_epi8(_mm_cmpeq_epi8(kv, _mm_setzero_si128())));
        V::storef(row + j, simde_mm512_mask_mov_ps(V::loadf(row + j), drop, ninf));
      }
    }
    for (; j < Skv; ++j) {
      if (!keep[j * p.m_sk]) row[j] = kNegInf;
    }
  }
  for (int64_t j = Skv; j < skv; ++j) row[j] = kNegInf;
  F mx = ninf;
  for (int64_t j = 0; j < skv; j += 16) mx = V::max(mx, V::loadf(row + j));
  const float m = V::hmax(mx);
  if (m == kNegInf) {
    for (int64_t j = 0; j < skv; j += 16) V::storef(row + j, V::zerof());
    return 0.0f;
  }
  const F vm = V::set1f(m);
  F sum = V::zerof();
  for (int64_t j = 0; j < skv; j += 16) {
    const F x = V::loadf(row + j);
    const simde__mmask16 live = simde_mm512_cmp_ps_mask(x, ninf, SIMDE_CMP_NEQ_OQ);
    const F e = simde_mm512_maskz_mov_ps(live, vexp<V>(V::sub(x, vm)));
    V::storef(row + j, e);
    sum = V::add(sum, e);
  }
  return 1.0f / V::hsum(sum);
}

}  // namespace
}  // namespace sparsecpu
