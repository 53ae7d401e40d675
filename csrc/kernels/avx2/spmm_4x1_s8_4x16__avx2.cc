// int8 4x1-block SpMM on AVX2: tile 4 channels x 16 rows, exact vpmaddwd dots.
#include "kernels/avx2/vec256.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

namespace {

// AVX2 has 16 ymm registers: the 4 x 4 accumulator tile of the AVX-512 kernels lived on the
// stack here (a load and two stores per accumulator update). This tile is 4 channels x 16 rows:
// 8 accumulators + 4 activation pairs + a weight pair + a product = 14 registers.
//   The 4 rows of u8 activations are zero-extended to 16 bits (vpmovzxbw) and interleaved in
//   pairs (k0, k1), (k2, k3) with 16-bit unpacks: slab lo holds rows 8 j + i, slab hi rows
//   8 j + 4 + i (j = 128-bit lane, i = 0..3). The quad's 16 int8 weights are sign-extended once
//   into an L1 buffer and each channel's (k0, k1) / (k2, k3) s16 pair is broadcast from there
//   into vpmaddwd, which is exact: u8 x s8 products summed in pairs stay far inside s32
//   (vpmaddubsw would saturate its 16-bit sums).
// In asm for the reason of the VNNI kernel: with intrinsics GCC turns the buffer round trip into
// register shuffles and then spills four accumulators.
struct QuadPairs256 {
  static constexpr int kSlabs = 2;
  static inline void step(__m256i acc[4][2], const uint8_t* r0, const uint8_t* r1, const uint8_t* r2,
                          const uint8_t* r3, const int8_t* w) {
    alignas(32) int16_t w16[16];  // [c][k] s16 weights
    __m256i lo01, hi01, lo23, hi23, t;
    __asm__(
        "vpmovsxbw (%[w]), %[t]\n\t"
        "vmovdqa %[t], (%[wb])\n\t"
        "vpmovzxbw (%[r0]), %[lo01]\n\t"
        "vpmovzxbw (%[r1]), %[t]\n\t"
        "vpunpckhwd %[t], %[lo01], %[hi01]\n\t"
        "vpunpcklwd %[t], %[lo01], %[lo01]\n\t"
        "vpmovzxbw (%[r2]), %[lo23]\n\t"
        "vpmovzxbw (%[r3]), %[t]\n\t"
        "vpunpckhwd %[t], %[lo23], %[hi23]\n\t"
        "vpunpcklwd %[t], %[lo23], %[lo23]\n\t"
        : [lo01] "=&x"(lo01), [hi01] "=&x"(hi01), [lo23] "=&x"(lo23), [hi23] "=&x"(hi23), [t] "=&x"(t)
        : [r0] "r"(r0), [r1] "r"(r1), [r2] "r"(r2), [r3] "r"(r3), [w] "r"(w), [wb] "r"(w16)
        : "memory");
    channel(acc[0], lo01, hi01, lo23, hi23, w16 + 0);
    channel(acc[1], lo01, hi01, lo23, hi23, w16 + 4);
    channel(acc[2], lo01, hi01, lo23, hi23, w16 + 8);
    channel(acc[3], lo01, hi01, lo23, hi23, w16 + 12);
  }

  static inline void channel(__m256i a[2], __m256i lo01, __m256i hi01, __m256i lo23, __m256i hi23,
                             const int16_t* wc) {
    __m256i wv, t;
    __asm__(
        "vpbroadcastd 0(%[wc]), %[wv]\n\t"
        "vpmaddwd %[wv], %[lo01], %[t]\n\t"
        "vpaddd %[t], %[a0], %[a0]\n\t"
        "vpmaddwd %[wv], %[hi01], %[t]\n\t"
        "vpaddd %[t], %[a1], %[a1]\n\t"
        "vpbroadcastd 4(%[wc]), %[wv]\n\t"
        "vpmaddwd %[wv], %[lo23], %[t]\n\t"
        "vpaddd %[t], %[a0], %[a0]\n\t"
        "vpmaddwd %[wv], %[hi23], %[t]\n\t"
        "vpaddd %[t], %[a1], %[a1]\n\t"
        : [a0] "+x"(a[0]), [a1] "+x"(a[1]), [wv] "=&x"(wv), [t] "=&x"(t)
        : [lo01] "x"(lo01), [hi01] "x"(hi01), [lo23] "x"(lo23), [hi23] "x"(hi23), [wc] "r"(wc)
        : "memory");
  }
};

}  // namespace

void spmm_4x1_s8_4x16__avx2(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  spmm_s8<Vec256, QuadPairs256>(p, g0, g1, m0);
}

}  // namespace sparsecpu
