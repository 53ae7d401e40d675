// Block-sparse int8 on AMX tiles over the panel format (RowFn, see kernels.h; format.h for the layout):
// a tile of 32 rows x 1 panel (16 channels), the panel's stored columns in steps of 64 (one tdpbusd:
// 16 rows x 16 channels x 64 u8 x s8 products per tile).
//
// Tiles: C(r) = tmm(r), the s32 accumulators of rows 16r.. of the tile; A(r) = tmm(4 + r), 16 rows x 64
// gathered u8 activations; B = tmm6, the step's 16 quads x 16 channels x 4 int8, stored as one 1 KB B
// tile (64-byte row stride) and loaded as it is.
//
// Gather: per step, the activations of the step's 64 columns (col_idx) for the tile's rows are copied
// from the row-major quantized x into a 32 x 64 buffer that A(0) / A(1) load with a 64-byte stride. A
// panel's columns differ from the next panel's, so the gather is per panel and cannot be shared the way
// the dense kernel shares its A tiles between two panels. Padding columns repeat a kept column (a valid
// index) and meet zero weights.
// Edges. Rows: a tile of mr < 32 rows configures fewer rows (A(1), C(1) unused up to 16 rows), and only
// mr rows are gathered. Channels >= N in the last panel hold zero weights and are not stored. An empty
// panel (no stored column) stores the zeroed accumulators: its outputs are the bias (and activation).
//
// Epilogue: the accumulators go through memory (tilestored) into the AVX-512 GEMM's epilogue
// (avx512/gemm_s8_512.h), as the dense AMX GEMM: the same operations in the same order as every other
// int8 kernel.
#include <algorithm>
#include <cstring>

#include "kernels/amx/tile.h"
#include "kernels/avx512/gemm_s8_512.h"

namespace sparsecpu {
namespace {

constexpr int kPanelRows = 32;                                         // rows per tile: 2 A tiles
constexpr int64_t kStep = static_cast<int64_t>(kPanelStep);            // columns per tdpbusd
constexpr int64_t kPanelBTileBytes = kStep * static_cast<int64_t>(kDensePanel);  // one step of one panel

// rows0: rows of A(0) and C(0) (1..16); rows1: of A(1) and C(1) (0: those tiles unconfigured).
amx::TileConfig panel_config(int rows0, int rows1) {
  amx::TileConfig c;
  std::memset(&c, 0, sizeof(c));
  c.palette = 1;
  auto set = [&](int t, int rows) {
    c.rows[t] = static_cast<uint8_t>(rows);
    c.colsb[t] = rows ? 64 : 0;
  };
  set(0, rows0), set(4, rows0);
  set(1, rows1), set(5, rows1);
  set(6, 16);
  return c;
}

// The accumulators of rows [m0, m0 + mr) x one panel into acc[r][0] (the epilogue's layout).
template <bool kTwoA>
__attribute__((noinline)) void panel_tile(const RowParams& p, int64_t panel, int64_t m0, int mr, GemmAcc* acc) {
  alignas(64) uint8_t a[kPanelRows][kStep];
  const auto* cols = static_cast<const uint16_t*>(p.w.col_idx);
  const int64_t b0 = p.w.row_ptr[panel], b1 = p.w.row_ptr[panel + 1];
  const int8_t* w = static_cast<const int8_t*>(p.w.values) + b0 * static_cast<int64_t>(kDensePanel);
  amx::zero<0>();
  if (kTwoA) amx::zero<1>();
  for (int64_t b = b0; b < b1; b += kStep, w += kPanelBTileBytes) {
    const uint16_t* c = cols + b;
    for (int r = 0; r < mr; ++r) {
      const uint8_t* x = p.xq + (m0 + r) * p.ldx;
#pragma GCC unroll 8
      for (int j = 0; j < kStep; ++j) a[r][j] = x[c[j]];
    }
    amx::load<4>(a[0], kStep);
    amx::load<6>(w, 64);
    amx::dpbusd<0, 4, 6>();
    if (kTwoA) {
      amx::load<5>(a[16], kStep);
      amx::dpbusd<1, 5, 6>();
    }
  }
  constexpr int64_t stride = sizeof(GemmAcc);
  amx::store<0>(&acc[0][0], stride);
  if (kTwoA) amx::store<1>(&acc[16][0], stride);
}

// Panels [c0, c1), each over rows [m0, m1) in tiles of 32 rows (the last one partial): a panel's
// weights stay in L1 across its row tiles. Odd panels take the row tiles last to first, so that the
// configuration changes once per panel and not twice (as the dense AMX GEMM's panel pairs).
template <Activation kAct, bool kRaw>
void spmm_panel_amx(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  alignas(64) GemmAcc acc[kPanelRows];
  const int64_t whole = (m1 - m0) / kPanelRows;
  const int partial = static_cast<int>((m1 - m0) % kPanelRows);
  const int64_t tiles = whole + (partial ? 1 : 0);
  const amx::TileConfig whole_cfg = panel_config(16, 16);
  const amx::TileConfig partial_cfg = panel_config(std::min(partial, 16), std::max(partial - 16, 0));
  amx::TileSession session;
  for (int64_t panel = c0; panel < c1; ++panel) {
    for (int64_t i = 0; i < tiles; ++i) {
      const int64_t t = (panel - c0) % 2 ? tiles - 1 - i : i;
      const bool is_partial = t == whole;
      const int mr = is_partial ? partial : kPanelRows;
      const int64_t m = m0 + t * kPanelRows;
      session.use(is_partial ? partial_cfg : whole_cfg);
      if (mr > 16) panel_tile<true>(p, panel, m, mr, acc);
      else panel_tile<false>(p, panel, m, mr, acc);
      gemm_store<kAct, kRaw>(p, panel, 1, m, mr, acc);
    }
  }
}

}  // namespace

SPARSECPU_KERNELS_BEGIN
void spmm_panel_s8_32x16__amx(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  with_epilogue(p.act, p.raw_s32, [&](auto e) {
    spmm_panel_amx<decltype(e)::kAct, decltype(e)::kRaw>(p, c0, c1, m0, m1);
  });
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
