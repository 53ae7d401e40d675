// sparsecpu's AMX tile machine: the palette-1 tile architecture in plain C++, so that the AMX kernels
// run, emulated, on any AVX2 host (SIMDe stops at AVX-512). The emulated build of an AMX kernel source
// reaches it through the thin API of kernels/amx/tile.h; tests reach it directly (_C._amx_tile_program).
//
// The state is per thread (thread_local), as the hardware's is: a tile configuration (palette 1,
// start_row, colsb and rows of tmm0..tmm7) or the INIT state, and 8 tiles of 16 rows x 64 bytes.
// Each instruction follows the SDM's pseudo-code (Vol. 2, LDTILECFG .. TDPBF16PS):
//  - ldtilecfg validates the 64-byte image (palette <= 1; reserved bytes 2-15, 32-47, 56-63 zero; colsb <= 64,
//    rows <= 16; rows and colsb of a tile both zero or both nonzero), else #GP; palette 0 is the INIT state.
//    Loading a configuration zeroes every tile.
//  - sttilecfg writes the configuration (64 zero bytes in the INIT state); tilerelease returns to INIT.
//  - tileloadd writes rows [start_row, rows) with colsb bytes read from base + row * stride and zeroes the
//    rest of each row and every row from rows up (zero_upper_rows / write_row_and_zero); tilestored writes
//    the colsb bytes of rows [start_row, rows) and nothing else; tilezero zeroes the whole 16 x 64 tile.
//  - tdpbusd: C[m][n] += sum over k < A.colsb / 4 of the 4 products u8 A[m][4k + i] x s8 B[k][4n + i], in
//    wrapping 32-bit arithmetic; bytes past C.colsb and rows past C.rows are zeroed.
//  - tdpbf16ps: per row m, two fp32 partial sums per output column (even and odd bf16 of each pair), each
//    an FMA chain over k; then C[m][n] += (even + odd). Every FMA and add rounds to nearest even with
//    DAZ and FTZ (denormal inputs read as zero, tiny results - detected after rounding, as x86 does -
//    become a zero of the result's sign), MXCSR neither read nor changed: the host's own FMA unit runs
//    them under a temporary MXCSR (DAZ | FTZ | RNE, exceptions masked) that is restored afterwards. NaN
//    payloads are the host's, not modelled.
//  - Faults (the SDM's exception classes AMX-E1..E5) throw TileFault, its message starting "#UD" or "#GP":
//    an instruction with the tiles unconfigured, an unconfigured (invalid) tile, colsb % 4 != 0, start_row
//    >= rows, or a tdp* whose shapes do not chain (C.rows == A.rows, C.colsb == B.colsb, A.colsb / 4 ==
//    B.rows, all three tiles different). Natively these are a SIGILL or a SIGSEGV; here a C++ exception.
// start_row is kept for completeness (an interrupted load restarts there); every instruction resets it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace sparsecpu {
namespace amx {

// The 64-byte LDTILECFG / STTILECFG image of palette 1. Tiles 8-15 do not exist in palette 1: their
// colsb and rows must stay zero.
struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

constexpr int kTiles = 8;         // palette 1: tmm0..tmm7
constexpr int kTileRows = 16;     // max_rows
constexpr int kTileBytes = 64;    // bytes_per_row

class TileFault : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace machine {

// The instructions, on the calling thread's state. Tile numbers are runtime values here (0..7; others
// fault); strides are in bytes and may be negative, as the SIB index register of the hardware form.
void ldtilecfg(const void* config);
void sttilecfg(void* config);
void tilerelease();
void tileloadd(int tile, const void* base, int64_t stride);
void tilestored(int tile, void* base, int64_t stride);
void tilezero(int tile);
void tdpbusd(int c, int a, int b);
void tdpbf16ps(int c, int a, int b);

// Test hooks. The 16 x 64 bytes of the calling thread's tile t.
const uint8_t* tile_data(int tile);
// While one is alive, tileloadd / tilestored on this thread fault ("#PF") on any byte outside
// [lo, lo + size): a test runs tile programs on a buffer of its own without risking the process.
class MemoryWindow {
 public:
  MemoryWindow(const void* lo, size_t size);
  ~MemoryWindow();
  MemoryWindow(const MemoryWindow&) = delete;
  MemoryWindow& operator=(const MemoryWindow&) = delete;

 private:
  const uint8_t* saved_lo_;
  const uint8_t* saved_hi_;
};

}  // namespace machine
}  // namespace amx
}  // namespace sparsecpu
