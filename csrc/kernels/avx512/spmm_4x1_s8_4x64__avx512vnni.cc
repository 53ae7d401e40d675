// int8 4x1-block SpMM with AVX-512 VNNI: tile 4 channels x 64 rows, one vpdpbusd per
// (channel, 16-row slab) with the channel's 4 weights as an embedded dword broadcast.
#include "kernels/avx512/vec512.h"
#include "kernels/spmm_4x1.h"

namespace sparsecpu {

namespace {
struct DotVnni512 {
  static inline void step(__m512i acc[4][4], const __m512i s[4], const int8_t* w) {
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m512i wc = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(w + 4 * c));
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) acc[c][k] = _mm512_dpbusd_epi32(acc[c][k], s[k], wc);
    }
  }
};
}  // namespace

void spmm_4x1_s8_4x64__avx512vnni(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0) {
  spmm_s8<Vec512, DotVnni512>(p, g0, g1, m0);
}

}  // namespace sparsecpu
