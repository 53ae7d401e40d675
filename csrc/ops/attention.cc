#include "ops/attention.h"

#include <functional>
#include <vector>

#include "core/threadpool.h"
#include "ops/linear.h"

namespace sparsecpu {

namespace {

float* scratch_of_thread(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats) buf.resize(floats);
  return buf.data();
}

}  // namespace

void attention(const AttnParams& p, const ParallelFor* parallel) {
  const int64_t pairs = p.B * p.H;
  if (pairs == 0 || p.Sq == 0) return;
  const auto kernel = use_kernel<Op::attention_f32>(active_target()).fn;
  const int64_t floats = attn_scratch_floats(p.Skv, p.D);
  // One task per (batch, head) pair, claimed dynamically; a single small head is not worth a wake-up.
  constexpr int64_t kMinParallelFlops = int64_t(1) << 18;
  if (pairs == 1 || 4 * p.Sq * p.Skv * p.D * pairs < kMinParallelFlops) {
    for (int64_t bh = 0; bh < pairs; ++bh) kernel(p, bh, scratch_of_thread(floats));
    return;
  }
  const std::function<void(int)> task = [&](int bh) { kernel(p, bh, scratch_of_thread(floats)); };
  if (parallel) parallel->run(static_cast<int>(pairs), task);
  else parallel_run(static_cast<int>(pairs), task);
}

const char* attention_kernel_name() { return select_kernel(Op::attention_f32, active_target()).name; }

}  // namespace sparsecpu
