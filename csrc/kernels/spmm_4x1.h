// Kernel bodies written once over a vector-traits type (Vec512, Vec256) and instantiated by one
// small file per ISA, compiled with that ISA's flags. Everything here lives in an anonymous
// namespace: each ISA object has its own copy, so the linker can never hand a baseline caller an
// AVX-512 instance.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/epilogue.h"
#include "kernels/kernels.h"
#include "kernels/scalar.h"

namespace sparsecpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Epilogue store: f[c] holds channel 4g + c; lane (j, i) of every f[c] is row
// m_base + stride_j * j + i. Transposed in registers (4x4 per 128-bit lane) so that each row's 4
// channels leave in one 16-byte store, and y is written row-major once.

// Output of a tile, staged. Each group yields kRows rows (the tile height) x 4 channels;
// written straight to y that is 16 bytes into each of R rows, and every 4 groups a fresh cache
// line in each row: store misses commit one at a time, so on large outputs the stores, not the
// dot products, set the pace. Instead 4 groups are transposed into an L1 buffer (kRows rows x 16
// channels) and each row leaves as one 64-byte store.
// The activation is applied here, on the way out. put/end_group are forced inline and flush kept
// out of line: otherwise GCC gives up keeping the kernel's 16 accumulators in registers (they went
// to the stack around every quad step: 2x slower), and GELU's constants would crowd them too.
template <class V, Activation kAct, int kRows>
class OutStage {
 public:
  OutStage(const SpmmParams& p, int64_t m0) : y_(p.y), ldy_(p.ldy), M_(p.M), N_(p.N), m0_(m0) {}

  // f[c] holds channel 4g + c; lane (j, i) of every f[c] is tile row m_rel + stride_j * j + i.
  __attribute__((always_inline)) inline void put(int64_t g, const typename V::F f[4], int m_rel, int stride_j) {
    using F = typename V::F;
    if (count_ == 0) g_first_ = g;
    const F lo01 = V::unpacklo(f[0], f[1]), hi01 = V::unpackhi(f[0], f[1]);
    const F lo23 = V::unpacklo(f[2], f[3]), hi23 = V::unpackhi(f[2], f[3]);
    const F r[4] = {V::unpacklo64(lo01, lo23), V::unpackhi64(lo01, lo23), V::unpacklo64(hi01, hi23),
                    V::unpackhi64(hi01, hi23)};
    float* dst = buf_ + 4 * count_;
#pragma GCC unroll 4
    for (int j = 0; j < V::kLanes / 4; ++j) {
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) _mm_store_ps(dst + (m_rel + stride_j * j + i) * 16, V::lane(r[i], j));
    }
  }

  __attribute__((always_inline)) inline void end_group() {
    if (++count_ == 4) flush();
  }

  __attribute__((noinline)) void flush() {
    if (count_ == 0) return;
    float* y = y_ + m0_ * ldy_ + 4 * g_first_;
    const int64_t rows = std::min<int64_t>(kRows, M_ - m0_);
    const int64_t cols = std::min<int64_t>(4 * count_, N_ - 4 * g_first_);
    if (cols == 16) {
      for (int64_t r = 0; r < rows; ++r) {
        for (int c = 0; c < 16; c += V::kLanes)
          V::storef(y + r * ldy_ + c, vactivate<V>(V::loadf(buf_ + 16 * r + c), kAct));
      }
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        for (int c = 0; c < 16; c += V::kLanes) V::storef(buf_ + 16 * r + c, vactivate<V>(V::loadf(buf_ + 16 * r + c), kAct));
        std::memcpy(y + r * ldy_, buf_ + 16 * r, cols * sizeof(float));
      }
    }
    count_ = 0;
  }

 private:
  alignas(64) float buf_[kRows * 16];
  float* y_;
  int64_t ldy_, M_, N_, m0_;
  int64_t g_first_ = 0;
  int count_ = 0;
};

// Activation rows of the quad `pf` blocks ahead, so that their L2/L3 latency overlaps the dots
// in between (the column order is data, no hardware prefetcher can follow it).
template <class T, class Idx>
inline void prefetch_quad(const T* x, const Idx* cols, int64_t ld) {
#pragma GCC unroll 4
  for (int kk = 0; kk < 4; ++kk) _mm_prefetch(reinterpret_cast<const char*>(x + cols[kk] * ld), _MM_HINT_T0);
}

// ---------------------------------------------------------------------------------------------
// int8 SpMM, 4x1 blocks. Per quad of blocks (4 input columns k0..k3 of one group):
//   gather  4 rows of u8 activations, kBytes each, into 4 "slabs" in VNNI order with 8 unpacks
//           (slab s, lane (j, i) = x[k0..k3] of row 16 j + 4 s + i);
//   compute for each of the 4 channels: broadcast its 4 weights (one dword) and issue one dot
//           per slab. One gather serves 4 channels: 16 dots for 8 shuffles and 4 loads.
// Register budget (zmm): 16 accumulators + 4 rows + 4 unpack temporaries + 4 slabs + weight.
//
// A Quad policy consumes one quad of blocks for a tile of kSlabs vectors per channel (step), or with
// kLoop set a whole group's quads at once (loop); lane (j, i) (j = 128-bit lane, i = 0..3) of slab s
// holds tile row  4 kSlabs j + 4 s + i  (see slab_order_index).

// One quad step in plain intrinsics: gather 4 rows into 4 slabs, then Dot for 4 channels.
template <class V, class Dot>
struct QuadGather {
  using I = typename V::I;
  static constexpr int kSlabs = 4;
  static constexpr bool kLoop = false;
  static inline void step(I acc[4][4], const uint8_t* r0, const uint8_t* r1, const uint8_t* r2, const uint8_t* r3,
                          const int8_t* w) {
    const I x0 = V::load(r0), x1 = V::load(r1), x2 = V::load(r2), x3 = V::load(r3);
    const I a = V::unpacklo8(x0, x1), bb = V::unpackhi8(x0, x1);
    const I c = V::unpacklo8(x2, x3), d = V::unpackhi8(x2, x3);
    const I s[4] = {V::unpacklo16(a, c), V::unpackhi16(a, c), V::unpacklo16(bb, d), V::unpackhi16(bb, d)};
    Dot::step(acc, s, w);
  }
};

// Without VNNI: split bytes into even/odd 16-bit halves and use vpmaddwd, which is exact
// (vpmaddubsw would saturate at 2 * 255 * 127).
template <class V>
struct DotMadd {
  using I = typename V::I;
  static inline void step(I acc[4][4], const I s[4], const int8_t* w) {
    const I low = V::set1(0x00FF00FF);
    I se[4], so[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      se[k] = V::and_(s[k], low);
      so[k] = V::srli16(s[k], 8);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const I wc = V::bcast32(w + 4 * c);
      const I we = V::srai16(V::slli16(wc, 8), 8);
      const I wo = V::srai16(wc, 8);
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) acc[c][k] = V::add32(acc[c][k], V::add32(V::madd16(se[k], we), V::madd16(so[k], wo)));
    }
  }
};

template <class V, class Quad, class Idx, Activation kAct, bool kRaw>
void spmm_s8_tile(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  using I = typename V::I;
  using F = typename V::F;
  constexpr int S = Quad::kSlabs;
  const uint8_t* xq = static_cast<const uint8_t*>(p.xk) + m0;
  const int64_t ld = p.ldk;
  const Idx* cols = static_cast<const Idx*>(p.w.col_idx);
  const int8_t* vals = static_cast<const int8_t*>(p.w.values);
  const uint32_t* row_ptr = p.w.row_ptr;
  const int32_t* w_sum = p.w.w_sum;
  const float* w_scale = p.w.w_scale;
  const float* bias = p.bias;
  OutStage<V, kAct, S * V::kLanes> out(p, m0);
  const uint64_t nnzb = p.w.nnzb, pf = p.prefetch;
  // Re-read per group from L1: kept in registers they would push the accumulators into spills.
  const int32_t* x_zp = p.x_zp + m0;
  const float* x_scale = p.x_scale + m0;
  for (int64_t g = g0; g < g1; ++g) {
    I acc[4][S];
    for (auto& row : acc)
      for (auto& a : row) a = V::zero();
    const uint64_t b0 = row_ptr[g], b1 = row_ptr[g + 1];
    if constexpr (Quad::kLoop) {
      // The quads whose prefetch target lies inside the column list, then the rest without.
      const uint64_t split = pf ? std::max(b0, std::min(b1, nnzb > pf ? nnzb - pf : 0)) : b0;
      if (split > b0) Quad::template loop<true>(acc, xq, ld, cols, vals, b0, split, pf);
      Quad::template loop<false>(acc, xq, ld, cols, vals, split, b1, pf);
    } else {
      for (uint64_t b = b0; b < b1; b += 4) {
        if (pf && b + pf < nnzb) prefetch_quad(xq, cols + b + pf, ld);
        Quad::step(acc, xq + cols[b + 0] * ld, xq + cols[b + 1] * ld, xq + cols[b + 2] * ld, xq + cols[b + 3] * ld,
                   vals + b * 4);
      }
    }
    const int64_t ch0 = 4 * g;
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s) {
      F f[4];
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        if (kRaw) {
          f[c] = V::asf(acc[c][s]);
        } else {
          const I centered = V::sub32(acc[c][s], V::mullo32(V::loadi(x_zp + s * V::kLanes), V::set1(w_sum[ch0 + c])));
          const F scale = V::mul(V::loadf(x_scale + s * V::kLanes), V::set1f(w_scale[ch0 + c]));
          const F b = V::set1f(bias ? bias[ch0 + c] : 0.0f);
          f[c] = V::fmadd(V::cvt(centered), scale, b);
        }
      }
      out.put(g, f, 4 * s, 4 * S);
    }
    out.end_group();
  }
  out.flush();
}

template <class V, class Quad, class Idx>
void spmm_s8_idx(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  with_epilogue(p.act, p.raw_s32, [&](auto e) {
    spmm_s8_tile<V, Quad, Idx, decltype(e)::kAct, decltype(e)::kRaw>(p, g0, g1, m0);
  });
}

// Quad: the policy that consumes one quad of blocks (QuadGather<V, Dot> or a hand-scheduled one).
// int8 weights always have 16-bit column indices: K <= 65535 for them, and validation checks the width.
template <class V, class Quad>
void spmm_s8(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  spmm_s8_idx<V, Quad, uint16_t>(p, g0, g1, m0);
}

// ---------------------------------------------------------------------------------------------
// fp32 SpMM: per block, kVecs loads of K-major activations feed 4 kVecs FMAs (4 channels x kVecs
// vectors), weights broadcast. Lane (j, i) of vector s is row V::kLanes s + 4 j + i. kVecs is set
// by the register file: 4 kVecs accumulators + kVecs activations + a weight must fit (zmm: 4, ymm: 2).

template <class V, int kVecs, class Idx, Activation kAct>
void spmm_f32_tile(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  using F = typename V::F;
  const float* xt = static_cast<const float*>(p.xk) + m0;
  const int64_t ld = p.ldk;
  const Idx* cols = static_cast<const Idx*>(p.w.col_idx);
  const float* vals = static_cast<const float*>(p.w.values);
  const uint32_t* row_ptr = p.w.row_ptr;
  const float* bias = p.bias;
  OutStage<V, kAct, kVecs * V::kLanes> out(p, m0);
  const uint64_t nnzb = p.w.nnzb, pf = p.prefetch;
  for (int64_t g = g0; g < g1; ++g) {
    F acc[4][kVecs];
    for (auto& row : acc)
      for (auto& a : row) a = V::zerof();
    const uint64_t b1 = row_ptr[g + 1];
    for (uint64_t b = row_ptr[g]; b < b1; b += 4) {
      const float* wq = vals + b * 4;
      if (pf && b + pf < nnzb) prefetch_quad(xt, cols + b + pf, ld);
#pragma GCC unroll 4
      for (int kk = 0; kk < 4; ++kk) {
        const float* xr = xt + cols[b + kk] * ld;
        F x[kVecs];
#pragma GCC unroll 4
        for (int s = 0; s < kVecs; ++s) x[s] = V::loadf(xr + s * V::kLanes);
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          const F w = V::set1f(wq[4 * c + kk]);
#pragma GCC unroll 4
          for (int s = 0; s < kVecs; ++s) acc[c][s] = V::fmadd(x[s], w, acc[c][s]);
        }
      }
    }
#pragma GCC unroll 4
    for (int s = 0; s < kVecs; ++s) {
      F f[4];
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const F b = V::set1f(bias ? bias[4 * g + c] : 0.0f);
        f[c] = V::add(acc[c][s], b);
      }
      out.put(g, f, V::kLanes * s, 4);
    }
    out.end_group();
  }
  out.flush();
}

template <class V, int kVecs, class Idx>
void spmm_f32_idx(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  with_epilogue(p.act, false, [&](auto e) { spmm_f32_tile<V, kVecs, Idx, decltype(e)::kAct>(p, g0, g1, m0); });
}

// Tile: kVecs * V::kLanes rows x 4 channels.
template <class V, int kVecs>
void spmm_f32(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  if (p.w.index_bytes == 2) spmm_f32_idx<V, kVecs, uint16_t>(p, g0, g1, m0);
  else spmm_f32_idx<V, kVecs, uint32_t>(p, g0, g1, m0);
}

// ---------------------------------------------------------------------------------------------
// Activation passes: x [M][K] row-major -> K-major, with per-row u8 quantization (int8) or as is
// (fp32). Both check finiteness on the way (x - x is NaN exactly for NaN and Inf).

// Byte transpose of 16 rows x (16 * lanes) columns: each 128-bit lane of the vectors is its own
// 16x16 block, so one 4-stage unpack network transposes 4 blocks (zmm) or 2 (ymm) at once. Output
// row c (column c of the source) goes to dst + c * ldd; only columns < cols are stored.
template <class V>
inline void transpose16xL_u8(const uint8_t* src, int64_t lds, uint8_t* dst, int64_t ldd, int cols) {
  using I = typename V::I;
  constexpr int kLanes128 = V::kBytes / 16;
  I a[16], t[16];
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) a[r] = V::load(src + r * lds);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[i] = V::unpacklo8(a[2 * i], a[2 * i + 1]);
    t[i + 8] = V::unpackhi8(a[2 * i], a[2 * i + 1]);
  }
  // t[i]: rows 2i, 2i+1 interleaved for columns 0..7 of each lane; t[i + 8]: columns 8..15.
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      a[8 * h + i] = V::unpacklo16(t[8 * h + 2 * i], t[8 * h + 2 * i + 1]);
      a[8 * h + 4 + i] = V::unpackhi16(t[8 * h + 2 * i], t[8 * h + 2 * i + 1]);
    }
  }
  // a[4q + r]: rows 4r..4r+3 of columns 4q..4q+3 (per lane).
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const I l01 = V::unpacklo32(a[4 * q + 0], a[4 * q + 1]), h01 = V::unpackhi32(a[4 * q + 0], a[4 * q + 1]);
    const I l23 = V::unpacklo32(a[4 * q + 2], a[4 * q + 3]), h23 = V::unpackhi32(a[4 * q + 2], a[4 * q + 3]);
    const I out[4] = {V::unpacklo64(l01, l23), V::unpackhi64(l01, l23), V::unpacklo64(h01, h23), V::unpackhi64(h01, h23)};
#pragma GCC unroll 4
    for (int j = 0; j < kLanes128; ++j) {
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const int c = 16 * j + 4 * q + i;
        if (c < cols) V::store_lane(dst + c * ldd, out[i], j);
      }
    }
  }
}

// Range of one row of x for its quantization parameters, with the finiteness check folded in:
// x - x is +0.0 exactly when x is finite, so OR-ing its bits finds NaN and Inf in one cheap op.
template <class V>
inline void row_range(const float* row, int64_t K, typename V::I& bad, bool& finite, float& mn, float& mx) {
  using F = typename V::F;
  constexpr int L = V::kLanes;
  // Four independent accumulator sets: one chain of min/max would run at their latency.
  F vmn[4] = {V::zerof(), V::zerof(), V::zerof(), V::zerof()};
  F vmx[4] = {V::zerof(), V::zerof(), V::zerof(), V::zerof()};
  int64_t k = 0;
  for (; k + 4 * L <= K; k += 4 * L) {
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const F v = V::loadf(row + k + i * L);
      vmn[i] = V::min(vmn[i], v);
      vmx[i] = V::max(vmx[i], v);
      bad = V::or_(bad, V::asi(V::sub(v, v)));
    }
  }
  for (; k + L <= K; k += L) {
    const F v = V::loadf(row + k);
    vmn[0] = V::min(vmn[0], v);
    vmx[0] = V::max(vmx[0], v);
    bad = V::or_(bad, V::asi(V::sub(v, v)));
  }
  mn = V::hmin(V::min(V::min(vmn[0], vmn[1]), V::min(vmn[2], vmn[3])));
  mx = V::hmax(V::max(V::max(vmx[0], vmx[1]), V::max(vmx[2], vmx[3])));
  for (; k < K; ++k) {
    finite &= std::isfinite(row[k]);
    mn = std::min(mn, row[k]);
    mx = std::max(mx, row[k]);
  }
}

// kc values of one row to u8 (4 vectors at a time, the tail scalar; both round the same way).
template <class V>
inline void quant_row(const float* row, int64_t kc, const RowQParams& q, uint8_t* dst) {
  using I = typename V::I;
  constexpr int L = V::kLanes;
  const auto inv = V::set1f(q.inv);
  const I zpv = V::set1(q.zp);
  int64_t k = 0;
  for (; k + 4 * L <= kc; k += 4 * L) {
    I v[4];
    for (int i = 0; i < 4; ++i) v[i] = V::add32(V::cvt_round(V::mul(V::loadf(row + k + i * L), inv)), zpv);
    V::store_u8x4(dst + k, v[0], v[1], v[2], v[3]);
  }
  for (; k < kc; ++k) dst[k] = quantize_u8(row[k], q);
}

// Rows are taken 64 at a time (m0 and m1 are multiples of 64) so that each 64-byte line of the
// K-major output is written by four back-to-back stores: written 16 rows at a time, every line
// would miss four times, and store misses commit one after another.
template <class V>
bool quant_u8_kmajor(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, uint8_t* xq, int64_t ldq,
                     float* scale, int32_t* zp, float* absmax) {
  using I = typename V::I;
  constexpr int L = V::kLanes;
  constexpr int kRows = 64, kCols = 4 * L;
  alignas(64) uint8_t stage[kRows][kCols];
  I bad = V::zero();
  bool finite = true;
  for (int64_t mb = m0; mb < m1; mb += kRows) {
    RowQParams q[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t m = mb + r;
      float mn = 0.0f, mx = 0.0f;
      if (m >= M) {
        q[r] = {1.0f, 1.0f, 0};
      } else {
        row_range<V>(x + m * K, K, bad, finite, mn, mx);
        q[r] = row_qparams(mn, mx);
      }
      scale[m] = q[r].scale;
      zp[m] = q[r].zp;
      if (absmax) absmax[m] = std::max(-mn, mx);
    }
    const int rows = static_cast<int>(std::min<int64_t>(kRows, M - mb));
    for (int64_t k0 = 0; k0 < K; k0 += kCols) {
      const int64_t kc = std::min<int64_t>(kCols, K - k0);
      for (int r = 0; r < rows; ++r) quant_row<V>(x + (mb + r) * K + k0, kc, q[r], stage[r]);
      if (rows < kRows) std::memset(stage[rows], 0, sizeof(stage[0]) * (kRows - rows));
      for (int blk = 0; blk < kRows / 16; ++blk) {
        transpose16xL_u8<V>(&stage[16 * blk][0], kCols, xq + k0 * ldq + mb + 16 * blk, ldq, static_cast<int>(kc));
      }
    }
  }
  return finite && V::all_zero(V::asf(bad));
}

// The same quantization, row-major (dense GEMM and skinny kernels): rows [m0, m1) all < M.
template <class V>
bool quant_u8_rows(const float* x, int64_t /*M*/, int64_t K, int64_t m0, int64_t m1, uint8_t* xq, int64_t ldq,
                   float* scale, int32_t* zp, float* absmax) {
  typename V::I bad = V::zero();
  bool finite = true;
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = x + m * K;
    float mn = 0.0f, mx = 0.0f;
    row_range<V>(row, K, bad, finite, mn, mx);
    const RowQParams q = row_qparams(mn, mx);
    scale[m] = q.scale;
    zp[m] = q.zp;
    if (absmax) absmax[m] = std::max(-mn, mx);
    quant_row<V>(row, K, q, xq + m * ldq);
    std::memset(xq + m * ldq + K, 0, ldq - K);
  }
  return finite && V::all_zero(V::asf(bad));
}

// In-register transpose of 8 rows of 8 floats: r[i] becomes column i.
inline void transpose8x8(__m256 r[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
  }
}

// 16 rows at a time (m0 and m1 are multiples of 16), so that each 64-byte line of the K-major
// output gets its pieces back to back.
template <class V>
bool transpose_f32_kmajor(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, float* xt, int64_t ldt) {
  __m128 bad = _mm_setzero_ps();
  __m256 bad8 = _mm256_setzero_ps();
  bool finite = true;
  for (int64_t mb = m0; mb < m1; mb += 16) {
    int64_t k = 0;
    if (mb + 16 <= M) {
      // 8 x 8 blocks: 24 shuffles per 64 values (the 4 x 4 form below needs 32) and 32-byte stores.
      for (; k + 8 <= K; k += 8) {
#pragma GCC unroll 2
        for (int half = 0; half < 2; ++half) {
          const float* src = x + (mb + 8 * half) * K + k;
          __m256 r[8];
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) {
            r[i] = _mm256_loadu_ps(src + i * K);
            bad8 = _mm256_or_ps(bad8, _mm256_sub_ps(r[i], r[i]));
          }
          transpose8x8(r);
          float* dst = xt + k * ldt + mb + 8 * half;
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + i * ldt, r[i]);
        }
      }
      for (; k + 4 <= K; k += 4) {
#pragma GCC unroll 4
        for (int sub = 0; sub < 4; ++sub) {
          const float* src = x + (mb + 4 * sub) * K + k;
          __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + K);
          __m128 r2 = _mm_loadu_ps(src + 2 * K), r3 = _mm_loadu_ps(src + 3 * K);
          bad = _mm_or_ps(bad, _mm_or_ps(_mm_or_ps(_mm_sub_ps(r0, r0), _mm_sub_ps(r1, r1)),
                                         _mm_or_ps(_mm_sub_ps(r2, r2), _mm_sub_ps(r3, r3))));
          _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
          float* dst = xt + k * ldt + mb + 4 * sub;
          _mm_storeu_ps(dst, r0);
          _mm_storeu_ps(dst + ldt, r1);
          _mm_storeu_ps(dst + 2 * ldt, r2);
          _mm_storeu_ps(dst + 3 * ldt, r3);
        }
      }
    }
    for (; k < K; ++k) {
      for (int r = 0; r < 16; ++r) {
        const float v = mb + r < M ? x[(mb + r) * K + k] : 0.0f;
        finite &= std::isfinite(v);
        xt[k * ldt + mb + r] = v;
      }
    }
  }
  // x - x is +0.0 exactly when x is finite (see quant_u8_kmajor).
  bad = _mm_or_ps(bad, _mm_or_ps(_mm256_castps256_ps128(bad8), _mm256_extractf128_ps(bad8, 1)));
  return finite && _mm_movemask_ps(_mm_cmpneq_ps(bad, _mm_setzero_ps())) == 0;
}

}  // namespace
}  // namespace sparsecpu
