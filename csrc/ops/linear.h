// The linear op, written once for every front door (pybind11 module, ONNX Runtime custom op):
// y = act(x W^T + b) with W a packed weight: 4x1 block-sparse (int8 or fp32), dense int8 or panel int8,
// optionally followed by a residual add and a LayerNorm over the output channels.
// The kernel is chosen by format and M: dense GEMM; panel SpMM; for BSR (int8 or fp32) the skinny kernel
// (vectorized over channels) when M <= 8, else the SpMM tile (vectorized over rows).
// Front doors describe a call (LinearCall) and run it through a LinearRequest, which checks it.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "core/format.h"
#include "kernels/kernels.h"
#include "ops/request.h"

namespace sparsecpu {

// Another runtime's thread pool to split the work over (ONNX Runtime's intra-op pool): run(n, fn)
// calls fn(t) for every t in [0, n) and returns when all are done; `threads` is how many it runs at once.
struct ParallelFor {
  std::function<void(int, const std::function<void(int)>&)> run;
  int threads = 1;
};

// The activations linear() fuses after the bias, by the names both front doors take: the one
// table of them. gelu is the erf form (torch's F.gelu), gelu_tanh the tanh form.
struct ActivationName {
  const char* name;
  Activation act;
};
inline constexpr ActivationName kActivations[] = {
    {"none", Activation::none}, {"relu", Activation::relu}, {"gelu", Activation::gelu}, {"gelu_tanh", Activation::gelu_tanh}};

// The activation of that name; throws std::invalid_argument naming the accepted ones.
Activation parse_activation(const std::string& name);

// The arguments of one linear call as a front door receives them: x [..., K] and the optional
// bias [N], residual R of the output's shape [..., N] and LayerNorm weight (Scale) / bias (B) [N],
// all float32 and row-major; out, where the caller supplies the output, must have the output's shape.
// activation is a name of kActivations; with norm, y = LayerNorm(act(x W^T + b) + R) with norm_eps.
// raw_s32 is a test hook: y holds the int8 accumulators before the epilogue (no residual, no norm).
struct LinearCall {
  TensorArg x, bias, residual, norm_weight, norm_bias, out;
  std::string activation = "none";
  bool norm = false;
  float norm_eps = 1e-5f;
  bool raw_s32 = false;
};

// What linear() computes: a LinearCall once checked, with its pointers.
struct LinearArgs {
  PackedView w;
  const float* x = nullptr;  // [M][K] row-major
  int64_t M = 0;
  const float* bias = nullptr;  // [N] or null
  Activation act = Activation::none;
  float* y = nullptr;  // [M][N] row-major (int32 bits when raw_s32)
  bool raw_s32 = false;
  const ParallelFor* parallel = nullptr;  // null: sparsecpu's own pool
  // After the activation, per row of y: y += residual ([M][N] row-major, or null), then with norm
  // y = LayerNorm(y) over the N channels, norm_weight / norm_bias ([N], or null for 1 / 0).
  const float* residual = nullptr;
  bool norm = false;
  const float* norm_weight = nullptr;
  const float* norm_bias = nullptr;
  float norm_eps = 1e-5f;
};

// A linear call checked against its weight, ready to run. Each fault of the call throws
// std::invalid_argument with one text, the same from every front door.
class LinearRequest {
 public:
  // Every check of the call.
  LinearRequest(const PackedView& w, const LinearCall& call);

  // The checks that need no x: the activation, norm_eps, the per-channel vectors given, LayerNorm
  // vectors without norm, raw_s32 with a residual or norm. ONNX Runtime runs them on a node's
  // attributes and constant inputs when it creates the kernel.
  static void check_settings(const PackedView& w, const LinearCall& call);

  // The output's dims: x's with the last one N.
  const std::vector<int64_t>& y_dims() const { return y_dims_; }

  // Computes y (row-major, y_dims()) over `parallel` (null: sparsecpu's own pool). Throws
  // std::invalid_argument if x holds NaN or Inf. An int8 weight with an outlier threshold computes
  // the input columns holding |x| > threshold in fp32 (with the dequantized weight) beside the
  // int8 product of the others; raw_s32 then returns the int8 part only.
  void run(float* y, const ParallelFor* parallel = nullptr) const;

 private:
  LinearArgs args_;
  std::vector<int64_t> y_dims_;
};

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
