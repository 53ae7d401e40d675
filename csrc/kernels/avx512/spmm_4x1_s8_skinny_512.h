// int8 4x1-block SpMM for few rows (M <= 8, token-by-token decoding) on AVX-512 (RowFn, see
// kernels.h), written once over a dot policy (avx512/dot_s8_512.h): vectorized over the 4 output
// channels of a group instead of over rows.
//
// Per step of 4 quads of blocks (16 kept input columns of one group): the 64 weight bytes are one
// zmm whose 128-bit lane j is quad j (4 channels x one VNNI dword each), read once for all rows. For
// each row, the u8 activations at the 16 columns are gathered into 4 dwords with scalar byte loads
// (the columns are data; a vpgatherdd of dwords would read up to 3 bytes past a row), dword j
// broadcast into lane j, and met with the weights in one dot per row. Each stored block costs 4 weight bytes and one index, read
// once for all rows; the byte gather of x, not the dots, sets the pace. A group's last 1..3 quads
// take the same step with the missing quads' weights loaded as zeros and their x not read.
//
// A group's accumulator (4 lanes of partial sums per channel) is folded into one 128-bit lane of a
// 16-channel staging vector per row; every 4 groups the epilogue stores 16 channels of each row at
// once. Register budget (32 zmm): 8 accumulators + 8 staging vectors + 8 rows' x + weights (1, BW
// 2) + BW's split x and 0x00FF constant.
//
// The dot loop is instantiated per row count (1..8) and the epilogue per activation, as in
// avx512/gemm_s8_512.h; the staged sums go to the epilogue through memory once per 16 channels.
#pragma once
#include <algorithm>

#include "kernels/avx512/dot_s8_512.h"

namespace sparsecpu {
namespace {

using SkinnyFlushFn = void (*)(const RowParams& p, const simde__m512i* acc, int rows, int64_t g_first, int ng, int64_t m0);

// The 4 u8 activations of row xr at columns k0..k3, as one VNNI dword.
__attribute__((always_inline)) inline uint32_t gather4(const uint8_t* xr, uint32_t k0, uint32_t k1, uint32_t k2, uint32_t k3) {
  return uint32_t(xr[k0]) | uint32_t(xr[k1]) << 8 | uint32_t(xr[k2]) << 16 | uint32_t(xr[k3]) << 24;
}

// One step over the blocks at k / w: 4 quads (kFull) or nq = 1..3. Quad by quad, so that its 4
// column indices are loaded once for all rows; each row's dword goes straight to its lane with a
// masked vpbroadcastd (lanes past nq keep quad 0's dword and meet zero weights).
template <class Dot, int MR, bool kFull>
__attribute__((always_inline)) inline void skinny_step(simde__m512i (&acc)[MR], const uint8_t* xa, const uint8_t* xb,
                                                       int64_t l1, int64_t l3, const uint16_t* k, const int8_t* w, int nq) {
  simde__m512i xv[MR];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    if (!kFull && j >= nq) break;
    const uint32_t k0 = k[4 * j], k1 = k[4 * j + 1], k2 = k[4 * j + 2], k3 = k[4 * j + 3];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const int32_t d = static_cast<int32_t>(gather4(tile_row(r, xa, xb, l1, l3), k0, k1, k2, k3));
      xv[r] = j == 0 ? simde_mm512_set1_epi32(d) : simde_mm512_mask_set1_epi32(xv[r], static_cast<simde__mmask16>(0xF << (4 * j)), d);
    }
  }
  const typename Dot::W wv = Dot::weights(kFull ? simde_mm512_loadu_si512(w) : load_n32(w, 4 * nq));
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc[r] = Dot::dot(acc[r], Dot::x(xv[r]), wv);
}

// Groups [g0, g1) for rows [m0, m0 + MR), 4 groups (16 channels) per flush.
template <class Dot, int MR>
__attribute__((noinline)) void skinny_groups(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, SkinnyFlushFn flush) {
  static_assert(MR <= 8, "more rows than tile_row reaches");
  const uint16_t* cols = static_cast<const uint16_t*>(p.w.col_idx);  // int8: always 16-bit column indices
  const int8_t* vals = static_cast<const int8_t*>(p.w.values);
  const uint32_t* row_ptr = p.w.row_ptr;
  int64_t l1 = p.ldx, l3 = 3 * p.ldx;
  const uint8_t* xa = p.xq + m0 * l1;
  const uint8_t* xb = xa + l3;
  alignas(64) simde__m512i out[MR];
  for (int64_t gs = g0; gs < g1; gs += 4) {
    const int ng = static_cast<int>(std::min<int64_t>(4, g1 - gs));
    simde__m512i stage[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) stage[r] = simde_mm512_setzero_si512();
    for (int s = 0; s < ng; ++s) {
      simde__m512i acc[MR];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[r] = simde_mm512_setzero_si512();
      uint64_t b = row_ptr[gs + s];
      const uint64_t b1 = row_ptr[gs + s + 1];
      for (; b + 16 <= b1; b += 16) {
        opaque_strides(l1, l3);
        skinny_step<Dot, MR, true>(acc, xa, xb, l1, l3, cols + b, vals + 4 * b, 4);
      }
      if (b < b1) skinny_step<Dot, MR, false>(acc, xa, xb, l1, l3, cols + b, vals + 4 * b, static_cast<int>((b1 - b) / 4));
      // Sum of the 4 lanes in every lane (swap halves, then neighbours), kept in lane s.
      const simde__mmask16 lane = static_cast<simde__mmask16>(0xFu << (4 * s));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        simde__m512i t = simde_mm512_add_epi32(acc[r], simde_mm512_shuffle_i32x4(acc[r], acc[r], 0x4E));
        t = simde_mm512_add_epi32(t, simde_mm512_shuffle_i32x4(t, t, 0xB1));
        stage[r] = simde_mm512_mask_mov_epi32(stage[r], lane, t);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) out[r] = stage[r];
    flush(p, out, MR, gs, ng, m0);
  }
}

// Channels [4 g_first, 4 (g_first + ng)) of rows [m0, m0 + rows).
template <Activation kAct, bool kRaw>
__attribute__((noinline)) void skinny_flush(const RowParams& p, const simde__m512i* acc, int rows, int64_t g_first, int ng,
                                            int64_t m0) {
  const int64_t ch0 = 4 * g_first, nch = 4 * ng;
  const int64_t cols = std::min<int64_t>(nch, p.N - ch0);
  // w_scale / w_sum / bias hold 4 per group: only the staged groups' channels are read.
  simde__m512i w_sum = simde_mm512_setzero_si512();
  simde__m512 w_scale = simde_mm512_setzero_ps(), bias = simde_mm512_setzero_ps();
  if (!kRaw) {
    w_sum = load_n32(p.w.w_sum + ch0, nch);
    w_scale = load_n32f(p.w.w_scale + ch0, nch);
    if (p.bias) bias = load_n32f(p.bias + ch0, nch);
  }
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    const simde__m512 f = dequantize<kAct, kRaw>(acc[r], p.x_zp[m], p.x_scale[m], w_sum, w_scale, bias);
    store_n32f(p.y + m * p.ldy + ch0, f, cols);
  }
}

template <class Dot>
void skinny_s8_512(const RowParams& p, int64_t g0, int64_t g1, int64_t m0, int64_t m1) {
  SkinnyFlushFn flush = nullptr;
  with_epilogue(p.act, p.raw_s32, [&](auto e) { flush = &skinny_flush<decltype(e)::kAct, decltype(e)::kRaw>; });
  if (m1 <= m0 || m1 - m0 > 8) return;
  with_rows<8>(m1 - m0, [&](auto r) { skinny_groups<Dot, decltype(r)::value>(p, g0, g1, m0, flush); });
}

}  // namespace
}  // namespace sparsecpu
