// Reference kernel for the residual add + LayerNorm pass (op add_norm_f32): plain C++, the specification the
// vector kernels are tested against.
#include "kernels/reference/reference.h"

namespace sparsecpu {

// Two-pass mean and variance in double: the specification the vector kernel is held to.
void add_norm_f32__ref(float* y, const float* r, int64_t rows, int64_t n, const float* gamma, const float* beta,
                       float eps) {
  for (int64_t row = 0; row < rows; ++row) {
    float* t = y + row * n;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      t[i] += r ? r[row * n + i] : 0.0f;
      sum += t[i];
    }
    const double mean = sum / static_cast<double>(n);
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += (t[i] - mean) * (t[i] - mean);
    const double rstd = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
    for (int64_t i = 0; i < n; ++i)
      t[i] = static_cast<float>((t[i] - mean) * rstd * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f));
  }
}

}  // namespace sparsecpu
