#include <atomic>
#include <iterator>
#include <stdexcept>

#include "kernels/kernels.h"

namespace sparsecpu {

namespace {

// A kernel function, its type checked against its op's here (a mismatch does not compile), then erased.
template <Op kOp>
ErasedKernelFn erase(typename OpTraits<kOp>::Fn fn) {
  return reinterpret_cast<ErasedKernelFn>(fn);
}

// An entry, and after an AVX-512 or AMX one (SPARSECPU_EMULATED_<isa> expands its argument) the emulated build.
#define SPARSECPU_EMULATED_reference(...)
#define SPARSECPU_EMULATED_avx2(...)
#define SPARSECPU_EMULATED_avx512(...) __VA_ARGS__
#define SPARSECPU_EMULATED_avx512_vnni(...) __VA_ARGS__
#define SPARSECPU_EMULATED_amx(...) __VA_ARGS__
#define SPARSECPU_KERNEL(op, isa, name, rows, channels, lanes)                                          \
  {{Op::op, Isa::isa, false, #name, rows, channels, lanes}, erase<Op::op>(&name)},                        \
  SPARSECPU_EMULATED_##isa({{Op::op, Isa::isa, true, #name ":emulated", rows, channels, lanes},          \
                            erase<Op::op>(&emulated::name)},)

const KernelEntry kRegistry[] = {
#include "kernels/kernels.inc"
};
#undef SPARSECPU_KERNEL

constexpr int kEntries = static_cast<int>(std::size(kRegistry));
std::atomic<uint64_t> g_calls[kEntries];

int select_index(Op op, Target t) {
  for (int i = 0; i < kEntries; ++i) {
    const KernelEntry& e = kRegistry[i];
    if (e.op != op || static_cast<int>(e.isa) > static_cast<int>(t.isa)) continue;
    if (e.emulated == (t.emulated && emulatable(e.isa))) return i;
  }
  throw std::logic_error("no kernel registered for an op");  // the reference is always listed
}

constexpr const char* kOpNames[] = {
#define SPARSECPU_OP(op, FnType) #op,
#include "kernels/ops.inc"
#undef SPARSECPU_OP
};

}  // namespace

const KernelEntry* kernel_registry(int* count) {
  *count = kEntries;
  return kRegistry;
}

const KernelEntry& select_kernel(Op op, Target t) { return kRegistry[select_index(op, t)]; }

namespace detail {
const KernelEntry& use_entry(Op op, Target t) {
  const int i = select_index(op, t);
  g_calls[i].fetch_add(1, std::memory_order_relaxed);
  return kRegistry[i];
}
}  // namespace detail

uint64_t kernel_calls(int index) {
  return index >= 0 && index < kEntries ? g_calls[index].load(std::memory_order_relaxed) : 0;
}

const char* op_name(Op op) {
  const int i = static_cast<int>(op);
  return i >= 0 && i < static_cast<int>(std::size(kOpNames)) ? kOpNames[i] : "unknown";
}

}  // namespace sparsecpu
