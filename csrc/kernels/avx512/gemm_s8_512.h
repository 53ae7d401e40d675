// Dense int8 GEMM on AVX-512 (RowFn, see kernels.h), written once over a dot policy
// (avx512/dot_s8_512.h) and a register tile of MR rows x NP panels of 16 channels.
//
// Per VNNI dword step q (4 input columns): each panel's 64 weight bytes (16 channels x 4 columns)
// are one zmm, loaded once for the tile; each row's 4 u8 activations are broadcast to one zmm (a
// load-port vpbroadcastd) and meet every panel's weights: MR x NP dots for MR + NP loads.
// Accumulator lane c of (row r, panel j) is y[m0 + r][16 (panel + j) + c]: rows and channels in
// order, so the epilogue stores y directly, one row of 16 channels per store.
//
// The dot loop and the epilogue are separate functions: the dot loop is instantiated per tile shape
// (MR x NP and the edge tiles) and the epilogue per activation, instead of their product, and the
// epilogue's GELU constants never compete with the accumulators for registers. The accumulators
// leave the loop through memory once per tile (MR x NP stores against K / 4 x MR x NP dots).
#pragma once
#include <algorithm>
#include <cstring>

#include "kernels/avx512/dot_s8_512.h"

namespace sparsecpu {
namespace {

// With p.stream_weights (a weight that comes from memory at every call), the first row tile of each
// panel prefetches the panel's weights this far ahead (as the AVX2 kernel; measured there).
constexpr int64_t kGemmWeightPrefetch = 2048;
constexpr int kGemmMaxPanels = 4;

using GemmAcc = simde__m512i[kGemmMaxPanels];
using GemmDotsFn = void (*)(const RowParams& p, int64_t panel, int64_t m0, GemmAcc* out);

// One VNNI dword step: panel j's weights at wp + j ws, row r's activations at tile_row(r).
template <class Dot, int MR, int NP, bool kPrefetch>
__attribute__((always_inline)) inline void gemm_step(simde__m512i (&acc)[MR][NP], const int8_t* wp, int64_t ws,
                                                     const uint8_t* xa, const uint8_t* xb, int64_t l1, int64_t l3) {
  typename Dot::W wv[NP];
#pragma GCC unroll 4
  for (int j = 0; j < NP; ++j) {
    if (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(wp + j * ws + kGemmWeightPrefetch), _MM_HINT_T0);
    wv[j] = Dot::weights(simde_mm512_loadu_si512(wp + j * ws));
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    int32_t d;
    std::memcpy(&d, tile_row(r, xa, xb, l1, l3), sizeof(d));
    const typename Dot::X xv = Dot::x(simde_mm512_set1_epi32(d));
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) acc[r][j] = Dot::dot(acc[r][j], xv, wv[j]);
  }
}

// Accumulators of rows [m0, m0 + MR) x panels [panel, panel + NP) into out[r][j].
template <class Dot, int MR, int NP, bool kPrefetch>
__attribute__((noinline)) void gemm_dots(const RowParams& p, int64_t panel, int64_t m0, GemmAcc* out) {
  static_assert(MR <= 8 && NP <= kGemmMaxPanels, "tile larger than tile_row / the accumulator buffer");
  constexpr int KS = k_split<Dot>(MR * NP);
  const int64_t kq = static_cast<int64_t>(p.w.kq);
  int64_t ws = 64 * kq, l1 = p.ldx, l3 = 3 * p.ldx;
  const int8_t* wp = static_cast<const int8_t*>(p.w.values) + panel * ws;
  const uint8_t* xa = p.xq + m0 * l1;
  const uint8_t* xb = xa + l3;
  simde__m512i acc[KS][MR][NP];
#pragma GCC unroll 4
  for (int s = 0; s < KS; ++s)
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < NP; ++j) acc[s][r][j] = simde_mm512_setzero_si512();
  // KS interleaved accumulator sets (a short tile alone cannot hide vpdpbusd's latency); the
  // kq % KS odd steps first, into set 0.
  for (int64_t q = 0; q < kq % KS; ++q, wp += 64, xa += 4, xb += 4) gemm_step<Dot, MR, NP, kPrefetch>(acc[0], wp, ws, xa, xb, l1, l3);
  for (int64_t q = kq % KS; q < kq; q += KS) {
    opaque_strides(ws, l1, l3);
#pragma GCC unroll 4
    for (int s = 0; s < KS; ++s) gemm_step<Dot, MR, NP, kPrefetch>(acc[s], wp + 64 * s, ws, xa + 4 * s, xb + 4 * s, l1, l3);
    wp += 64 * KS;
    xa += 4 * KS;
    xb += 4 * KS;
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) {
#pragma GCC unroll 4
      for (int s = 1; s < KS; ++s) {
        // Without the barrier GCC 12 copied sets 1..KS-1 between registers at every iteration of
        // the loop above (18 vmovdqa per 12 vpdpbusd in the 1 x 3 tile).
        opaque_acc(acc[s][r][j]);
        acc[0][r][j] = simde_mm512_add_epi32(acc[0][r][j], acc[s][r][j]);
      }
      out[r][j] = acc[0][r][j];
    }
  }
}

// The dot loop for an edge tile of mr <= MR rows and np <= NP panels.
template <class Dot, int MR, int NP, bool kPrefetch>
GemmDotsFn gemm_dots_for(int mr, int np) {
  if constexpr (MR > 1) {
    if (mr < MR) return gemm_dots_for<Dot, MR - 1, NP, kPrefetch>(mr, np);
  }
  if constexpr (NP > 1) {
    if (np < NP) return gemm_dots_for<Dot, MR, NP - 1, kPrefetch>(mr, np);
  }
  return &gemm_dots<Dot, MR, NP, kPrefetch>;
}

template <Activation kAct, bool kRaw>
__attribute__((noinline)) void gemm_store(const RowParams& p, int64_t panel, int np, int64_t m0, int mr, const GemmAcc* acc) {
  for (int j = 0; j < np; ++j) {
    const int64_t ch0 = 16 * (panel + j);
    const int64_t cols = std::min<int64_t>(16, p.N - ch0);
    // w_scale / w_sum / bias are padded to whole panels.
    const simde__m512i w_sum = simde_mm512_loadu_si512(p.w.w_sum + ch0);
    const simde__m512 w_scale = simde_mm512_loadu_ps(p.w.w_scale + ch0);
    const simde__m512 bias = p.bias ? simde_mm512_loadu_ps(p.bias + ch0) : simde_mm512_setzero_ps();
    for (int r = 0; r < mr; ++r) {
      const int64_t m = m0 + r;
      const simde__m512 f = dequantize<kAct, kRaw>(acc[r][j], p.x_zp[m], p.x_scale[m], w_sum, w_scale, bias);
      store_n32f(p.y + m * p.ldy + ch0, f, cols);
    }
  }
}

// Panels [c0, c1) in groups of NP, each over rows [m0, m1) in tiles of MR: a panel group's weights
// stay in L1 / L2 across the row tiles. With p.stream_weights the first row tile prefetches them.
template <class Dot, int MR, int NP, Activation kAct, bool kRaw>
void gemm_panels(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  alignas(64) GemmAcc acc[MR];
  for (int64_t panel = c0; panel < c1; panel += NP) {
    const int np = static_cast<int>(std::min<int64_t>(NP, c1 - panel));
    bool prefetch = p.stream_weights;
    for (int64_t m = m0; m < m1;) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, m1 - m));
      const GemmDotsFn dots = prefetch ? gemm_dots_for<Dot, MR, NP, true>(mr, np) : gemm_dots_for<Dot, MR, NP, false>(mr, np);
      dots(p, panel, m, acc);
      gemm_store<kAct, kRaw>(p, panel, np, m, mr, acc);
      prefetch = false;
      m += mr;
    }
  }
}

template <class Dot, int MR, int NP>
void gemm_s8_512(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  with_epilogue(p.act, p.raw_s32, [&](auto e) {
    gemm_panels<Dot, MR, NP, decltype(e)::kAct, decltype(e)::kRaw>(p, c0, c1, m0, m1);
  });
}

}  // namespace
}  // namespace sparsecpu
