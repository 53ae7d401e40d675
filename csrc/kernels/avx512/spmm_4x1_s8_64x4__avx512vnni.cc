// int8 4x1-block SpMM with AVX-512 VNNI: tile 64 rows x 4 channels.
#include "kernels/avx512/vec512.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

namespace {

#if defined(SPARSECPU_EMULATED)
// The intrinsics twin of QuadVnni512 below (same gather, same slab order, one vpdpbusd per channel
// and slab): inline asm cannot be emulated, so the emulated build runs this loop instead.
struct DotVnni512 {
  using I = simde__m512i;
  static inline void step(I acc[4][4], const I s[4], const int8_t* w) {
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const I wc = Vec512::bcast32(w + 4 * c);
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) acc[c][k] = simde_mm512_dpbusd_epi32(acc[c][k], s[k], wc);
    }
  }
};
using QuadVnni512 = QuadGather<Vec512, DotVnni512>;
#else
// One quad of blocks, scheduled by hand: GCC keeps the 16 accumulators of the intrinsics version
// in registers only sometimes, and its spill/move traffic halves the vpdpbusd rate. Here they
// are asm operands, so they live in zmm registers for the whole loop.
//   4 loads (64 rows of u8 each), 8 unpacks -> slabs s0..s3 (VNNI order), then per channel one
//   vpdpbusd per slab with the channel's 4 weights as an embedded {1to16} dword broadcast.
struct QuadVnni512 {
  static constexpr int kSlabs = 4;
  static constexpr bool kLoop = false;
  static inline void step(simde__m512i acc[4][4], const uint8_t* r0, const uint8_t* r1, const uint8_t* r2,
                          const uint8_t* r3, const int8_t* w) {
    simde__m512i s0, s1, s2, s3, t;
    __asm__(
        "vmovdqu64 (%[r0]), %[s3]\n\t"
        "vmovdqu64 (%[r1]), %[s2]\n\t"
        "vmovdqu64 (%[r2]), %[s1]\n\t"
        "vmovdqu64 (%[r3]), %[s0]\n\t"
        "vpunpcklbw %[s2], %[s3], %[t]\n\t"   // a  = lo8(x0, x1)
        "vpunpckhbw %[s2], %[s3], %[s3]\n\t"  // bb = hi8(x0, x1)
        "vpunpcklbw %[s0], %[s1], %[s2]\n\t"  // c  = lo8(x2, x3)
        "vpunpckhbw %[s0], %[s1], %[s1]\n\t"  // d  = hi8(x2, x3)
        "vpunpcklwd %[s2], %[t], %[s0]\n\t"   // s0 = lo16(a, c)
        "vpunpckhwd %[s2], %[t], %[t]\n\t"    // s1 = hi16(a, c) (in t)
        "vpunpcklwd %[s1], %[s3], %[s2]\n\t"  // s2 = lo16(bb, d)
        "vpunpckhwd %[s1], %[s3], %[s3]\n\t"  // s3 = hi16(bb, d)
        : [s0] "=&v"(s0), [s1] "=&v"(s1), [s2] "=&v"(s2), [s3] "=&v"(s3), [t] "=&v"(t)
        : [r0] "r"(r0), [r1] "r"(r1), [r2] "r"(r2), [r3] "r"(r3)
        : "memory");
    s1 = t;
    dot8(acc[0], acc[1], s0, s1, s2, s3, w);
    dot8(acc[2], acc[3], s0, s1, s2, s3, w + 8);
  }

  // Two channels x 4 slabs; the channel's 4 weights come as an embedded {1to16} broadcast.
  static inline void dot8(simde__m512i* a, simde__m512i* b, simde__m512i s0, simde__m512i s1, simde__m512i s2, simde__m512i s3,
                          const int8_t* w) {
    __asm__(
        "vpdpbusd 0(%[w])%{1to16%}, %[s0], %[a0]\n\t"
        "vpdpbusd 0(%[w])%{1to16%}, %[s1], %[a1]\n\t"
        "vpdpbusd 0(%[w])%{1to16%}, %[s2], %[a2]\n\t"
        "vpdpbusd 0(%[w])%{1to16%}, %[s3], %[a3]\n\t"
        "vpdpbusd 4(%[w])%{1to16%}, %[s0], %[b0]\n\t"
        "vpdpbusd 4(%[w])%{1to16%}, %[s1], %[b1]\n\t"
        "vpdpbusd 4(%[w])%{1to16%}, %[s2], %[b2]\n\t"
        "vpdpbusd 4(%[w])%{1to16%}, %[s3], %[b3]\n\t"
        : [a0] "+v"(a[0]), [a1] "+v"(a[1]), [a2] "+v"(a[2]), [a3] "+v"(a[3]), [b0] "+v"(b[0]), [b1] "+v"(b[1]),
          [b2] "+v"(b[2]), [b3] "+v"(b[3])
        : [s0] "v"(s0), [s1] "v"(s1), [s2] "v"(s2), [s3] "v"(s3), [w] "r"(w)
        : "memory");
  }
};
#endif

}  // namespace

SPARSECPU_KERNELS_BEGIN
void spmm_4x1_s8_64x4__avx512vnni(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  spmm_s8<Vec512, QuadVnni512>(p, g0, g1, m0);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
