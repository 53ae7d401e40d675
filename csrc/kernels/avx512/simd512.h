// The AVX-512 kernel sources are written against SIMD Everywhere's API (simde_mm512_*, simde__m512i):
// compiled with the AVX-512 flags every call is the native intrinsic; compiled with
// SPARSECPU_EMULATED (AVX2 flags only) the same source runs emulated, so the AVX-512 levels are
// tested on any AVX2 host. The emulated build defines its entry points in namespace
// sparsecpu::emulated (SPARSECPU_KERNELS_BEGIN / _END), so both builds link into one library;
// everything else in these files lives in anonymous namespaces, one copy per build.
// 128- and 256-bit intrinsics stay native: both builds have AVX2.
#pragma once
#include <immintrin.h>
#include <simde/x86/avx512.h>

#if defined(SPARSECPU_EMULATED)
#define SPARSECPU_KERNELS_BEGIN namespace emulated {
#define SPARSECPU_KERNELS_END }
#else
#define SPARSECPU_KERNELS_BEGIN
#define SPARSECPU_KERNELS_END
#endif
