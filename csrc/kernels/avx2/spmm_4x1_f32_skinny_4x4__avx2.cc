// fp32 4x1-block SpMM for few rows (M <= 8, token-by-token decoding) on AVX2: vectorized over the
// 4 output channels of a group and the 4 columns of a quad instead of over rows (the SpMM tile of
// 16 rows would compute 15 of them for nothing at M = 1).
//
// A quad of blocks is 16 weights, [c0: k0..k3][c1: ...][c2: ...][c3: ...]: two ymm, (c0, c1) and
// (c2, c3). For each row its 4 activations at the quad's columns are gathered into one xmm (scalar
// loads and inserts: vgatherdps is microcoded and slower on Zen 3), duplicated into both halves,
// and met with one FMA per weight vector: lane (c, k) accumulates x[k] * w[c][k]. After the
// group, two horizontal adds fold the 4 column partials of each channel. Tile: 4 rows x one group (4
// channels), rows 4 at a time (8 accumulators + 2 weight vectors + the row's activations fit the 16
// registers); two groups' sums are joined into one 8-channel vector for the bias, the activation and the store.
#include "kernels/avx2/vec256.h"
#include "kernels/epilogue.h"

namespace sparsecpu {
namespace {

using V = Vec256;

// sum over k of the quad partials: acc01 = [c0 k0..k3 | c1 k0..k3], acc23 = [c2 .. | c3 ..] -> [c0 c1 c2 c3].
inline __m128 fold(__m256 acc01, __m256 acc23) {
  const __m256 h = _mm256_hadd_ps(acc01, acc23);  // [c0 01, c0 23, c2 01, c2 23 | c1 .., c1 .., c3 .., c3 ..]
  const __m256 h2 = _mm256_hadd_ps(h, h);         // [c0, c2, c0, c2 | c1, c3, c1, c3]
  return _mm_unpacklo_ps(_mm256_castps256_ps128(h2), _mm256_extractf128_ps(h2, 1));
}

template <int MR, class Idx>
__attribute__((always_inline)) inline void group_sums(const RowParams& p, int64_t g, const float* x, __m128 out[MR]) {
  const Idx* cols = static_cast<const Idx*>(p.w.col_idx);
  const float* vals = static_cast<const float*>(p.w.values);
  const int64_t ldx = p.ldx;
  __m256 a01[MR], a23[MR];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) a01[r] = a23[r] = V::zerof();
  const uint64_t b1 = p.w.row_ptr[g + 1];
  for (uint64_t b = p.w.row_ptr[g]; b < b1; b += 4) {
    const __m256 w01 = V::loadf(vals + 4 * b), w23 = V::loadf(vals + 4 * b + 8);
    const uint64_t k0 = cols[b], k1 = cols[b + 1], k2 = cols[b + 2], k3 = cols[b + 3];
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const float* xr = x + r * ldx;
      const __m128 lo = _mm_insert_ps(_mm_insert_ps(_mm_insert_ps(_mm_load_ss(xr + k0), _mm_load_ss(xr + k1), 0x10),
                                                    _mm_load_ss(xr + k2), 0x20),
                                      _mm_load_ss(xr + k3), 0x30);
      const __m256 xv = _mm256_set_m128(lo, lo);
      a01[r] = V::fmadd(w01, xv, a01[r]);
      a23[r] = V::fmadd(w23, xv, a23[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) out[r] = fold(a01[r], a23[r]);
}

template <int MR, class Idx, Activation kAct>
void skinny_run(const RowParams& p, int64_t g0, int64_t g1, int64_t m0) {
  const float* x = p.xf + m0 * p.ldx;
  for (int64_t g = g0; g < g1; g += 2) {
    const bool pair = g + 1 < g1;
    __m128 s0[MR], s1[MR];
    group_sums<MR, Idx>(p, g, x, s0);
    if (pair) {
      group_sums<MR, Idx>(p, g + 1, x, s1);
    } else {
      for (int r = 0; r < MR; ++r) s1[r] = _mm_setzero_ps();
    }
    const int64_t ch0 = 4 * g;
    const int64_t cols = std::min<int64_t>(pair ? 8 : 4, p.N - ch0);
    __m256 bv = V::zerof();
    if (p.bias) bv = V::loadf_pair(p.bias + ch0, pair);
    for (int r = 0; r < MR; ++r) {
      const __m256 f = vactivate<V>(V::add(_mm256_set_m128(s1[r], s0[r]), bv), kAct);
      float* y = p.y + (m0 + r) * p.ldy + ch0;
      V::storef_n(y, f, cols);
    }
  }
}

template <class Idx, Activation kAct>
void skinny_rows(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; m += 4) {
    with_rows<4>(m1 - m, [&](auto r) { skinny_run<decltype(r)::value, Idx, kAct>(p, g0, g1, m); });
  }
}

template <class Idx>
void skinny_idx(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  with_epilogue(p.act, false, [&](auto e) { skinny_rows<Idx, decltype(e)::kAct>(p, g0, g1, m0, m1); });
}

}  // namespace

void spmm_4x1_f32_skinny_4x4__avx2(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  if (p.w.index_bytes == 2) skinny_idx<uint16_t>(p, g0, g1, m0, m1);
  else skinny_idx<uint32_t>(p, g0, g1, m0, m1);
}

}  // namespace sparsecpu
