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

Op attention_op(AttnPrecision precision, Target t) {
  if (precision == AttnPrecision::bf16 && select_kernel(Op::attention_bf16, t).isa == t.isa) return Op::attention_bf16;
  return Op::attention_f32;
}

}  // namespace

void attention(const AttnParams& p, const ParallelFor* parallel, AttnPrecision precision) {
  const int64_t pairs = p.B * p.H;
  if (pairs == 0 || p.Sq == 0) return;
  const Target t = active_target();
  const bool bf16 = attention_op(precision, t) == Op::attention_bf16;
  const AttnFn kernel = bf16 ? use_kernel<Op::attention_bf16>(t).fn : use_kernel<Op::attention_f32>(t).fn;
  const int64_t floats = bf16 ? attn_bf16_scratch_floats(p.Skv, p.D) : attn_scratch_floats(p.Skv, p.D);
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

const char* attention_kernel_name(AttnPrecision precision) {
  return select_kernel(attention_op(precision, active_target()), active_target()).name;
}

}  // namespace sparsecpu
