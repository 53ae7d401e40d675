// Per-core compute peaks behind `sparsecpu bench peak`: one asm loop per ISA level and kind of
// arithmetic, each in its own source compiled with that level's flags only, timed single-threaded
// here so that benchmark rows can be stated as a fraction of what this machine's core can do.
//
// One "op" is one multiply or one add of the 2*M*N*K that the kernels' GOP/s count for a dense product:
// an FMA lane is 2 ops, a u8 x s8 multiply-add (however it is widened) is 2 ops. So
//   vfmadd231ps ymm / zmm     8 / 16 lanes               16 / 32 ops
//   vpmaddwd + vpaddd ymm     16 s16 products of 8-bit values, pair-summed, added into 8 s32: 32 ops
//   vpmaddwd + vpaddd zmm     the same on 32 products:                                           64 ops
//   vpdpbusd zmm              64 u8 x s8 multiply-adds into 16 s32:                             128 ops
// The vpmaddwd pair is the exact u8 x s8 path of the AVX2 and AVX-512BW int8 kernels (vpmaddubsw would
// saturate), vpdpbusd the one of the VNNI kernels. Room is left for an AMX (tdpbusd) loop of kind "int8".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/cpu.h"

namespace sparsecpu {

// Each loop zeroes its accumulators, then runs `iters` iterations of the instruction on independent
// accumulators (enough to cover latency x issue ports), all inside one asm block the compiler cannot
// hoist or drop: inputs are loop-invariant registers, so intrinsics would let it hoist vpmaddwd.
void peak_f32_fma_x12__avx2(uint64_t iters);
void peak_s8_madd_x8__avx2(uint64_t iters);
void peak_f32_fma_x24__avx512(uint64_t iters);
void peak_s8_madd_x16__avx512(uint64_t iters);
void peak_s8_dpbusd_x24__avx512vnni(uint64_t iters);

struct PeakLoop {
  const char* kind;            // "fp32_fma" or "int8"
  Isa isa;                     // the level whose kernels use this instruction; run only where native
  const char* instruction;     // e.g. "vfmadd231ps ymm"; a pair counts as one step
  double ops_per_instruction;  // per step, in the ops defined above
  int steps_per_iter;          // = accumulators
  uint64_t iters;              // fixed per timed run: ~2 ms on a 3 GHz core at full rate
  void (*run)(uint64_t iters);
};

struct PeakResult {
  const PeakLoop* loop;
  bool available;      // the CPU (and OS) has the level natively
  std::string absent;  // why not, when !available
  double gops;         // 1e9 ops/s of one thread, from the fastest run
  double best_s;       // that run's seconds
};

// Every loop in a fixed order (by kind, then level ascending); the ones the CPU lacks come back
// unavailable with the reason. Each available loop: one untimed warm-up run (clock and AVX-512
// license ramp-up), then `runs` timed runs on the calling thread, the fastest kept.
std::vector<PeakResult> measure_peaks(int runs);

}  // namespace sparsecpu
