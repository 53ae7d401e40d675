// int8 4x1-block SpMM on AVX2: tile 16 rows x 4 channels, exact vpmaddwd dots.
#include "kernels/avx2/vec256.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

namespace {

// AVX2 has 16 ymm registers: the 4 x 4 accumulator tile of the AVX-512 kernels lived on the
// stack here (a load and two stores per accumulator update). This tile is 16 rows x 4 channels:
// 8 accumulators + 4 activation pairs + a weight pair + a product = 14 registers.
//   The 4 rows of u8 activations are zero-extended to 16 bits (vpmovzxbw) and interleaved in
//   pairs (k0, k1), (k2, k3) with 16-bit unpacks: slab lo holds rows 8 j + i, slab hi rows
//   8 j + 4 + i (j = 128-bit lane, i = 0..3). The quad's 16 int8 weights are sign-extended once
//   into an L1 buffer and each channel's (k0, k1) / (k2, k3) s16 pair is broadcast from there
//   into vpmaddwd, which is exact: u8 x s8 products summed in pairs stay far inside s32
//   (vpmaddubsw would saturate its 16-bit sums).
// A group's whole quad loop is one asm block (with intrinsics GCC turns the buffer round trip
// into register shuffles and then spills four accumulators). One block counter b addresses the
// column list, the weights and the column list pf blocks ahead, and the row offsets go straight
// into the loads' addressing: ~60 instructions per quad instead of ~71 for a C++ loop around an
// asm step (the tile 0.92-0.97x the time in same-process A/B on Zen 3).
struct QuadPairs256 {
  static constexpr int kSlabs = 2;
  static constexpr bool kLoop = true;

  // Quads [b0, b1) of one group into acc; with kPf, each also prefetches the activation rows of
  // the quad pf blocks ahead (the caller keeps b + pf inside the column list).
  template <bool kPf>
  static inline void loop(__m256i acc[4][2], const uint8_t* xq, int64_t ld, const uint16_t* cols, const int8_t* vals,
                          uint64_t b0, uint64_t b1, uint64_t pf) {
    if (b0 >= b1) return;
    alignas(32) int16_t w16[16];
    uint64_t b = b0;
    const uint16_t* cpf = cols + pf;
#define SPC_CH(i, a0, a1)                          \
  "vpbroadcastd " #i "*8(%[wb]), %%ymm15\n\t"        \
  "vpmaddwd %%ymm15, %%ymm10, %%ymm14\n\t"              \
  "vpaddd %%ymm14, %[" #a0 "], %[" #a0 "]\n\t"        \
  "vpmaddwd %%ymm15, %%ymm11, %%ymm14\n\t"              \
  "vpaddd %%ymm14, %[" #a1 "], %[" #a1 "]\n\t"        \
  "vpbroadcastd " #i "*8+4(%[wb]), %%ymm15\n\t"      \
  "vpmaddwd %%ymm15, %%ymm12, %%ymm14\n\t"              \
  "vpaddd %%ymm14, %[" #a0 "], %[" #a0 "]\n\t"        \
  "vpmaddwd %%ymm15, %%ymm13, %%ymm14\n\t"              \
  "vpaddd %%ymm14, %[" #a1 "], %[" #a1 "]\n\t"
#define SPC_IDX(base)                                                                    \
  "movzwl 0(%[" base "],%[b],2), %%r8d\n\t" "movzwl 2(%[" base "],%[b],2), %%r9d\n\t"     \
  "movzwl 4(%[" base "],%[b],2), %%r10d\n\t" "movzwl 6(%[" base "],%[b],2), %%r11d\n\t"   \
  "imul %[ld], %%r8\n\t" "imul %[ld], %%r9\n\t" "imul %[ld], %%r10\n\t" "imul %[ld], %%r11\n\t"
#define SPC_BODY                                                                           \
  "vpmovsxbw (%[v],%[b],4), %%ymm14\n\t" "vmovdqa %%ymm14, (%[wb])\n\t"                     \
  SPC_IDX("c")                                                                             \
  "vpmovzxbw (%[x],%%r8), %%ymm10\n\t" "vpmovzxbw (%[x],%%r9), %%ymm14\n\t"                 \
  "vpunpckhwd %%ymm14, %%ymm10, %%ymm11\n\t" "vpunpcklwd %%ymm14, %%ymm10, %%ymm10\n\t"     \
  "vpmovzxbw (%[x],%%r10), %%ymm12\n\t" "vpmovzxbw (%[x],%%r11), %%ymm14\n\t"               \
  "vpunpckhwd %%ymm14, %%ymm12, %%ymm13\n\t" "vpunpcklwd %%ymm14, %%ymm12, %%ymm12\n\t"     \
  SPC_CH(0, a00, a01) SPC_CH(1, a10, a11) SPC_CH(2, a20, a21) SPC_CH(3, a30, a31)           \
  "add $4, %[b]\n\t" "cmp %[b1], %[b]\n\t" "jb 1b\n\t"
#define SPC_OUT                                                                                        \
  [a00] "+x"(acc[0][0]), [a01] "+x"(acc[0][1]), [a10] "+x"(acc[1][0]), [a11] "+x"(acc[1][1]),         \
  [a20] "+x"(acc[2][0]), [a21] "+x"(acc[2][1]), [a30] "+x"(acc[3][0]), [a31] "+x"(acc[3][1]), [b] "+r"(b)
#define SPC_CLOB "memory", "cc", "r8", "r9", "r10", "r11", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
    if constexpr (kPf) {
      __asm__ volatile("1:\n\t"
                       SPC_IDX("cp")
                       "prefetcht0 (%[x],%%r8)\n\t" "prefetcht0 (%[x],%%r9)\n\t"
                       "prefetcht0 (%[x],%%r10)\n\t" "prefetcht0 (%[x],%%r11)\n\t"
                       SPC_BODY
                       : SPC_OUT
                       : [x] "r"(xq), [ld] "r"(ld), [c] "r"(cols), [cp] "r"(cpf), [v] "r"(vals), [wb] "r"(w16),
                         [b1] "r"(b1)
                       : SPC_CLOB);
    } else {
      __asm__ volatile("1:\n\t" SPC_BODY
                       : SPC_OUT
                       : [x] "r"(xq), [ld] "r"(ld), [c] "r"(cols), [v] "r"(vals), [wb] "r"(w16), [b1] "r"(b1)
                       : SPC_CLOB);
    }
#undef SPC_CH
#undef SPC_IDX
#undef SPC_BODY
#undef SPC_OUT
#undef SPC_CLOB
  }
};

}  // namespace

void spmm_4x1_s8_16x4__avx2(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  spmm_s8<Vec256, QuadPairs256>(p, g0, g1, m0);
}

}  // namespace sparsecpu
