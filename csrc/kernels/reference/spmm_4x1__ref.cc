// Reference kernels (SpMM, skinny SpMM, activation passes): plain C++, the executable specification of the micro-kernel contract in
// kernels.h. Every fast kernel is tested against these. Tile rows are 16 with 4-lane "vectors",
// which makes slab order the identity (m = 4 s + i).
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/scalar.h"

namespace sparsecpu {

namespace {

constexpr int64_t kMr = 16;

uint64_t col_of(const PackedView& w, uint64_t b) {
  return w.index_bytes == 2 ? static_cast<const uint16_t*>(w.col_idx)[b]
                            : static_cast<const uint32_t*>(w.col_idx)[b];
}

// Value of channel c (0..3) of stored block b: blocks come in quads, channel-major inside a quad.
uint64_t value_at(uint64_t b, uint64_t c) { return (b / 4) * 16 + c * 4 + (b % 4); }

// Sums of group g's blocks for one row of x: acc[c] += x[col * stride] * w[c] over the stored blocks,
// in block order (x points at the row's element of column 0; stride is 1 row-major, ldk K-major).
template <class W, class X, class Acc>
void group_row_sums(const PackedView& w, int64_t g, const X* x, int64_t stride, Acc acc[4]) {
  const auto* vals = static_cast<const W*>(w.values);
  for (uint64_t b = w.row_ptr[g]; b < w.row_ptr[g + 1]; ++b) {
    const Acc xv = x[col_of(w, b) * stride];
    for (int c = 0; c < 4; ++c) acc[c] += xv * vals[value_at(b, c)];
  }
}

void store_row(const SpmmParams& p, int64_t m, int64_t g, const float* v) {
  for (int64_t c = 0; c < 4 && 4 * g + c < p.N; ++c) p.y[m * p.ldy + 4 * g + c] = v[c];
}

}  // namespace

void spmm_4x1_s8__ref(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  const auto* xq = static_cast<const uint8_t*>(p.xk);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t m = m0; m < m0 + kMr && m < p.M; ++m) {
      int32_t acc[4] = {0, 0, 0, 0};
      group_row_sums<int8_t>(p.w, g, xq + m, p.ldk, acc);
      float out[4];
      for (int c = 0; c < 4; ++c) {
        if (p.raw_s32) {
          std::memcpy(&out[c], &acc[c], 4);
          continue;
        }
        const int64_t ch = 4 * g + c;
        out[c] = dequant_scalar(acc[c], p.x_zp[m], p.w.w_sum[ch], p.x_scale[m], p.w.w_scale[ch],
                                p.bias ? p.bias[ch] : 0.0f, p.act);
      }
      store_row(p, m, g, out);
    }
  }
}

void spmm_4x1_f32__ref(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  const auto* xt = static_cast<const float*>(p.xk);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t m = m0; m < m0 + kMr && m < p.M; ++m) {
      float acc[4] = {0, 0, 0, 0};
      group_row_sums<float>(p.w, g, xt + m, p.ldk, acc);
      for (int c = 0; c < 4; ++c) {
        if (p.bias) acc[c] += p.bias[4 * g + c];
        acc[c] = activate_scalar(acc[c], p.act);
      }
      store_row(p, m, g, acc);
    }
  }
}

namespace {

// Skinny M: rows [m0, m1) of x row-major (row m at x + m * ldx), one group of 4 channels at a time;
// out(y, acc, m, ch) writes channel ch of row m from its sum.
template <class W, class X, class Acc, class Out>
void skinny_ref(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1, const X* x, Out out) {
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t m = m0; m < m1; ++m) {
      Acc acc[4] = {0, 0, 0, 0};
      group_row_sums<W>(p.w, g, x + m * p.ldx, 1, acc);
      for (int64_t c = 0; c < 4 && 4 * g + c < p.N; ++c) out(p.y + m * p.ldy + 4 * g + c, acc[c], m, 4 * g + c);
    }
  }
}

}  // namespace

void spmm_4x1_s8_skinny__ref(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  skinny_ref<int8_t, uint8_t, int32_t>(p, g0, g1, m0, m1, p.xq, [&](float* y, int32_t acc, int64_t m, int64_t ch) {
    if (p.raw_s32) std::memcpy(y, &acc, 4);
    else *y = dequant_scalar(acc, p.x_zp[m], p.w.w_sum[ch], p.x_scale[m], p.w.w_scale[ch], p.bias ? p.bias[ch] : 0.0f,
                             p.act);
  });
}

void spmm_4x1_f32_skinny__ref(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  skinny_ref<float, float, float>(p, g0, g1, m0, m1, p.xf, [&](float* y, float acc, int64_t, int64_t ch) {
    *y = activate_scalar(acc + (p.bias ? p.bias[ch] : 0.0f), p.act);
  });
}

namespace {

bool quant_row_ref(const float* row, int64_t K, RowQParams* q, float* absmax) {
  bool finite = true;
  float mn = 0.0f, mx = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    finite &= std::isfinite(row[k]);
    mn = std::min(mn, row[k]);
    mx = std::max(mx, row[k]);
  }
  *q = row_qparams(mn, mx);
  if (absmax) *absmax = std::max(-mn, mx);
  return finite;
}

}  // namespace

bool quant_u8_kmajor__ref(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, uint8_t* xq,
                          int64_t ldq, float* scale, int32_t* zp, float* absmax) {
  bool finite = true;
  for (int64_t m = m0; m < m1; ++m) {
    if (m >= M) {
      scale[m] = 1.0f;
      zp[m] = 0;
      if (absmax) absmax[m] = 0.0f;
      for (int64_t k = 0; k < K; ++k) xq[k * ldq + m] = 0;
      continue;
    }
    const float* row = x + m * K;
    RowQParams q;
    finite &= quant_row_ref(row, K, &q, absmax ? absmax + m : nullptr);
    scale[m] = q.scale;
    zp[m] = q.zp;
    for (int64_t k = 0; k < K; ++k) xq[k * ldq + m] = quantize_u8(row[k], q);
  }
  return finite;
}

bool quant_u8_rows__ref(const float* x, int64_t /*M*/, int64_t K, int64_t m0, int64_t m1, uint8_t* xq, int64_t ldq,
                        float* scale, int32_t* zp, float* absmax) {
  bool finite = true;
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = x + m * K;
    RowQParams q;
    finite &= quant_row_ref(row, K, &q, absmax ? absmax + m : nullptr);
    scale[m] = q.scale;
    zp[m] = q.zp;
    for (int64_t k = 0; k < ldq; ++k) xq[m * ldq + k] = k < K ? quantize_u8(row[k], q) : 0;
  }
  return finite;
}

void add_act_f32__ref(const float* c, float* y, int64_t n, Activation act) {
  for (int64_t i = 0; i < n; ++i) y[i] = activate_scalar(y[i] + c[i], act);
}

// Two-pass mean and variance in double: the specification the vector kernel is held to.
void add_norm_f32__ref(float* y, const float* r, int64_t rows, int64_t n, const float* gamma, const float* beta,
                       float eps) {
  for (int64_t row = 0; row < rows; ++row) {
    float* t = y + row * n;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      t[i] += r ? r[row * n + i] : 0.0f;
      sum += t[i];
    }
    const double mean = sum / static_cast<double>(n);
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += (t[i] - mean) * (t[i] - mean);
    const double rstd = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
    for (int64_t i = 0; i < n; ++i)
      t[i] = static_cast<float>((t[i] - mean) * rstd * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f));
  }
}

bool transpose_f32_kmajor__ref(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, float* xt,
                               int64_t ldt) {
  bool finite = true;
  for (int64_t m = m0; m < m1; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      const float v = m < M ? x[m * K + k] : 0.0f;
      finite &= std::isfinite(v);
      xt[k * ldt + m] = v;
    }
  }
  return finite;
}

}  // namespace sparsecpu
