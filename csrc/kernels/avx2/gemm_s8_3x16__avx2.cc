// Dense int8 GEMM on AVX2: tile 3 rows x 16 channels (one panel of the dense format), exact dots.
//
// Per VNNI dword step (4 input columns): the panel's 64 weight bytes (16 channels x 4 columns) are
// split once into even / odd columns as int16 (4 vectors), then for each row its 4 u8 activations
// are broadcast, split the same way, and each half meets its weights in one vpmaddwd: 255 * 127 * 2
// fits, where vpmaddubsw would saturate. Register budget (16 ymm): 6 accumulators (3 rows x 2 x 8
// channels), 4 weight halves, the row's 2 halves and a product or two. With 4 rows (8
// accumulators) GCC moves accumulators to the stack in the loop and the kernel runs 1.5x slower.
// The accumulators hold rows in order and channels in order, so the epilogue stores y directly.

#include "kernels/avx2/vec256.h"
#include "kernels/epilogue.h"

namespace sparsecpu {
namespace {

using V = Vec256;

// With p.stream_weights (a weight that comes from memory at every call), the first row tile of each
// panel prefetches the panel's weights this far ahead. Measured at M = 1 on Zen 3, 2 threads, same
// process A/B: a 50257 x 768 lm_head (38.6 MB) 0.73-0.80x the time without (~22 -> ~28 GB/s); 512
// bytes already helps, past 2 KB nothing more; weights that stay in the caches gain nothing.
constexpr int64_t kWeightPrefetch = 2048;

template <int MR, Activation kAct, bool kRaw, bool kPrefetch>
__attribute__((always_inline)) inline void gemm_tile(const RowParams& p, int64_t panel, int64_t m0) {
  const int64_t kq = static_cast<int64_t>(p.w.kq), ldx = p.ldx;
  const int8_t* w = static_cast<const int8_t*>(p.w.values) + panel * kq * 64;
  const uint8_t* x = p.xq + m0 * ldx;
  __m256i acc[MR][2];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = V::zero();
  for (int64_t q = 0; q < kq; ++q) {
    if (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(w + 64 * q + kWeightPrefetch), _MM_HINT_T0);
    const __m256i w0 = V::load(w + 64 * q), w1 = V::load(w + 64 * q + 32);
    const __m256i we0 = V::srai16(V::slli16(w0, 8), 8), wo0 = V::srai16(w0, 8);
    const __m256i we1 = V::srai16(V::slli16(w1, 8), 8), wo1 = V::srai16(w1, 8);
#pragma GCC unroll 3
    for (int r = 0; r < MR; ++r) {
      const __m256i xv = V::bcast32(x + r * ldx + 4 * q);
      const __m256i xo = V::srli16(xv, 8), xe = V::srli16(V::slli16(xv, 8), 8);
      acc[r][0] = V::add32(acc[r][0], V::madd16(xe, we0));
      acc[r][1] = V::add32(acc[r][1], V::madd16(xe, we1));
      acc[r][0] = V::add32(acc[r][0], V::madd16(xo, wo0));
      acc[r][1] = V::add32(acc[r][1], V::madd16(xo, wo1));
    }
  }
  const int64_t ch0 = panel * 16;
  const int64_t cols = std::min<int64_t>(16, p.N - ch0);
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
    const int64_t m = m0 + r;
    __m256 f[2];
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      if (kRaw) {
        f[h] = V::asf(acc[r][h]);
      } else {
        const __m256i centered = V::sub32(acc[r][h], V::mullo32(V::set1(p.x_zp[m]), V::loadi(p.w.w_sum + ch0 + 8 * h)));
        const __m256 scale = V::mul(V::set1f(p.x_scale[m]), V::loadf(p.w.w_scale + ch0 + 8 * h));
        const __m256 b = p.bias ? V::loadf(p.bias + ch0 + 8 * h) : V::zerof();
        f[h] = vactivate<V>(V::fmadd(V::cvt(centered), scale, b), kAct);
      }
    }
    float* y = p.y + m * p.ldy + ch0;
    V::storef_n(y, f[0], std::min<int64_t>(cols, 8));
    if (cols > 8) V::storef_n(y + 8, f[1], cols - 8);
  }
}

// kStream: the first row tile of each panel prefetches its weights (see kWeightPrefetch).
template <Activation kAct, bool kRaw, bool kStream>
void gemm_panels(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  for (int64_t panel = c0; panel < c1; ++panel) {
    int64_t m = m0;
    if (kStream && m1 > m0) {
      with_rows<3>(m1 - m0, [&](auto r) { gemm_tile<decltype(r)::value, kAct, kRaw, true>(p, panel, m); });
      m = std::min<int64_t>(m1, m0 + 3);
    }
    for (; m + 3 <= m1; m += 3) gemm_tile<3, kAct, kRaw, false>(p, panel, m);
    if (m < m1) with_rows<2>(m1 - m, [&](auto r) { gemm_tile<decltype(r)::value, kAct, kRaw, false>(p, panel, m); });
  }
}

template <Activation kAct, bool kRaw>
void gemm_run(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  if (p.stream_weights) gemm_panels<kAct, kRaw, true>(p, c0, c1, m0, m1);
  else gemm_panels<kAct, kRaw, false>(p, c0, c1, m0, m1);
}

}  // namespace

void gemm_s8_3x16__avx2(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1) {
  with_epilogue(p.act, p.raw_s32, [&](auto e) {
    gemm_run<decltype(e)::kAct, decltype(e)::kRaw>(p, c0, c1, m0, m1);
  });
}

}  // namespace sparsecpu
