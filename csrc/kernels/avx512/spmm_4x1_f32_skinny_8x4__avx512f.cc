// fp32 4x1-block SpMM for few rows (M <= 8, token-by-token decoding) on AVX-512F: vectorized over
// the 4 output channels x 4 columns of a quad of blocks instead of over rows (the SpMM tile of 64
// rows would compute 63 of them for nothing at M = 1). Tile: up to 8 rows x one group (4 channels);
// four groups' sums are joined into rows of 16 channels for the epilogue and the store.
//
// A quad of blocks is 16 weights, [c0: k0..k3][c1: ...][c2: ...][c3: ...]: one zmm, lane (c, k).
// For each row its 4 activations at the quad's columns are put in the lanes of their column in all
// 4 channels: one broadcast load and three merge-masked broadcast loads (a load port and one p0/p5
// uop each; building an xmm with vinsertps and broadcasting it would be 4 p5-only shuffles), then one
// FMA per row: lane (c, k) accumulates x[k] * w[c][k]. All rows of the call go together, so a
// weight vector loaded once feeds up to 8 FMAs (8 accumulators, the weights and an activation
// vector: a third of the register file). At M = 1 the quads alternate between two accumulators so
// that the FMA latency (4 cycles) does not pace the loop.
// After a group a 4x4 transpose-and-add per 4 rows folds the column partials (lane (c, r) = channel
// c of row r); four groups' folds are turned into rows of 16 channels (an in-lane transpose and one
// permute per row) for the bias, the activation and one 64-byte store per row.
#include <algorithm>

#include "kernels/avx512/tile512.h"
#include "kernels/avx512/vec512.h"
#include "kernels/epilogue.h"

namespace sparsecpu {
namespace {

using V = Vec512;
using F = simde__m512;

// a[0..3] lane (c, k) -> lane (c, r) = sum over k of a[r] lane (c, k), added as (k0 + k2) + (k1 + k3)
// for every row alike (the same bits whichever rows share the call).
__attribute__((always_inline)) inline F fold4(F a0, F a1, F a2, F a3) {
  const F t0 = V::add(V::unpacklo(a0, a1), V::unpackhi(a0, a1));  // lane c: r0 k02, r1 k02, r0 k13, r1 k13
  const F t1 = V::add(V::unpacklo(a2, a3), V::unpackhi(a2, a3));
  return V::add(V::unpacklo64(t0, t1), V::unpackhi64(t0, t1));
}

// acc[r] += the quad at block b for rows 0..MR-1 (row r at x + r * ldx).
template <int MR, class Idx>
__attribute__((always_inline)) inline void quad(const float* vals, const Idx* cols, uint64_t b, const float* x,
                                                int64_t ldx, F acc[MR]) {
  const F w = V::loadf(vals + 4 * b);
  const int64_t k0 = cols[b], k1 = cols[b + 1], k2 = cols[b + 2], k3 = cols[b + 3];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const float* xr = x + r * ldx;
    F xv = V::set1f(xr[k0]);
    xv = simde_mm512_mask_mov_ps(xv, 0x2222, V::set1f(xr[k1]));
    xv = simde_mm512_mask_mov_ps(xv, 0x4444, V::set1f(xr[k2]));
    xv = simde_mm512_mask_mov_ps(xv, 0x8888, V::set1f(xr[k3]));
    acc[r] = V::fmadd(w, xv, acc[r]);
  }
}

// acc[r] (lane (c, k)) over all quads of group g.
template <int MR, class Idx>
__attribute__((always_inline)) inline void group_dot(const RowParams& p, int64_t g, const float* x, F acc[MR]) {
  const Idx* cols = static_cast<const Idx*>(p.w.col_idx);
  const float* vals = static_cast<const float*>(p.w.values);
  constexpr int kSets = MR == 1 ? 2 : 1;
  F a[kSets][MR];
  for (auto& set : a)
    for (auto& v : set) v = V::zerof();
  uint64_t b = p.w.row_ptr[g];
  const uint64_t b1 = p.w.row_ptr[g + 1];
  for (; b + 4 * kSets <= b1; b += 4 * kSets) {
#pragma GCC unroll 2
    for (int s = 0; s < kSets; ++s) quad<MR, Idx>(vals, cols, b + 4 * s, x, p.ldx, a[s]);
  }
  if (kSets > 1 && b < b1) quad<MR, Idx>(vals, cols, b, x, p.ldx, a[0]);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc[r] = kSets > 1 ? V::add(a[0][r], a[kSets - 1][r]) : a[0][r];
}

// Channels [4 g, 4 g + 4 ng) (ng <= 4 groups) of rows m0 .. m0 + MR - 1.
template <int MR, class Idx, Activation kAct>
void skinny_tile(const RowParams& p, int64_t g, int ng, const float* x, int64_t m0) {
  constexpr int kBlocks = (MR + 3) / 4;
  // t[gi][blk] lane (c, i): channel c of group g + gi, row 4 blk + i. Indexed by the group at run
  // time, so it lives in memory: 8 stores a group, none in the quad loop.
  F t[4][kBlocks];
#pragma GCC unroll 1
  for (int gi = 0; gi < 4; ++gi) {
    if (gi >= ng) {
      for (auto& v : t[gi]) v = V::zerof();
      continue;
    }
    F acc[MR];
    group_dot<MR, Idx>(p, g + gi, x, acc);
    auto row = [&](int r) { return r < MR ? acc[r] : V::zerof(); };
#pragma GCC unroll 2
    for (int blk = 0; blk < kBlocks; ++blk)
      t[gi][blk] = fold4(row(4 * blk), row(4 * blk + 1), row(4 * blk + 2), row(4 * blk + 3));
  }
  const int64_t ch0 = 4 * g;
  // Only this call's groups: the next ones may be another thread's.
  const int cols = static_cast<int>(std::min<int64_t>(4 * ng, p.N - ch0));
  // The bias is zero-padded to whole groups only.
  const F bias = p.bias ? (ng == 4 ? V::loadf(p.bias + ch0) : Lanes(4 * ng).load(p.bias + ch0)) : V::zerof();
  // Element 4 g + c of a row takes element 4 c + g of the transposed folds.
  const simde__m512i order = simde_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
#pragma GCC unroll 2
  for (int blk = 0; blk < kBlocks; ++blk) {
    F v[4] = {t[0][blk], t[1][blk], t[2][blk], t[3][blk]};
    transpose4x4_lanes(v);  // v[i] lane (c, g): channel c of group g, row 4 blk + i
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const int r = 4 * blk + i;
      if (r >= MR) break;
      const F y = vactivate<V>(V::add(simde_mm512_permutexvar_ps(order, v[i]), bias), kAct);
      float* dst = p.y + (m0 + r) * p.ldy + ch0;
      if (cols == 16) V::storef(dst, y);
      else Lanes(cols).store(dst, y);
    }
  }
}

template <int MR, class Idx, Activation kAct>
void skinny_run(const RowParams& p, int64_t g0, int64_t g1, int64_t m0) {
  const float* x = p.xf + m0 * p.ldx;
  for (int64_t g = g0; g < g1; g += 4) skinny_tile<MR, Idx, kAct>(p, g, static_cast<int>(std::min<int64_t>(4, g1 - g)), x, m0);
}

template <class Idx, Activation kAct>
void skinny_rows(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; m += 8) {
    with_rows<8>(m1 - m, [&](auto r) { skinny_run<decltype(r)::value, Idx, kAct>(p, g0, g1, m); });
  }
}

template <class Idx>
void skinny_idx(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  with_epilogue(p.act, false, [&](auto e) { skinny_rows<Idx, decltype(e)::kAct>(p, g0, g1, m0, m1); });
}

}  // namespace

SPARSECPU_KERNELS_BEGIN
void spmm_4x1_f32_skinny_8x4__avx512f(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  if (p.w.index_bytes == 2) skinny_idx<uint16_t>(p, g0, g1, m0, m1);
  else skinny_idx<uint32_t>(p, g0, g1, m0, m1);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
