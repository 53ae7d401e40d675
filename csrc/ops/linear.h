// The linear op, written once for every front door (pybind11 module, ONNX Runtime custom op):
// y = act(x W^T + b) with W a packed weight: 4x1 block-sparse (int8 or fp32), dense int8 or panel int8,
// optionally followed by a residual add and a LayerNorm over the output channels.
// The kernel is chosen by format and M: dense GEMM; panel SpMM; for BSR (int8 or fp32) the skinny kernel
// (vectorized over channels) when M <= 8, else the SpMM tile (vectorized over rows).
#pragma once
#include <cstdint>
#include <functional>

#include "core/cpu.h"
#include "core/format.h"
#include "kernels/kernels.h"

namespace sparsecpu {

// Another runtime's thread pool to split the work over (ONNX Runtime's intra-op pool): run(n, fn)
// calls fn(t) for every t in [0, n) and returns when all are done; `threads` is how many it runs at once.
struct ParallelFor {
  std::function<void(int, const std::function<void(int)>&)> run;
  int threads = 1;
};

struct LinearArgs {
  PackedView w;
  const float* x = nullptr;  // [M][K] row-major
  int64_t M = 0;
  const float* bias = nullptr;  // [N] or null
  Activation act = Activation::none;
  float* y = nullptr;  // [M][N] row-major (int32 bits when raw_s32)
  bool raw_s32 = false;  // test hook: int8 accumulators before the epilogue (no residual, no norm)
  const ParallelFor* parallel = nullptr;  // null: sparsecpu's own pool
  // After the activation, per row of y: y += residual ([M][N] row-major, or null), then with norm
  // y = LayerNorm(y) over the N channels, norm_weight / norm_bias ([N], or null for 1 / 0).
  const float* residual = nullptr;
  bool norm = false;
  const float* norm_weight = nullptr;
  const float* norm_bias = nullptr;
  float norm_eps = 1e-5f;
};

// Throws std::invalid_argument if x holds NaN or Inf, or for raw_s32 with a residual or norm. An int8 weight with an outlier threshold
// computes the input columns holding |x| > threshold in fp32 (with the dequantized weight) beside
// the int8 product of the others; raw_s32 then returns the int8 part only.
void linear(const LinearArgs& args);

// Active target: the detected best level, capped by SPARSECPU_ISA at start-up or by set_target.
Target active_target();
// Native: caps the level (a level above what the CPU supports caps at the CPU's best). Emulated:
// that AVX-512 level's emulated kernels, on any CPU with AVX2 (else std::invalid_argument).
// Returns the target now in force.
Target set_target(Target want);
// The kernel name linear() will run for `dtype` at the active level.
const char* kernel_name(DType dtype);
// The kernel linear() runs for this weight and M rows at the active level.
const char* kernel_for(const PackedView& w, int64_t M);

}  // namespace sparsecpu
