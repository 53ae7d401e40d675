// Scaled dot-product attention of one (batch, head) pair on AMX-BF16 tiles (AttnFn of op attention_bf16,
// whose specification is reference/attention_bf16__ref.cc): bf16 products summed in fp32 by tdpbf16ps,
// the softmax in fp32 (AVX-512, avx512/softmax512.h).
//
// Layouts. tdpbf16ps multiplies an A tile of 16 rows x 32 bf16 by a B tile of 16 rows of 16 bf16 pairs:
// C[m][n] += A[m][2k] B[k][n].lo + A[m][2k + 1] B[k][n].hi. So per head, once:
//   Kp [D/2][skv] pairs (K[j][2r], K[j][2r + 1]): B of the scores (a 32-bit transpose of K in bf16);
//   Vp [skv/2][dv] pairs (V[2r][c], V[2r + 1][c]): B of the output (two key rows interleaved);
// and per tile of 16 query rows: Qb [16][d32] bf16 and, after the softmax, Pb [16][skv] bf16 (the
// unnormalized weights exp(s - max)), both A. D is padded with zeros to d32 (a multiple of 32) for the
// scores and to dv (of 16) for the output; keys to skv (of 32) with zero K, V and weights.
//
// Tiles (one configuration per call, every tile 16 rows x 64 bytes): C(t) = tmm t for t < 4, A = tmm4,
// B = tmm5. Scores: 64 keys a pass, 4 C tiles, over D in steps of 32; they go through memory into the
// row softmax (scale, mask, max, exp, sum). Output: 64 columns of D a pass, over the keys in steps of 32,
// scaled by 1 / sum on the way out. Query rows past Sq are zeros and not stored.
#include <algorithm>
#include <cstring>
#include <utility>

#include "kernels/amx/tile.h"
#include "kernels/avx512/softmax512.h"
#include "kernels/avx512/tile512.h"
#include "kernels/avx512/vec512.h"
#include "kernels/epilogue.h"
#include "kernels/scalar.h"

namespace sparsecpu {
namespace {

using V = Vec512;
using F = simde__m512;
using I = simde__m512i;

constexpr int kRows = 16;       // query rows per tile
constexpr int kCTiles = 4;      // C tiles: 64 keys (scores) or 64 columns of D (output) a pass
constexpr int64_t kStep = 32;   // bf16 per A row: D per scores step, keys per output step

amx::TileConfig attention_config() {
  amx::TileConfig c;
  std::memset(&c, 0, sizeof(c));
  c.palette = 1;
  for (int t = 0; t < 6; ++t) c.rows[t] = kRows, c.colsb[t] = 64;
  return c;
}

// f(integral_constant<int, t>) for t < N: tile numbers are template arguments.
template <class Fn, int... T>
__attribute__((always_inline)) inline void each_tile_(Fn& f, std::integer_sequence<int, T...>) {
  (f(std::integral_constant<int, T>{}), ...);
}
template <int N, class Fn>
__attribute__((always_inline)) inline void each_tile(Fn&& f) {
  each_tile_(f, std::make_integer_sequence<int, N>{});
}

// bf16_round (scalar.h) of 16 floats, in the high half of each 32-bit lane.
inline I round_bf16(F x) {
  const I b = V::asi(x);
  const simde__mmask16 nan = simde_mm512_cmpgt_epi32_mask(V::and_(b, V::set1(0x7FFFFFFF)), V::set1(0x7F800000));
  const simde__mmask16 tiny = simde_mm512_cmpeq_epi32_mask(V::and_(b, V::set1(0x7F800000)), V::zero());
  I r = V::add32(V::add32(b, V::set1(0x7FFF)), V::and_(simde_mm512_srli_epi32(b, 16), V::set1(1)));
  r = simde_mm512_mask_mov_epi32(r, nan, V::or_(b, V::set1(0x00400000)));
  return simde_mm512_mask_mov_epi32(r, tiny, V::and_(b, V::set1(static_cast<int32_t>(0x80000000u))));
}

// Word indices of simde_mm512_permutex2var_epi16 over (a, b): the bf16 halves of a then b, in order
// (kConcat), or interleaved a0 b0 a1 b1 ... (kInterleave).
alignas(64) constexpr uint16_t kConcat[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31,
                                              33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
alignas(64) constexpr uint16_t kInterleave[32] = {1,  33, 3,  35, 5,  37, 7,  39, 9,  41, 11, 43, 13, 45, 15, 47,
                                                  17, 49, 19, 51, 21, 53, 23, 55, 25, 57, 27, 59, 29, 61, 31, 63};

inline I halves(F a, F b, const uint16_t* idx) {
  return simde_mm512_permutex2var_epi16(round_bf16(a), simde_mm512_loadu_si512(idx), round_bf16(b));
}

// Floats [0, n) of p (n <= 32; zeros past n) as 32 bf16 (64 bytes) at dst.
inline void store_bf16x32(const float* p, int64_t n, void* dst) {
  const F a = n >= 16 ? V::loadf(p) : Lanes(static_cast<int>(std::max<int64_t>(n, 0))).load(p);
  const F b = n >= 32 ? V::loadf(p + 16) : Lanes(static_cast<int>(std::clamp<int64_t>(n - 16, 0, 16))).load(p + 16);
  simde_mm512_storeu_si512(dst, halves(a, b, kConcat));
}

struct HeadScratch {
  int64_t d32, dv, skv;
  uint32_t* kp;  // [d32 / 2][skv]
  uint32_t* vp;  // [skv / 2][dv]
  uint16_t* qb;  // [16][d32]
  float* s;      // [16][skv]
  uint16_t* pb;  // [16][skv]
  float* ot;     // [16][dv]
};

HeadScratch head_scratch(int64_t Skv, int64_t D, float* scratch) {
  HeadScratch l;
  l.d32 = (D + 31) / 32 * 32, l.dv = (D + 15) / 16 * 16, l.skv = (Skv + 31) / 32 * 32;
  float* f = scratch;
  auto take = [&](int64_t floats) {
    float* at = f;
    f += floats;
    return at;
  };
  l.kp = reinterpret_cast<uint32_t*>(take(l.d32 / 2 * l.skv));
  l.vp = reinterpret_cast<uint32_t*>(take(l.skv / 2 * l.dv));
  l.qb = reinterpret_cast<uint16_t*>(take(kRows * l.d32 / 2));
  l.s = take(kRows * l.skv);
  l.pb = reinterpret_cast<uint16_t*>(take(kRows * l.skv / 2));
  l.ot = take(kRows * l.dv);
  return l;
}

void pack_k(const AttnParams& p, const float* k, const HeadScratch& l) {
  if (p.k_sd != 1) {  // K^T given: gather
    for (int64_t r = 0; r < l.d32 / 2; ++r) {
      for (int64_t j = 0; j < l.skv; ++j) {
        uint32_t w = 0;
        if (j < p.Skv) {
          const float* kj = k + j * p.k_ss;
          const uint32_t lo = 2 * r < p.D ? bf16_round(kj[2 * r * p.k_sd]) : 0;
          const uint32_t hi = 2 * r + 1 < p.D ? bf16_round(kj[(2 * r + 1) * p.k_sd]) : 0;
          w = lo | hi << 16;
        }
        l.kp[r * l.skv + j] = w;
      }
    }
    return;
  }
  // Rows of K: 16 keys x 32 of D become 16 keys x 16 pairs, transposed as 32-bit words.
  alignas(64) uint32_t words[16][16];
  for (int64_t j0 = 0; j0 < l.skv; j0 += 16) {
    for (int64_t c = 0; c < l.d32; c += kStep) {
      for (int64_t r = 0; r < 16; ++r) {
        if (j0 + r < p.Skv) store_bf16x32(k + (j0 + r) * p.k_ss + c, p.D - c, words[r]);
        else std::memset(words[r], 0, sizeof(words[r]));
      }
      F out[16];
      transpose16x16<true>(reinterpret_cast<const float*>(words), 16, 16, 16, out);
      for (int w = 0; w < 16; ++w) V::storef(reinterpret_cast<float*>(l.kp + (c / 2 + w) * l.skv + j0), out[w]);
    }
  }
}

void pack_v(const AttnParams& p, const float* v, const HeadScratch& l) {
  for (int64_t r = 0; r < l.skv / 2; ++r) {
    const int64_t j = 2 * r;
    for (int64_t c = 0; c < l.dv; c += 16) {
      const Lanes cols(static_cast<int>(std::min<int64_t>(16, p.D - c)));
      const F a = j < p.Skv ? cols.load(v + j * p.v_ss + c) : V::zerof();
      const F b = j + 1 < p.Skv ? cols.load(v + (j + 1) * p.v_ss + c) : V::zerof();
      simde_mm512_storeu_si512(l.vp + r * l.dv + c, halves(a, b, kInterleave));
    }
  }
}

// One pass of both products: C(t) = sum over `steps` steps of A x B(t) for t < N, stored at c + 16 t (rows
// ldc bytes apart). Step s reads A (16 rows x 32 bf16) at a + 64 s, rows lda bytes apart, and B(t) (16 rows
// of 16 pairs) at b + 16 t + 16 s ldb / 4 words, rows ldb bytes apart.
template <int N>
void tile_pass(const uint16_t* a, int64_t lda, const uint32_t* b, int64_t ldb, int64_t steps, float* c, int64_t ldc) {
  each_tile<N>([](auto t) { amx::zero<decltype(t)::value>(); });
  for (int64_t s = 0; s < steps; ++s) {
    amx::load<4>(a + kStep * s, lda);
    each_tile<N>([&](auto t) {
      amx::load<5>(b + 16 * decltype(t)::value + 16 * s * (ldb / 4), ldb);
      amx::dpbf16ps<decltype(t)::value, 4, 5>();
    });
  }
  each_tile<N>([&](auto t) { amx::store<decltype(t)::value>(c + 16 * decltype(t)::value, ldc); });
}

void rows_tile(const AttnParams& p, const AttnHead& head, const HeadScratch& l, int64_t i0) {
  const int rows = static_cast<int>(std::min<int64_t>(kRows, p.Sq - i0));
  for (int r = 0; r < kRows; ++r) {
    uint16_t* dst = l.qb + r * l.d32;
    for (int64_t c = 0; c < l.d32; c += kStep) {
      if (r < rows) store_bf16x32(head.q + (i0 + r) * p.q_ss + c, p.D - c, dst + c);
      else std::memset(dst + c, 0, 64);
    }
  }
  for (int64_t j = 0; j < l.skv; j += 16 * kCTiles) {
    with_rows<kCTiles>(std::min<int64_t>(kCTiles, (l.skv - j) / 16), [&](auto n) {
      // Scores of the 16 query rows in Qb against keys [j, j + 16 n), into s.
      tile_pass<decltype(n)::value>(l.qb, l.d32 * 2, l.kp + j, l.skv * 4, l.d32 / kStep, l.s + j, l.skv * 4);
    });
  }
  float inv[kRows];
  const F scale = V::set1f(p.scale);
  for (int r = 0; r < kRows; ++r) {
    float* row = l.s + r * l.skv;
    uint16_t* pr = l.pb + r * l.skv;
    if (r >= rows) {
      std::memset(pr, 0, l.skv * 2);
      continue;
    }
    for (int64_t j = 0; j < l.skv; j += 16) V::storef(row + j, V::mul(V::loadf(row + j), scale));
    inv[r] = softmax_row(p, head.mask, i0 + r, row, l.skv);
    for (int64_t j = 0; j < l.skv; j += kStep) store_bf16x32(row + j, kStep, pr + j);
  }
  for (int64_t c = 0; c < l.dv; c += 16 * kCTiles) {
    with_rows<kCTiles>(std::min<int64_t>(kCTiles, (l.dv - c) / 16), [&](auto n) {
      // Columns [c, c + 16 n) of Pb Vp (unnormalized), into ot.
      tile_pass<decltype(n)::value>(l.pb, l.skv * 2, l.vp + c, l.dv * 4, l.skv / kStep, l.ot + c, l.dv * 4);
    });
  }
  for (int r = 0; r < rows; ++r) {
    const F w = V::set1f(inv[r]);
    float* o = head.o + (i0 + r) * p.o_ss;
    int64_t c = 0;
    for (; c + 16 <= p.D; c += 16) V::storef(o + c, V::mul(V::loadf(l.ot + r * l.dv + c), w));
    if (c < p.D) Lanes(static_cast<int>(p.D - c)).store(o + c, V::mul(V::loadf(l.ot + r * l.dv + c), w));
  }
}

}  // namespace

SPARSECPU_KERNELS_BEGIN
void attention_bf16_16x64__amx(const AttnParams& p, int64_t bh, float* scratch) {
  const amx::TileConfig config = attention_config();
  const AttnHead head = attn_head(p, bh);
  const HeadScratch l = head_scratch(p.Skv, p.D, scratch);
  amx::TileSession tiles;
  tiles.use(config);
  pack_k(p, head.k, l);
  pack_v(p, head.v, l);
  for (int64_t i0 = 0; i0 < p.Sq; i0 += kRows) rows_tile(p, head, l, i0);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
