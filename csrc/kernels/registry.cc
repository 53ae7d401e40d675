#include <atomic>
#include <stdexcept>

#include "kernels/kernels.h"

namespace sparsecpu {

namespace {

// An entry, and after an AVX-512 or AMX one (SPARSECPU_EMULATED_<isa> expands its argument) the emulated build.
#define SPARSECPU_EMULATED_reference(...)
#define SPARSECPU_EMULATED_avx2(...)
#define SPARSECPU_EMULATED_avx512(...) __VA_ARGS__
#define SPARSECPU_EMULATED_avx512_vnni(...) __VA_ARGS__
#define SPARSECPU_EMULATED_amx(...) __VA_ARGS__
#define SPARSECPU_ENTRY(op, isa, name, mr, lanes)                                    \
  {Op::op, Isa::isa, false, #name, reinterpret_cast<void*>(&name), mr, lanes},       \
  SPARSECPU_EMULATED_##isa({Op::op, Isa::isa, true, #name ":emulated",               \
                            reinterpret_cast<void*>(&emulated::name), mr, lanes},)

const KernelEntry kRegistry[] = {
#define SPARSECPU_SPMM(op, isa, name, mr, lanes) SPARSECPU_ENTRY(op, isa, name, mr, lanes)
#define SPARSECPU_QUANT(op, isa, name) SPARSECPU_ENTRY(op, isa, name, 0, 0)
#define SPARSECPU_TRANSPOSE(op, isa, name) SPARSECPU_ENTRY(op, isa, name, 0, 0)
#define SPARSECPU_ROWS(op, isa, name, mr, nr) SPARSECPU_ENTRY(op, isa, name, mr, nr)
#define SPARSECPU_ADD_ACT(op, isa, name) SPARSECPU_ENTRY(op, isa, name, 0, 0)
#define SPARSECPU_ADD_NORM(op, isa, name) SPARSECPU_ENTRY(op, isa, name, 0, 0)
#define SPARSECPU_ATTN(op, isa, name) SPARSECPU_ENTRY(op, isa, name, 0, 0)
#include "kernels/kernels.inc"
#undef SPARSECPU_SPMM
#undef SPARSECPU_QUANT
#undef SPARSECPU_TRANSPOSE
#undef SPARSECPU_ROWS
#undef SPARSECPU_ADD_ACT
#undef SPARSECPU_ADD_NORM
#undef SPARSECPU_ATTN
};

constexpr int kEntries = static_cast<int>(sizeof(kRegistry) / sizeof(kRegistry[0]));
std::atomic<uint64_t> g_calls[kEntries];

int select_index(Op op, Target t) {
  for (int i = 0; i < kEntries; ++i) {
    const KernelEntry& e = kRegistry[i];
    if (e.op != op || static_cast<int>(e.isa) > static_cast<int>(t.isa)) continue;
    if (e.emulated == (t.emulated && emulatable(e.isa))) return i;
  }
  throw std::logic_error("no kernel registered for an op");  // the reference is always listed
}

}  // namespace

const KernelEntry* kernel_registry(int* count) {
  *count = kEntries;
  return kRegistry;
}

const KernelEntry& select_kernel(Op op, Target t) { return kRegistry[select_index(op, t)]; }

const KernelEntry& use_kernel(Op op, Target t) {
  const int i = select_index(op, t);
  g_calls[i].fetch_add(1, std::memory_order_relaxed);
  return kRegistry[i];
}

uint64_t kernel_calls(int index) {
  return index >= 0 && index < kEntries ? g_calls[index].load(std::memory_order_relaxed) : 0;
}

const char* op_name(Op op) {
  switch (op) {
    case Op::spmm_s8: return "spmm_s8";
    case Op::spmm_f32: return "spmm_f32";
    case Op::quant_u8: return "quant_u8";
    case Op::transpose_f32: return "transpose_f32";
    case Op::gemm_s8: return "gemm_s8";
    case Op::spmm_s8_skinny: return "spmm_s8_skinny";
    case Op::quant_u8_rows: return "quant_u8_rows";
    case Op::add_act_f32: return "add_act_f32";
    case Op::spmm_f32_skinny: return "spmm_f32_skinny";
    case Op::add_norm_f32: return "add_norm_f32";
    case Op::attention_f32: return "attention_f32";
    case Op::spmm_panel_s8: return "spmm_panel_s8";
    case Op::attention_bf16: return "attention_bf16";
  }
  return "unknown";
}

}  // namespace sparsecpu
