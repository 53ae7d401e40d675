// Peak loops of the avx512 level (compiled with the AVX-512 F/BW/VL/DQ flags only): FMA zmm, and
// vpmaddwd + vpaddd zmm, the exact u8 x s8 dot of the AVX-512BW int8 kernels. See peak.h for the ops.
#include <cstdint>

#include "bench/peak.h"

namespace sparsecpu {

#define SPC_ZERO(r) "vpxord %%zmm" #r ", %%zmm" #r ", %%zmm" #r "\n\t"
// zmm16-31 are left zero (an EVEX xmm write clears the upper bits): vzeroupper covers only zmm0-15.
#define SPC_ZERO_HI16                                                                                       \
  ".irp r,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n\t" "vpxord %%xmm\\r, %%xmm\\r, %%xmm\\r\n\t" \
  ".endr\n\t" "vzeroupper"
#define SPC_ZMM_CLOBBERS                                                                                      \
  "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",  \
      "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", \
      "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

// 24 independent FMA chains (latency 4 x 2 ports needs 8; more covers cores with longer latency or
// double-pumped 512-bit units) + 2 inputs, of 32 zmm. Values stay normal.
#define SPC_FMA(acc) "vfmadd231ps %%zmm24, %%zmm25, %%zmm" #acc "\n\t"
void peak_f32_fma_x24__avx512(uint64_t iters) {
  if (iters == 0) return;
  static const float kA = 1.0f, kB = 0.5f;
  __asm__ volatile(
      "vbroadcastss %[a], %%zmm24\n\t"
      "vbroadcastss %[b], %%zmm25\n\t"
      SPC_ZERO(0) SPC_ZERO(1) SPC_ZERO(2) SPC_ZERO(3) SPC_ZERO(4) SPC_ZERO(5) SPC_ZERO(6) SPC_ZERO(7)
      SPC_ZERO(8) SPC_ZERO(9) SPC_ZERO(10) SPC_ZERO(11) SPC_ZERO(12) SPC_ZERO(13) SPC_ZERO(14) SPC_ZERO(15)
      SPC_ZERO(16) SPC_ZERO(17) SPC_ZERO(18) SPC_ZERO(19) SPC_ZERO(20) SPC_ZERO(21) SPC_ZERO(22) SPC_ZERO(23)
      ".p2align 5\n"
      "1:\n\t"
      SPC_FMA(0) SPC_FMA(1) SPC_FMA(2) SPC_FMA(3) SPC_FMA(4) SPC_FMA(5) SPC_FMA(6) SPC_FMA(7)
      SPC_FMA(8) SPC_FMA(9) SPC_FMA(10) SPC_FMA(11) SPC_FMA(12) SPC_FMA(13) SPC_FMA(14) SPC_FMA(15)
      SPC_FMA(16) SPC_FMA(17) SPC_FMA(18) SPC_FMA(19) SPC_FMA(20) SPC_FMA(21) SPC_FMA(22) SPC_FMA(23)
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      SPC_ZERO_HI16
      : [n] "+r"(iters)
      : [a] "m"(kA), [b] "m"(kB)
      : SPC_ZMM_CLOBBERS);
}

// 16 accumulators, each fed by its own vpmaddwd of two loop-invariant registers (zmm24, zmm25); the
// products rotate through 6 temporaries (zmm26-31). Only vpaddd (latency 1) is on a chain.
#define SPC_MADD(t, acc) \
  "vpmaddwd %%zmm24, %%zmm25, %%zmm" #t "\n\t" "vpaddd %%zmm" #t ", %%zmm" #acc ", %%zmm" #acc "\n\t"
void peak_s8_madd_x16__avx512(uint64_t iters) {
  if (iters == 0) return;
  static const uint32_t kOnes = 0x00010001u;
  __asm__ volatile(
      "vpbroadcastd %[w], %%zmm24\n\t"
      "vmovdqa64 %%zmm24, %%zmm25\n\t"
      SPC_ZERO(0) SPC_ZERO(1) SPC_ZERO(2) SPC_ZERO(3) SPC_ZERO(4) SPC_ZERO(5) SPC_ZERO(6) SPC_ZERO(7)
      SPC_ZERO(8) SPC_ZERO(9) SPC_ZERO(10) SPC_ZERO(11) SPC_ZERO(12) SPC_ZERO(13) SPC_ZERO(14) SPC_ZERO(15)
      ".p2align 5\n"
      "1:\n\t"
      SPC_MADD(26, 0) SPC_MADD(27, 1) SPC_MADD(28, 2) SPC_MADD(29, 3) SPC_MADD(30, 4) SPC_MADD(31, 5)
      SPC_MADD(26, 6) SPC_MADD(27, 7) SPC_MADD(28, 8) SPC_MADD(29, 9) SPC_MADD(30, 10) SPC_MADD(31, 11)
      SPC_MADD(26, 12) SPC_MADD(27, 13) SPC_MADD(28, 14) SPC_MADD(29, 15)
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      SPC_ZERO_HI16
      : [n] "+r"(iters)
      : [w] "m"(kOnes)
      : SPC_ZMM_CLOBBERS);
}
#undef SPC_MADD
#undef SPC_FMA
#undef SPC_ZERO
#undef SPC_ZERO_HI16
#undef SPC_ZMM_CLOBBERS

}  // namespace sparsecpu
