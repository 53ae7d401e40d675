// The tile machine (see tilemachine.h). Compiled with the AVX2 + FMA flags of the emulated builds: the
// FMA of tdpbf16ps must be the host's fused one (std::fma inlined as vfmadd), run under DAZ | FTZ.
#include "kernels/amx/tilemachine.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <string>

#include "kernels/scalar.h"

namespace sparsecpu {
namespace amx {
namespace machine {

namespace {

struct State {
  bool configured = false;  // TILES_CONFIGURED
  uint8_t start_row = 0;
  uint16_t colsb[kTiles] = {};
  uint8_t rows[kTiles] = {};
  alignas(64) uint8_t tile[kTiles][kTileRows][kTileBytes] = {};
  // MemoryWindow: tileloadd / tilestored may touch only [lo, hi) while set.
  const uint8_t* lo = nullptr;
  const uint8_t* hi = nullptr;
};

State& state() {
  thread_local State s;
  return s;
}

[[noreturn]] void fault(const char* kind, const std::string& what) { throw TileFault(std::string(kind) + ": " + what); }

std::string tmm(int t) { return "tmm" + std::to_string(t); }

void zero_all_tiles(State& s) { std::memset(s.tile, 0, sizeof(s.tile)); }

void check_configured(const State& s, const char* insn) {
  if (!s.configured) fault("#UD", std::string(insn) + " with the tiles not configured (INIT state)");
}

// A tile operand: a palette-1 name configured with rows and colsb.
void check_tile(const State& s, int t, const char* insn) {
  if (t < 0 || t >= kTiles) fault("#UD", std::string(insn) + ": no tile " + std::to_string(t) + " in palette 1");
  if (s.rows[t] == 0) fault("#UD", std::string(insn) + ": " + tmm(t) + " is not configured");
}

// AMX-E3: tileloadd / tilestored.
void check_e3(const State& s, int t, const char* insn) {
  check_configured(s, insn);
  check_tile(s, t, insn);
  if (s.colsb[t] % 4 != 0) fault("#UD", std::string(insn) + ": " + tmm(t) + ".colsb is not a multiple of 4");
  if (s.start_row >= s.rows[t]) fault("#UD", std::string(insn) + ": start_row >= " + tmm(t) + ".rows");
}

// AMX-E4: the dot products. C = m x n, A = m x k, B = k x n (k in dwords).
void check_e4(const State& s, int c, int a, int b, const char* insn) {
  if (c == a || c == b || a == b) fault("#UD", std::string(insn) + ": the three tiles must differ");
  check_configured(s, insn);
  for (int t : {c, a, b}) {
    check_tile(s, t, insn);
    if (s.colsb[t] % 4 != 0) fault("#UD", std::string(insn) + ": " + tmm(t) + ".colsb is not a multiple of 4");
  }
  if (s.colsb[c] != s.colsb[b]) fault("#UD", std::string(insn) + ": " + tmm(c) + ".colsb != " + tmm(b) + ".colsb");
  if (s.rows[c] != s.rows[a]) fault("#UD", std::string(insn) + ": " + tmm(c) + ".rows != " + tmm(a) + ".rows");
  if (s.colsb[a] / 4 != s.rows[b])
    fault("#UD", std::string(insn) + ": " + tmm(a) + ".colsb / 4 != " + tmm(b) + ".rows");
}

// The bytes [p, p + n) of a tileloadd / tilestored row, against the test window if one is set.
void check_window(const State& s, const void* p, size_t n, const char* insn) {
  if (!s.lo) return;
  const uintptr_t q = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(s.lo);
  const uintptr_t hi = reinterpret_cast<uintptr_t>(s.hi);
  if (q < lo || q > hi || hi - q < n)
    fault("#PF", std::string(insn) + ": a row lies outside the memory it was given");
}

// write_row_and_zero: row r of tile t gets n bytes from src, the rest of the row zeros.
void write_row_and_zero(State& s, int t, int r, const void* src, int n) {
  std::memcpy(s.tile[t][r], src, n);
  std::memset(s.tile[t][r] + n, 0, kTileBytes - n);
}

void zero_upper_rows(State& s, int t, int from) {
  for (int r = from; r < kTileRows; ++r) std::memset(s.tile[t][r], 0, kTileBytes);
}

uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// MXCSR while tdpbf16ps computes: FTZ (bit 15), DAZ (bit 6), every exception masked (bits 7-12), round to
// nearest even (bits 13-14 clear), flags clear.
constexpr unsigned kMxcsrDazFtzRne = 0x8000u | 0x0040u | 0x1F80u;

// The asm barriers keep the arithmetic between the two MXCSR writes: it reads and writes tile memory,
// which the compiler may not move across a memory clobber.
struct MxcsrScope {
  unsigned saved;
  MxcsrScope() : saved(_mm_getcsr()) {
    _mm_setcsr(kMxcsrDazFtzRne);
    __asm__ volatile("" ::: "memory");
  }
  ~MxcsrScope() {
    __asm__ volatile("" ::: "memory");
    _mm_setcsr(saved);
  }
};

}  // namespace

void ldtilecfg(const void* config) {
  uint8_t buf[64];
  std::memcpy(buf, config, 64);
  const auto nonzero = [&](int from, int to) {
    for (int i = from; i < to; ++i)
      if (buf[i]) return true;
    return false;
  };
  const uint8_t palette = buf[0];
  if (palette > 1) fault("#GP", "ldtilecfg: palette " + std::to_string(palette) + " (the only palettes are 0 and 1)");
  State& s = state();
  if (palette == 0) {  // the INIT state: byte 1.. are not read
    s.configured = false;
    s.start_row = 0;
    std::memset(s.colsb, 0, sizeof(s.colsb));
    std::memset(s.rows, 0, sizeof(s.rows));
    zero_all_tiles(s);
    return;
  }
  if (nonzero(2, 16)) fault("#GP", "ldtilecfg: reserved bytes 2-15 are not zero");
  if (nonzero(16 + 2 * kTiles, 48)) fault("#GP", "ldtilecfg: colsb of a tile beyond tmm7 is not zero");
  if (nonzero(48 + kTiles, 64)) fault("#GP", "ldtilecfg: rows of a tile beyond tmm7 is not zero");
  uint16_t colsb[kTiles];
  uint8_t rows[kTiles];
  for (int t = 0; t < kTiles; ++t) {
    colsb[t] = static_cast<uint16_t>(buf[16 + 2 * t] | (buf[17 + 2 * t] << 8));
    rows[t] = buf[48 + t];
    if (colsb[t] > kTileBytes) fault("#GP", "ldtilecfg: " + tmm(t) + ".colsb > 64");
    if (rows[t] > kTileRows) fault("#GP", "ldtilecfg: " + tmm(t) + ".rows > 16");
    if ((rows[t] == 0) != (colsb[t] == 0)) fault("#GP", "ldtilecfg: one of " + tmm(t) + ".rows and .colsb is 0, not both");
  }
  s.configured = true;
  s.start_row = buf[1];
  std::memcpy(s.colsb, colsb, sizeof(colsb));
  std::memcpy(s.rows, rows, sizeof(rows));
  zero_all_tiles(s);
}

void sttilecfg(void* config) {
  const State& s = state();
  uint8_t buf[64] = {};
  if (s.configured) {
    buf[0] = 1;
    buf[1] = s.start_row;
    for (int t = 0; t < kTiles; ++t) {
      buf[16 + 2 * t] = static_cast<uint8_t>(s.colsb[t] & 0xff);
      buf[17 + 2 * t] = static_cast<uint8_t>(s.colsb[t] >> 8);
      buf[48 + t] = s.rows[t];
    }
  }
  std::memcpy(config, buf, 64);
}

void tilerelease() {
  State& s = state();
  s.configured = false;
  s.start_row = 0;
  std::memset(s.colsb, 0, sizeof(s.colsb));
  std::memset(s.rows, 0, sizeof(s.rows));
  zero_all_tiles(s);
}

void tileloadd(int t, const void* base, int64_t stride) {
  State& s = state();
  check_e3(s, t, "tileloadd");
  const int n = s.colsb[t];
  int r = s.start_row;
  zero_upper_rows(s, t, r);
  for (; r < s.rows[t]; ++r) {
    const uint8_t* row = static_cast<const uint8_t*>(base) + r * stride;
    check_window(s, row, n, "tileloadd");
    write_row_and_zero(s, t, r, row, n);
  }
  s.start_row = 0;
}

void tilestored(int t, void* base, int64_t stride) {
  State& s = state();
  check_e3(s, t, "tilestored");
  const int n = s.colsb[t];
  for (int r = s.start_row; r < s.rows[t]; ++r) {
    uint8_t* row = static_cast<uint8_t*>(base) + r * stride;
    check_window(s, row, n, "tilestored");
    std::memcpy(row, s.tile[t][r], n);
  }
  s.start_row = 0;
}

void tilezero(int t) {
  State& s = state();
  check_configured(s, "tilezero");
  check_tile(s, t, "tilezero");
  std::memset(s.tile[t], 0, sizeof(s.tile[t]));  // all 16 x 64 bytes, whatever the configuration
  s.start_row = 0;
}

void tdpbusd(int c, int a, int b) {
  State& s = state();
  check_e4(s, c, a, b, "tdpbusd");
  const int M = s.rows[c], N = s.colsb[c] / 4, K = s.colsb[a] / 4;
  for (int m = 0; m < M; ++m) {
    uint32_t acc[16];
    for (int n = 0; n < 16; ++n) acc[n] = load32(s.tile[c][m] + 4 * n);
    for (int k = 0; k < K; ++k) {
      const uint8_t* x = s.tile[a][m] + 4 * k;  // u8
      const int8_t* y = reinterpret_cast<const int8_t*>(s.tile[b][k]);
      for (int n = 0; n < N; ++n) {
        // Each product and their sum fit an int32 (|.| <= 4 * 255 * 128); the accumulation wraps.
        const int32_t dot = int32_t(x[0]) * y[4 * n] + int32_t(x[1]) * y[4 * n + 1] + int32_t(x[2]) * y[4 * n + 2] +
                            int32_t(x[3]) * y[4 * n + 3];
        acc[n] += static_cast<uint32_t>(dot);
      }
    }
    write_row_and_zero(s, c, m, acc, 4 * N);
  }
  zero_upper_rows(s, c, M);
  s.start_row = 0;
}

void tdpbf16ps(int c, int a, int b) {
  State& s = state();
  check_e4(s, c, a, b, "tdpbf16ps");
  const int M = s.rows[c], N = s.colsb[c] / 4, K = s.colsb[a] / 4;
  {
    MxcsrScope daz_ftz_rne;
    for (int m = 0; m < M; ++m) {
      float temp[32] = {};  // temp1: [2n] sums the even bf16 of each pair, [2n + 1] the odd one
      for (int k = 0; k < K; ++k) {
        uint16_t x[2];
        std::memcpy(x, s.tile[a][m] + 4 * k, 4);
        const float x0 = bf16_value(x[0]), x1 = bf16_value(x[1]);
        for (int n = 0; n < N; ++n) {
          uint16_t y[2];
          std::memcpy(y, s.tile[b][k] + 4 * n, 4);
          temp[2 * n] = std::fma(x0, bf16_value(y[0]), temp[2 * n]);
          temp[2 * n + 1] = std::fma(x1, bf16_value(y[1]), temp[2 * n + 1]);
        }
      }
      float row[16];
      std::memcpy(row, s.tile[c][m], sizeof(row));
      for (int n = 0; n < N; ++n) row[n] = row[n] + (temp[2 * n] + temp[2 * n + 1]);
      write_row_and_zero(s, c, m, row, 4 * N);
    }
  }
  zero_upper_rows(s, c, M);
  s.start_row = 0;
}

const uint8_t* tile_data(int t) {
  if (t < 0 || t >= kTiles) fault("#UD", "no tile " + std::to_string(t) + " in palette 1");
  return &state().tile[t][0][0];
}

MemoryWindow::MemoryWindow(const void* lo, size_t size) {
  State& s = state();
  saved_lo_ = s.lo;
  saved_hi_ = s.hi;
  s.lo = static_cast<const uint8_t*>(lo);
  s.hi = s.lo + size;
}

MemoryWindow::~MemoryWindow() {
  State& s = state();
  s.lo = saved_lo_;
  s.hi = saved_hi_;
}

}  // namespace machine
}  // namespace amx
}  // namespace sparsecpu
