// y = act(y + c), the outlier path's last pass (op add_act_f32), with AVX-512.
#include "kernels/avx512/vec512.h"
#include "kernels/epilogue.h"

namespace sparsecpu {

SPARSECPU_KERNELS_BEGIN
void add_act_f32__avx512(const float* c, float* y, int64_t n, Activation act) {
  add_act_f32<Vec512>(c, y, n, act);
}
SPARSECPU_KERNELS_END

}  // namespace sparsecpu
