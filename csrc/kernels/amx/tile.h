// The thin tile API the AMX kernel sources are written against. Natively each call is one instruction;
// in the emulated build (SPARSECPU_EMULATED) it is the same instruction on sparsecpu's tile machine
// (kernels/amx/tilemachine.h), so the AMX kernels run and are tested on any AVX2 host.
//
//   amx::load<T>(ptr, stride)   tileloadd  tmmT, (ptr, stride)     stride in bytes
//   amx::store<T>(ptr, stride)  tilestored (ptr, stride), tmmT
//   amx::zero<T>()              tilezero   tmmT
//   amx::dpbusd<C, A, B>()      tdpbusd    tmmC += u8 tmmA x s8 tmmB
//   amx::dpbf16ps<C, A, B>()    tdpbf16ps  tmmC += bf16 tmmA x bf16 tmmB
//   amx::TileSession            the tile configuration of one kernel call (below)
//
// Tile numbers are template arguments: the instructions encode them. The native forms are inline asm
// rather than GCC's _tile_* macros, which paste the number into the asm text (no template argument can
// reach them) and tell the compiler neither what memory a tileloadd reads nor (_tile_loadconfig) that
// all 64 bytes of the configuration are read.
//
// Everything here lives in an anonymous namespace, one copy per build, like the AVX-512 helpers
// (avx512/simd512.h): the native and the emulated AMX kernels link into one library, and an inline
// function both builds defined under one name would be one function to the linker. A call either
// build did not inline (TileSession::use in clang's ASan build) then ran the other build's copy:
// native sttilecfg in an emulated kernel (SIGILL on a CPU without AMX).
#pragma once
#include <cstdint>
#include <cstring>

#include "kernels/amx/tilemachine.h"

namespace sparsecpu {
namespace amx {
namespace {

template <int T>
constexpr void check_tile_number() {
  static_assert(T >= 0 && T < kTiles, "palette 1 has tiles tmm0..tmm7");
}

#if defined(SPARSECPU_EMULATED)

inline void load_config(const TileConfig& c) { machine::ldtilecfg(&c); }
inline void store_config(TileConfig* c) { machine::sttilecfg(c); }
inline void release() { machine::tilerelease(); }
template <int T>
inline void load(const void* p, int64_t stride) {
  check_tile_number<T>();
  machine::tileloadd(T, p, stride);
}
template <int T>
inline void store(void* p, int64_t stride) {
  check_tile_number<T>();
  machine::tilestored(T, p, stride);
}
template <int T>
inline void zero() {
  check_tile_number<T>();
  machine::tilezero(T);
}
template <int C, int A, int B>
inline void dpbusd() {
  static_assert(C != A && C != B && A != B, "the three tiles of a tdp* must differ (#UD)");
  machine::tdpbusd(C, A, B);
}
template <int C, int A, int B>
inline void dpbf16ps() {
  static_assert(C != A && C != B && A != B, "the three tiles of a tdp* must differ (#UD)");
  machine::tdpbf16ps(C, A, B);
}

#else

inline void load_config(const TileConfig& c) { __asm__ volatile("ldtilecfg %0" : : "m"(c)); }
inline void store_config(TileConfig* c) { __asm__ volatile("sttilecfg %0" : "=m"(*c)); }
inline void release() { __asm__ volatile("tilerelease" ::: "memory"); }
// The "memory" clobber orders the load after the stores that fill what it reads (an "m" operand of
// unknown size would say less, but clang rejects it).
template <int T>
inline void load(const void* p, int64_t stride) {
  check_tile_number<T>();
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm%c2" : : "r"(p), "r"(stride), "i"(T) : "memory");
}
template <int T>
inline void store(void* p, int64_t stride) {
  check_tile_number<T>();
  __asm__ volatile("tilestored %%tmm%c2, (%0,%1,1)" : : "r"(p), "r"(stride), "i"(T) : "memory");
}
template <int T>
inline void zero() {
  check_tile_number<T>();
  __asm__ volatile("tilezero %%tmm%c0" : : "i"(T));
}
template <int C, int A, int B>
inline void dpbusd() {
  static_assert(C != A && C != B && A != B, "the three tiles of a tdp* must differ (#UD)");
  check_tile_number<C>(), check_tile_number<A>(), check_tile_number<B>();
  __asm__ volatile("tdpbusd %%tmm%c2, %%tmm%c1, %%tmm%c0" : : "i"(C), "i"(A), "i"(B));
}
template <int C, int A, int B>
inline void dpbf16ps() {
  static_assert(C != A && C != B && A != B, "the three tiles of a tdp* must differ (#UD)");
  check_tile_number<C>(), check_tile_number<A>(), check_tile_number<B>();
  __asm__ volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" : : "i"(C), "i"(A), "i"(B));
}

#endif

// The tile configuration of one kernel call on one thread. The tile state belongs to the thread, and
// other code runs AMX on the same threads between our calls (torch's oneDNN on the OpenMP threads
// sparsecpu shares, ONNX Runtime's MLAS on its pool threads): they may have loaded a configuration of
// their own or released the tiles. So a session trusts no cached flag: its first use() reads the
// thread's configuration back (sttilecfg) and loads the wanted one only if it differs (ldtilecfg zeroes
// every tile and is not free); later use() calls in the same session compare with what it loaded. The
// configuration is left in place at the end, so the next call on a thread usually loads nothing.
class TileSession {
 public:
  void use(const TileConfig& want) {
    if (!known_) {
      store_config(&current_);
      known_ = true;
    }
    if (std::memcmp(&current_, &want, sizeof(TileConfig)) != 0) {
      load_config(want);
      current_ = want;
    }
  }

 private:
  TileConfig current_;
  bool known_ = false;
};

}  // namespace
}  // namespace amx
}  // namespace sparsecpu
