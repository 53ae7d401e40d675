// Reference kernel for y = act(y + c), the outlier path's last pass (op add_act_f32): plain C++, the
// specification the vector kernels are tested against.
#include "kernels/reference/reference.h"

namespace sparsecpu {

void add_act_f32__ref(const float* c, float* y, int64_t n, Activation act) {
  for (int64_t i = 0; i < n; ++i) y[i] = activate_scalar(y[i] + c[i], act);
}

}  // namespace sparsecpu
