// Plain C++ pieces the reference kernels share (one kernel a file, reference/*__ref.cc): the 4x1 BSR
// layout read block by block, a group's sums over rows, the int8 and fp32 outputs, and a row's u8
// quantization parameters.
// Anonymous namespace, like the vector kernels' headers.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/scalar.h"

namespace sparsecpu {
namespace {

// The reference SpMM kernels stand in for a 16-row tile with 4-lane "vectors", which makes slab order the
// identity (m = 4 s + i; see slab_order_index).
constexpr int64_t kRefTileRows = 16;

inline uint64_t col_of(const PackedView& w, uint64_t b) {
  return w.index_bytes == 2 ? static_cast<const uint16_t*>(w.col_idx)[b]
                            : static_cast<const uint32_t*>(w.col_idx)[b];
}

// Value of channel c (0..3) of stored block b: blocks come in quads, channel-major inside a quad.
inline uint64_t value_at(uint64_t b, uint64_t c) { return (b / 4) * 16 + c * 4 + (b % 4); }

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

// Groups [g0, g1) of w for rows [m0, m1) of x, whose row m has column k at x[m * sm + k * sk] (row-major:
// sm = ldx, sk = 1; K-major: sm = 1, sk = ldk); out(acc, m, ch) stores channel ch (< N) of row m from its sum.
template <class W, class Acc, class X, class Out>
void bsr_rows(const PackedView& w, int64_t N, int64_t g0, int64_t g1, int64_t m0, int64_t m1, const X* x, int64_t sm,
              int64_t sk, Out out) {
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t m = m0; m < m1; ++m) {
      Acc acc[4] = {0, 0, 0, 0};
      group_row_sums<W>(w, g, x + m * sm, sk, acc);
      for (int64_t c = 0; c < 4 && 4 * g + c < N; ++c) out(acc[c], m, 4 * g + c);
    }
  }
}

// Output (m, ch) of an int8 kernel (SpmmParams or RowParams): the epilogue of the s32 sum, or its bits with raw_s32.
template <class P>
inline void store_s8(const P& p, int32_t acc, int64_t m, int64_t ch) {
  float* y = p.y + m * p.ldy + ch;
  if (p.raw_s32) std::memcpy(y, &acc, 4);
  else *y = dequant_scalar(acc, p.x_zp[m], p.w.w_sum[ch], p.x_scale[m], p.w.w_scale[ch], p.bias ? p.bias[ch] : 0.0f,
                           p.act);
}

// Output (m, ch) of an fp32 kernel: sum, bias, activation.
template <class P>
inline void store_f32(const P& p, float acc, int64_t m, int64_t ch) {
  p.y[m * p.ldy + ch] = activate_scalar(p.bias ? acc + p.bias[ch] : acc, p.act);
}

inline bool quant_row_ref(const float* row, int64_t K, RowQParams* q, float* absmax) {
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
}  // namespace sparsecpu
