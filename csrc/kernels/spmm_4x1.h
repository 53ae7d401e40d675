// The 4x1-block SpMM kernel bodies (int8 and fp32), written once over a vector-traits type (Vec512, Vec256) and
// instantiated by one small file per kernel, compiled with its ISA's flags. Everything here lives in an anonymous
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

}  // namespace
}  // namespace sparsecpu
