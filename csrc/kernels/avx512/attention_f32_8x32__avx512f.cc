// Scaled dot-product attention of one (batch, head) pair with AVX-512F, for BERT-sized heads (a
// few hundred keys, D = 64): everything of a head stays in L1/L2, so it is two small GEMMs around a
// row softmax.
//   K is transposed once into Kt [D][Skv padded to 16] (16 x 16 blocks, tile512.h; K^T is copied).
//   Per tile of up to 8 query rows: scores = scale Q Kt in 8 x 32 register tiles, then mask, max,
//   exp and sum per row, 16 keys a vector; then O = P V in 8 x 32 tiles over D, scaled by 1 / sum
//   on the way out. Rows are written where O's strides say (BERT: straight into [B, S, H, D]).
// The register tile: 8 rows x 2 zmm = 16 accumulators, 16 independent FMA chains (two FMA ports x
// 4 cycles of latency need 8 in flight); per step 2 vector loads and 8 broadcasts feed 16 FMAs,
// under the two 512-bit loads a cycle that keep both FMA ports busy. 8 rows are what the scratch
// holds (attn_scratch_floats: 8 score rows besides Kt); a taller tile would save few loads.
#include <algorithm>
#include <limits>

#include "kernels/avx512/softmax512.h"
#include "kernels/avx512/tile512.h"
#include "kernels/avx512/vec512.h"
#include "kernels/epilogue.h"

namespace sparsecpu {

namespace {

constexpr int kRows = 8;
using V = Vec512;
using F = simde__m512;

// Kt[d][j] = K[j][d] for j < Skv, 0 for Skv <= j < skv. K's D stride is k_sd: 1 (rows of K:
// transposed in 16 x 16 blocks) or not (K^T given: its rows are copied).
void pack_kt(const float* k, int64_t k_ss, int64_t k_sd, int64_t Skv, int64_t D, float* kt, int64_t skv) {
  if (k_sd != 1) {
    if (k_ss == 1) {
      for (int64_t d = 0; d < D; ++d) {
        const float* src = k + d * k_sd;
        float* dst = kt + d * skv;
        int64_t j = 0;
        for (; j + 16 <= Skv; j += 16) V::storef(dst + j, V::loadf(src + j));
        if (j < skv) V::storef(dst + j, Lanes(static_cast<int>(Skv - j)).load(src + j));
      }
      return;
    }
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t j = 0; j < skv; ++j) kt[d * skv + j] = j < Skv ? k[j * k_ss + d * k_sd] : 0.0f;
    }
    return;
  }
  for (int64_t j = 0; j < skv; j += 16) {
    const int rows = static_cast<int>(std::min<int64_t>(16, Skv - j));
    for (int64_t d = 0; d < D; d += 16) {
      const int cols = static_cast<int>(std::min<int64_t>(16, D - d));
      F out[16];
      if (rows == 16 && cols == 16) transpose16x16<true>(k + j * k_ss + d, k_ss, 16, 16, out);
      else transpose16x16<false>(k + j * k_ss + d, k_ss, rows, cols, out);
      for (int c = 0; c < cols; ++c) V::storef(kt + (d + c) * skv + j, out[c]);
    }
  }
}

// The register tile both products use: acc[r][v] (NV vectors of 16 columns) = sum over t < T of
// a[r * lda + t] * b[t * ldb + 16 v + 0..15], one broadcast of a per row and step. kTail: the last
// vector is read through `tail` (columns past the end are neither read nor summed).
template <int R, int NV, bool kTail>
__attribute__((always_inline)) inline void tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t T,
                                                const Lanes& tail, F acc[R][NV]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zerof();
  }
  for (int64_t t = 0; t < T; ++t, b += ldb) {
    F bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = kTail && v == NV - 1 ? tail.load(b + 16 * v) : V::loadf(b + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const F av = V::set1f(a[r * lda + t]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(av, bv[v], acc[r][v]);
    }
  }
}

// s[r][j] = scale * q_r . k_j for R rows and all skv (padded) keys: 32 keys a tile, then 16.
template <int R>
void scores(const float* q, int64_t q_ss, const float* kt, int64_t skv, int64_t D, float scale, float* s) {
  const F vs = V::set1f(scale);
  const Lanes all(16);
  int64_t j = 0;
  for (; j + 32 <= skv; j += 32) {
    F acc[R][2];
    tile<R, 2, false>(q, q_ss, kt + j, skv, D, all, acc);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      V::storef(s + r * skv + j, V::mul(acc[r][0], vs));
      V::storef(s + r * skv + j + 16, V::mul(acc[r][1], vs));
    }
  }
  if (j < skv) {
    F acc[R][1];
    tile<R, 1, false>(q, q_ss, kt + j, skv, D, all, acc);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) V::storef(s + r * skv + j, V::mul(acc[r][0], vs));
  }
}

// o_r = inv_r * sum_j p[r][j] v_j for R rows, over D in 32- and 16-column tiles and a masked tail.
template <int R>
void weighted_values(const float* s, int64_t skv, const float* v, int64_t v_ss, int64_t Skv, int64_t D,
                     const float* inv, float* o, int64_t o_ss) {
  const Lanes all(16);
  int64_t c = 0;
  for (; c + 32 <= D; c += 32) {
    F acc[R][2];
    tile<R, 2, false>(s, skv, v + c, v_ss, Skv, all, acc);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const F w = V::set1f(inv[r]);
      V::storef(o + r * o_ss + c, V::mul(acc[r][0], w));
      V::storef(o + r * o_ss + c + 16, V::mul(acc[r][1], w));
    }
  }
  if (c + 16 <= D) {
    F acc[R][1];
    tile<R, 1, false>(s, skv, v + c, v_ss, Skv, all, acc);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) V::storef(o + r * o_ss + c, V::mul(acc[r][0], V::set1f(inv[r])));
    c += 16;
  }
  if (c < D) {
    const Lanes tail(static_cast<int>(D - c));
    F acc[R][1];
    tile<R, 1, true>(s, skv, v + c, v_ss, Skv, tail, acc);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) tail.store(o + r * o_ss + c, V::mul(acc[r][0], V::set1f(inv[r])));
  }
}

template <int R>
void rows_tile(const AttnParams& p, int64_t m0, int64_t i, const float* q, const float* kt, const float* v, float* o,
               float* s, int64_t skv) {
  scores<R>(q + i * p.q_ss, p.q_ss, kt, skv, p.D, p.scale, s);
  float inv[R];
  for (int r = 0; r < R; ++r) inv[r] = softmax_row(p, m0, i + r, s + r * skv, skv);
  weighted_values<R>(s, skv, v, p.v_ss, p.Skv, p.D, inv, o + i * p.o_ss, p.o_ss);
}

}  // namespace

SPARSECPU_KERNELS_BEGIN
void attention_f32_8x32__avx512f(const AttnParams& p, int64_t bh, float* scratch) {
  const AttnHead head = attn_head(p, bh);
  const float *q = head.q, *v = head.v;
  float* o = head.o;
  const int64_t m0 = head.mask;
  const int64_t skv = (p.Skv + 15) / 16 * 16;
  float* kt = scratch;
  float* s = scratch + p.D * skv;
  pack_kt(head.k, p.k_ss, p.k_sd, p.Skv, p.D, kt, skv);
  int64_t i = 0;
  for (; i + kRows <= p.Sq; i += kRows) rows_tile<kRows>(p, m0, i, q, kt, v, o, s, skv);
  if (i < p.Sq)
    with_rows<kRows - 1>(p.Sq - i, [&](auto r) { rows_tile<decltype(r)::value>(p, m0, i, q, kt, v, o, s, skv); });
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
