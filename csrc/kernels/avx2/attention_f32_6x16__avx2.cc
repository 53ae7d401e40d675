// Scaled dot-product attention of one (batch, head) pair with AVX2 + FMA, for BERT-sized heads
// (a few hundred keys, D = 64): everything of a head stays in L1/L2, so it is two small GEMMs
// around a row softmax.
//   K is transposed once into Kt [D][Skv padded to 16] (8x8 register transposes; K^T is copied).
//   Per tile of up to 6 query rows: scores = scale Q Kt in 6 x 16 register tiles (12 accumulators,
//   one broadcast of q per row and step of d), then mask, max, exp and sum per row, then
//   O = P V in 6 x 16 tiles over D (one broadcast of p per row and key), scaled by 1 / sum on the
//   way out. Rows are written where O's strides say (BERT: straight into [B, S, H, D]).
#include <cmath>
#include <limits>

#include "kernels/avx2/vec256.h"
#include "kernels/epilogue.h"
#include "kernels/activation_passes.h"

namespace sparsecpu {

namespace {

constexpr int kRows = 6;
using V = Vec256;

// Kt[d][j] = K[j][d] for j < Skv, 0 for Skv <= j < skv. K's D stride is k_sd: 1 (rows of K:
// transposed in 8x8 blocks) or not (K^T given: its rows are copied).
void pack_kt(const float* k, int64_t k_ss, int64_t k_sd, int64_t Skv, int64_t D, float* kt, int64_t skv) {
  if (k_sd != 1) {
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t j = 0; j < skv; ++j) kt[d * skv + j] = j < Skv ? k[j * k_ss + d * k_sd] : 0.0f;
    }
    return;
  }
  int64_t j = 0;
  for (; j + 8 <= Skv; j += 8) {
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(k + (j + i) * k_ss + d);
      transpose8x8(r);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(kt + (d + i) * skv + j, r[i]);
    }
    for (; d < D; ++d) {
      for (int i = 0; i < 8; ++i) kt[d * skv + j + i] = k[(j + i) * k_ss + d];
    }
  }
  for (; j < skv; ++j) {
    for (int64_t d = 0; d < D; ++d) kt[d * skv + j] = j < Skv ? k[j * k_ss + d] : 0.0f;
  }
}

// The register tile both products use: acc[r] (16 columns in two vectors) = sum over t < T of
// a[r * lda + t] * b[t * ldb + 0..15], one broadcast of a per row and step.
template <int R>
inline void tile_rx16(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t T, __m256 acc[R][2]) {
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t t = 0; t < T; ++t, b += ldb) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + t);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
  }
}

// s[r][j] = scale * q_r . k_j for R rows and all skv (padded) keys.
template <int R>
void scores(const float* q, int64_t q_ss, const float* kt, int64_t skv, int64_t D, float scale, float* s) {
  const __m256 vs = _mm256_set1_ps(scale);
  for (int64_t j = 0; j < skv; j += 16) {
    __m256 acc[R][2];
    tile_rx16<R>(q, q_ss, kt + j, skv, D, acc);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(s + r * skv + j, _mm256_mul_ps(acc[r][0], vs));
      _mm256_storeu_ps(s + r * skv + j + 8, _mm256_mul_ps(acc[r][1], vs));
    }
  }
}

// Row i of the scores: mask, then p = exp(s - max) in place (0 where masked); returns 1 / sum(p),
// or 0 when no key is left (the row's output is then 0).
float softmax_row(const AttnParams& p, int64_t m0, int64_t i, float* row, int64_t skv) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t mrow = m0 + i * p.m_sq;
  if (p.bias) {
    for (int64_t j = 0; j < p.Skv; ++j) row[j] += p.bias[mrow + j * p.m_sk];
  } else if (p.keep) {
    for (int64_t j = 0; j < p.Skv; ++j) {
      if (!p.keep[mrow + j * p.m_sk]) row[j] = kNegInf;
    }
  }
  for (int64_t j = p.Skv; j < skv; ++j) row[j] = kNegInf;
  __m256 mx = _mm256_set1_ps(kNegInf);
  for (int64_t j = 0; j < skv; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(row + j));
  const float m = V::hmax(mx);
  if (m == kNegInf) {
    for (int64_t j = 0; j < skv; ++j) row[j] = 0.0f;
    return 0.0f;
  }
  const __m256 vm = _mm256_set1_ps(m), ninf = _mm256_set1_ps(kNegInf);
  __m256 sum = _mm256_setzero_ps();
  for (int64_t j = 0; j < skv; j += 8) {
    const __m256 x = _mm256_loadu_ps(row + j);
    const __m256 e = _mm256_andnot_ps(_mm256_cmp_ps(x, ninf, _CMP_EQ_OQ), vexp<V>(_mm256_sub_ps(x, vm)));
    _mm256_storeu_ps(row + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  return 1.0f / V::hsum(sum);
}

// o_r = inv_r * sum_j p[r][j] v_j for R rows, over D in 16- and 8-wide column blocks and a scalar tail.
template <int R>
void weighted_values(const float* s, int64_t skv, const float* v, int64_t v_ss, int64_t Skv, int64_t D,
                     const float* inv, float* o, int64_t o_ss) {
  int64_t c = 0;
  for (; c + 16 <= D; c += 16) {
    __m256 acc[R][2];
    tile_rx16<R>(s, skv, v + c, v_ss, Skv, acc);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 w = _mm256_set1_ps(inv[r]);
      _mm256_storeu_ps(o + r * o_ss + c, _mm256_mul_ps(acc[r][0], w));
      _mm256_storeu_ps(o + r * o_ss + c + 8, _mm256_mul_ps(acc[r][1], w));
    }
  }
  for (; c + 8 <= D; c += 8) {
    __m256 acc[R];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t j = 0; j < Skv; ++j) {
      const __m256 v0 = _mm256_loadu_ps(v + j * v_ss + c);
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(s + r * skv + j), v0, acc[r]);
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(o + r * o_ss + c, _mm256_mul_ps(acc[r], _mm256_set1_ps(inv[r])));
  }
  for (; c < D; ++c) {
    for (int r = 0; r < R; ++r) {
      float a = 0.0f;
      for (int64_t j = 0; j < Skv; ++j) a += s[r * skv + j] * v[j * v_ss + c];
      o[r * o_ss + c] = a * inv[r];
    }
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

void attention_f32_6x16__avx2(const AttnParams& p, int64_t bh, float* scratch) {
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

}  // namespace sparsecpu
