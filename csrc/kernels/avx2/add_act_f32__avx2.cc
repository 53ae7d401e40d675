// y = act(y + c), the outlier path's last pass (op add_act_f32), with AVX2.
#include "kernels/avx2/vec256.h"
#include "kernels/epilogue.h"

namespace sparsecpu {

void add_act_f32__avx2(const float* c, float* y, int64_t n, Activation act) {
  add_act_f32<Vec256>(c, y, n, act);
}

}  // namespace sparsecpu
