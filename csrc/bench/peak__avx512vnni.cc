// Peak loop of the avx512_vnni level (compiled with the AVX-512 + VNNI flags only): vpdpbusd zmm,
// 64 u8 x s8 multiply-adds = 128 ops per instruction (see peak.h), the dot of the VNNI int8 kernels.
#include <cstdint>

#include "bench/peak.h"

namespace sparsecpu {

#define SPC_ZERO(r) "vpxord %%zmm" #r ", %%zmm" #r ", %%zmm" #r "\n\t"
#define SPC_DP(acc) "vpdpbusd %%zmm25, %%zmm24, %%zmm" #acc "\n\t"

// 24 independent vpdpbusd chains (latency 5 x up to 2 ports needs 10) + 2 inputs (bytes 1: u8 1 x s8 1),
// of 32 zmm. The accumulator is both input and output of vpdpbusd, so each chain is one instruction deep.
void peak_s8_dpbusd_x24__avx512vnni(uint64_t iters) {
  if (iters == 0) return;
  static const uint32_t kOnes = 0x01010101u;
  __asm__ volatile(
      "vpbroadcastd %[w], %%zmm24\n\t"
      "vmovdqa64 %%zmm24, %%zmm25\n\t"
      SPC_ZERO(0) SPC_ZERO(1) SPC_ZERO(2) SPC_ZERO(3) SPC_ZERO(4) SPC_ZERO(5) SPC_ZERO(6) SPC_ZERO(7)
      SPC_ZERO(8) SPC_ZERO(9) SPC_ZERO(10) SPC_ZERO(11) SPC_ZERO(12) SPC_ZERO(13) SPC_ZERO(14) SPC_ZERO(15)
      SPC_ZERO(16) SPC_ZERO(17) SPC_ZERO(18) SPC_ZERO(19) SPC_ZERO(20) SPC_ZERO(21) SPC_ZERO(22) SPC_ZERO(23)
      ".p2align 5\n"
      "1:\n\t"
      SPC_DP(0) SPC_DP(1) SPC_DP(2) SPC_DP(3) SPC_DP(4) SPC_DP(5) SPC_DP(6) SPC_DP(7)
      SPC_DP(8) SPC_DP(9) SPC_DP(10) SPC_DP(11) SPC_DP(12) SPC_DP(13) SPC_DP(14) SPC_DP(15)
      SPC_DP(16) SPC_DP(17) SPC_DP(18) SPC_DP(19) SPC_DP(20) SPC_DP(21) SPC_DP(22) SPC_DP(23)
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      // zmm16-31 are left zero (an EVEX xmm write clears the upper bits): vzeroupper covers zmm0-15 only.
      ".irp r,16,17,18,19,20,21,22,23,24,25\n\t" "vpxord %%xmm\\r, %%xmm\\r, %%xmm\\r\n\t" ".endr\n\t"
      "vzeroupper"
      : [n] "+r"(iters)
      : [w] "m"(kOnes)
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
        "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25");
}
#undef SPC_DP
#undef SPC_ZERO

}  // namespace sparsecpu
