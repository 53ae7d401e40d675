// Driver of the peak loops (baseline x86-64: the loops live in their per-ISA sources).
#include "bench/peak.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

namespace sparsecpu {

namespace {

// By kind, then level ascending: the last available loop of a kind is its best native level.
// Iterations: ~2 ms per run on a 3 GHz core issuing 2 steps per cycle, shorter than a scheduler time
// slice, so that on a busy machine the fastest of many runs is one that nothing preempted.
const PeakLoop kLoops[] = {
    {"fp32_fma", Isa::avx2, "vfmadd231ps ymm", 16, 12, uint64_t{1} << 20, peak_f32_fma_x12__avx2},
    {"fp32_fma", Isa::avx512, "vfmadd231ps zmm", 32, 24, uint64_t{1} << 19, peak_f32_fma_x24__avx512},
    {"int8", Isa::avx2, "vpmaddwd + vpaddd ymm", 32, 8, uint64_t{1} << 20, peak_s8_madd_x8__avx2},
    {"int8", Isa::avx512, "vpmaddwd + vpaddd zmm", 64, 16, uint64_t{1} << 19, peak_s8_madd_x16__avx512},
    {"int8", Isa::avx512_vnni, "vpdpbusd zmm", 128, 24, uint64_t{1} << 19, peak_s8_dpbusd_x24__avx512vnni},
};

double seconds_of(const PeakLoop& loop) {
  const auto t0 = std::chrono::steady_clock::now();
  loop.run(loop.iters);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<PeakResult> measure_peaks(int runs) {
  if (runs < 1) throw std::invalid_argument("runs must be >= 1, got " + std::to_string(runs));
  const Isa best = cpu_info().best;
  std::vector<PeakResult> out;
  for (const PeakLoop& loop : kLoops) {
    PeakResult r{&loop, static_cast<int>(best) >= static_cast<int>(loop.isa), "", 0.0, 0.0};
    if (!r.available) {
      // Emulated levels exist for tests, but their speed says nothing about the machine.
      r.absent = std::string("no ") + isa_name(loop.isa) + " on this CPU (detected: " + isa_name(best) + ")";
      out.push_back(r);
      continue;
    }
    seconds_of(loop);  // warm-up: clock ramp, AVX-512 license, first-touch of the code
    double t = seconds_of(loop);
    for (int i = 1; i < runs; ++i) t = std::min(t, seconds_of(loop));
    r.best_s = t;
    r.gops = static_cast<double>(loop.iters) * loop.steps_per_iter * loop.ops_per_instruction / t / 1e9;
    out.push_back(r);
  }
  return out;
}

}  // namespace sparsecpu
