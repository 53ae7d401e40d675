// Peak loops of the avx2 level (compiled with the AVX2 flags only): FMA ymm, and vpmaddwd + vpaddd ymm,
// the exact u8 x s8 dot of the AVX2 int8 kernels. See peak.h for what one op is.
#include <cstdint>

#include "bench/peak.h"

namespace sparsecpu {

#define SPC_FMA(acc) "vfmadd231ps %%ymm12, %%ymm13, %%ymm" #acc "\n\t"
#define SPC_ZERO(r) "vpxor %%ymm" #r ", %%ymm" #r ", %%ymm" #r "\n\t"
#define SPC_YMM_CLOBBERS                                                                                     \
  "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
      "xmm12", "xmm13"

// 12 independent FMA chains: latency 4-5 x 2 FMA ports needs 8-10 in flight; 12 accumulators + 2
// inputs fit the 16 ymm. Values stay normal (each lane grows by 0.5 per iteration): no assists.
void peak_f32_fma_x12__avx2(uint64_t iters) {
  if (iters == 0) return;
  static const float kA = 1.0f, kB = 0.5f;
  __asm__ volatile(
      "vbroadcastss %[a], %%ymm12\n\t"
      "vbroadcastss %[b], %%ymm13\n\t"
      SPC_ZERO(0) SPC_ZERO(1) SPC_ZERO(2) SPC_ZERO(3) SPC_ZERO(4) SPC_ZERO(5)
      SPC_ZERO(6) SPC_ZERO(7) SPC_ZERO(8) SPC_ZERO(9) SPC_ZERO(10) SPC_ZERO(11)
      ".p2align 5\n"
      "1:\n\t"
      SPC_FMA(0) SPC_FMA(1) SPC_FMA(2) SPC_FMA(3) SPC_FMA(4) SPC_FMA(5)
      SPC_FMA(6) SPC_FMA(7) SPC_FMA(8) SPC_FMA(9) SPC_FMA(10) SPC_FMA(11)
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper"
      : [n] "+r"(iters)
      : [a] "m"(kA), [b] "m"(kB)
      : SPC_YMM_CLOBBERS);
}

// 8 accumulators, each fed by its own vpmaddwd of two loop-invariant registers (words 1, 1; s32 wraps
// without a slowdown anyway). Only vpaddd (latency 1) is on a chain; the products rotate through 4
// temporaries, so renaming, not a chain, bounds the vpmaddwd rate.
#define SPC_MADD(t, acc) \
  "vpmaddwd %%ymm8, %%ymm9, %%ymm" #t "\n\t" "vpaddd %%ymm" #t ", %%ymm" #acc ", %%ymm" #acc "\n\t"
void peak_s8_madd_x8__avx2(uint64_t iters) {
  if (iters == 0) return;
  static const uint32_t kOnes = 0x00010001u;
  __asm__ volatile(
      "vpbroadcastd %[w], %%ymm8\n\t"
      "vmovdqa %%ymm8, %%ymm9\n\t"
      SPC_ZERO(0) SPC_ZERO(1) SPC_ZERO(2) SPC_ZERO(3) SPC_ZERO(4) SPC_ZERO(5) SPC_ZERO(6) SPC_ZERO(7)
      ".p2align 5\n"
      "1:\n\t"
      SPC_MADD(10, 0) SPC_MADD(11, 1) SPC_MADD(12, 2) SPC_MADD(13, 3)
      SPC_MADD(10, 4) SPC_MADD(11, 5) SPC_MADD(12, 6) SPC_MADD(13, 7)
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper"
      : [n] "+r"(iters)
      : [w] "m"(kOnes)
      : SPC_YMM_CLOBBERS);
}
#undef SPC_MADD
#undef SPC_FMA
#undef SPC_ZERO
#undef SPC_YMM_CLOBBERS

}  // namespace sparsecpu
