// Dense int8 GEMM on AMX tiles (RowFn, see kernels.h): a tile of 32 rows x 2 panels (32 channels),
// K in steps of 64 (one tdpbusd: 16 rows x 16 channels x 64 u8 x s8 products per tile).
//
// Tiles: C(r, j) = tmm(2r + j), the s32 accumulators of rows 16r.. of the tile and panel j; A(r) =
// tmm(4 + r), 16 rows x 64 input columns of u8 activations (row stride ldx); B(j) = tmm(6 + j), 16
// input quads x 16 channels x 4 of panel j. The dense format (format.h) stores a panel as VNNI
// K/4 x 16 x 4 int8, front to back: each 1 KB of it is a B tile with a 64-byte row stride, loaded as it
// is. Per K step: 2 A + 2 B loads (4 KB) feed 4 tdpbusd, all 8 tiles in use.
//
// Edges. Rows: a tile of mr < 32 rows configures fewer rows (A(1), C(1, j) unused up to 16 rows), so no
// activation row past m1 is read. Channels: an odd panel at the end of the range runs on B(0) / C(r, 0)
// alone; channels >= N within a panel hold zero weights and are not stored. K: when K / 4 is not a
// multiple of 16 the last step reads B from a copy of the panel's remaining quads padded with zero rows
// (a full B tile would read the next panel's weights); A may read its whole 64 columns there, as ldx is a
// multiple of 64 (kernels.h), and those columns meet the zero rows.
// Configurations: ldtilecfg zeroes every tile, so the shape is fixed for a whole tile (K loop and all);
// a call has at most two (whole tiles, and the partial one of its last rows), and the row tiles of a
// panel pair alternate their order from one pair to the next, so that the configuration changes once
// per pair and not twice.
//
// Epilogue: the accumulators go through memory (tilestored) into the AVX-512 GEMM's epilogue
// (avx512/gemm_s8_512.h: dequantize with x_zp, w_sum and the scales, bias, activation; or the raw s32),
// the same operations in the same order as every other int8 kernel.
#include <algorithm>
#include <cstring>

#include "kernels/amx/tile.h"
#include "kernels/avx512/gemm_s8_512.h"

namespace sparsecpu {
namespace {

constexpr int kAmxRows = 32;               // rows per tile: 2 A tiles
constexpr int kAmxPanels = 2;              // panels per tile: 2 B tiles
constexpr int kQuadsPerStep = 16;          // B rows: input quads per tdpbusd
constexpr int64_t kBTileBytes = 16 * 64;   // one step of one panel
// With p.stream_weights, the first row tile of a panel pair prefetches each panel this far ahead (4 K
// steps): the tile loads of a step are too few and too short to hide a miss to memory.
constexpr int64_t kAmxWeightPrefetch = 4 * kBTileBytes;

// rows0: rows of A(0) and C(0, j) (1..16); rows1: of A(1) and C(1, j) (0: those tiles unconfigured).
amx::TileConfig gemm_config(int rows0, int rows1) {
  amx::TileConfig c;
  std::memset(&c, 0, sizeof(c));
  c.palette = 1;
  auto set = [&](int t, int rows) {
    c.rows[t] = static_cast<uint8_t>(rows);
    c.colsb[t] = rows ? 64 : 0;
  };
  set(0, rows0), set(1, rows0), set(4, rows0);
  set(2, rows1), set(3, rows1), set(5, rows1);
  set(6, kQuadsPerStep), set(7, kQuadsPerStep);
  return c;
}

// The weights of one panel pair: full K steps at w[j] + s * 1 KB, the last partial step (if any) at tail[j].
struct PairWeights {
  const int8_t* w[kAmxPanels];
  const int8_t* tail[kAmxPanels];
};

template <bool kPrefetch>
__attribute__((always_inline)) inline void prefetch_step(const int8_t* w) {
  if (kPrefetch) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) _mm_prefetch(reinterpret_cast<const char*>(w + kAmxWeightPrefetch + 64 * i), _MM_HINT_T0);
  }
}

// One K step: A rows from xa (and xa + 16 ldx), B from b0 (and b1), both 64-byte rows.
template <bool kTwoA, bool kTwoB>
__attribute__((always_inline)) inline void gemm_step(const uint8_t* xa, const uint8_t* xb, int64_t ldx, const int8_t* b0,
                                                     const int8_t* b1) {
  amx::load<4>(xa, ldx);
  amx::load<6>(b0, 64);
  amx::dpbusd<0, 4, 6>();
  if (kTwoB) {
    amx::load<7>(b1, 64);
    amx::dpbusd<1, 4, 7>();
  }
  if (kTwoA) {
    amx::load<5>(xb, ldx);
    amx::dpbusd<2, 5, 6>();
    if (kTwoB) amx::dpbusd<3, 5, 7>();
  }
}

// The accumulators of rows [m0, m0 + 16 or 32) x one or two panels into acc[r][j] (the epilogue's layout).
template <bool kTwoA, bool kTwoB, bool kPrefetch>
__attribute__((noinline)) void gemm_tile(const RowParams& p, const PairWeights& pw, int64_t m0, GemmAcc* acc) {
  const int64_t ldx = p.ldx;
  const int64_t steps = static_cast<int64_t>(p.w.kq) / kQuadsPerStep;
  const uint8_t* xa = p.xq + m0 * ldx;
  const uint8_t* xb = xa + 16 * ldx;
  const int8_t* b0 = pw.w[0];
  const int8_t* b1 = pw.w[1];
  amx::zero<0>();
  if (kTwoB) amx::zero<1>();
  if (kTwoA) amx::zero<2>();
  if (kTwoA && kTwoB) amx::zero<3>();
  for (int64_t s = 0; s < steps; ++s) {
    prefetch_step<kPrefetch>(b0);
    if (kTwoB) prefetch_step<kPrefetch>(b1);
    gemm_step<kTwoA, kTwoB>(xa, xb, ldx, b0, b1);
    xa += 64, xb += 64;
    b0 += kBTileBytes, b1 += kBTileBytes;
  }
  if (pw.tail[0]) gemm_step<kTwoA, kTwoB>(xa, xb, ldx, pw.tail[0], pw.tail[1]);
  constexpr int64_t stride = sizeof(GemmAcc);
  amx::store<0>(&acc[0][0], stride);
  if (kTwoB) amx::store<1>(&acc[0][1], stride);
  if (kTwoA) amx::store<2>(&acc[16][0], stride);
  if (kTwoA && kTwoB) amx::store<3>(&acc[16][1], stride);
}

using GemmTileFn = void (*)(const RowParams&, const PairWeights&, int64_t, GemmAcc*);

template <bool kPrefetch>
GemmTileFn gemm_tile_for(bool two_a, bool two_b) {
  if (two_a) return two_b ? &gemm_tile<true, true, kPrefetch> : &gemm_tile<true, false, kPrefetch>;
  return two_b ? &gemm_tile<false, true, kPrefetch> : &gemm_tile<false, false, kPrefetch>;
}

// Panels [c0, c1) in pairs, each over rows [m0, m1) in tiles of 32 rows (the last one partial): a
// pair's weights stay in L1 / L2 across its row tiles.
template <Activation kAct, bool kRaw>
void gemm_amx(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  alignas(64) GemmAcc acc[kAmxRows];
  // The last partial K step of each panel of the pair: its quads, then zero rows.
  alignas(64) int8_t tail[kAmxPanels][kBTileBytes];
  const int64_t kq = static_cast<int64_t>(p.w.kq);
  const int64_t tail_quads = kq % kQuadsPerStep, tail_at = (kq - tail_quads) * 64;
  if (tail_quads) std::memset(tail, 0, sizeof(tail));
  const int8_t* values = static_cast<const int8_t*>(p.w.values);

  // Row tiles: whole ones from m0, then the partial one.
  const int64_t whole = (m1 - m0) / kAmxRows;
  const int partial = static_cast<int>((m1 - m0) % kAmxRows);
  const int64_t tiles = whole + (partial ? 1 : 0);
  const amx::TileConfig whole_cfg = gemm_config(16, 16);
  const amx::TileConfig partial_cfg = gemm_config(std::min(partial, 16), std::max(partial - 16, 0));
  amx::TileSession session;

  for (int64_t panel = c0, pair = 0; panel < c1; panel += kAmxPanels, ++pair) {
    const int np = static_cast<int>(std::min<int64_t>(kAmxPanels, c1 - panel));
    PairWeights pw{};
    for (int j = 0; j < kAmxPanels; ++j) {
      // Without a second panel, its pointers repeat the first's; the one-panel tile never loads B(1).
      const int64_t pj = panel + std::min(j, np - 1);
      pw.w[j] = values + pj * kq * 64;
      if (tail_quads) {
        std::memcpy(tail[j], pw.w[j] + tail_at, tail_quads * 64);
        pw.tail[j] = tail[j];
      }
    }
    bool prefetch = p.stream_weights;
    for (int64_t i = 0; i < tiles; ++i) {
      // Odd pairs take the row tiles last to first: the configuration of one pair's last tile is the
      // next pair's first.
      const int64_t t = pair % 2 ? tiles - 1 - i : i;
      const bool is_partial = t == whole;
      const int mr = is_partial ? partial : kAmxRows;
      const int64_t m = m0 + t * kAmxRows;
      session.use(is_partial ? partial_cfg : whole_cfg);
      const GemmTileFn tile = prefetch ? gemm_tile_for<true>(mr > 16, np == 2) : gemm_tile_for<false>(mr > 16, np == 2);
      tile(p, pw, m, acc);
      gemm_store<kAct, kRaw>(p, panel, np, m, mr, acc);
      prefetch = false;
    }
  }
}

}  // namespace

SPARSECPU_KERNELS_BEGIN
void gemm_s8_32x32__amx(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  with_epilogue(p.act, p.raw_s32, [&](auto e) {
    gemm_amx<decltype(e)::kAct, decltype(e)::kRaw>(p, c0, c1, m0, m1);
  });
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
