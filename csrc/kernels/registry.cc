#include <stdexcept>

#include "kernels/kernels.h"

namespace sparsecpu {

namespace {
const KernelEntry kRegistry[] = {
#define SPARSECPU_SPMM(op, isa, name, mr, lanes) \
  {Op::op, Isa::isa, #name, reinterpret_cast<void*>(&name), mr, lanes},
#define SPARSECPU_QUANT(op, isa, name) {Op::op, Isa::isa, #name, reinterpret_cast<void*>(&name), 0, 0},
#define SPARSECPU_TRANSPOSE(op, isa, name) {Op::op, Isa::isa, #name, reinterpret_cast<void*>(&name), 0, 0},
#define SPARSECPU_ROWS(op, isa, name, mr, nr) {Op::op, Isa::isa, #name, reinterpret_cast<void*>(&name), mr, nr},
#define SPARSECPU_ADD_ACT(op, isa, name) {Op::op, Isa::isa, #name, reinterpret_cast<void*>(&name), 0, 0},
#define SPARSECPU_ADD_NORM(op, isa, name) {Op::op, Isa::isa, #name, reinterpret_cast<void*>(&name), 0, 0},
#define SPARSECPU_ATTN(op, isa, name) {Op::op, Isa::isa, #name, reinterpret_cast<void*>(&name), 0, 0},
#include "kernels/kernels.inc"
#undef SPARSECPU_SPMM
#undef SPARSECPU_QUANT
#undef SPARSECPU_TRANSPOSE
#undef SPARSECPU_ROWS
#undef SPARSECPU_ADD_ACT
#undef SPARSECPU_ADD_NORM
#undef SPARSECPU_ATTN
};
}  // namespace

const KernelEntry* kernel_registry(int* count) {
  *count = static_cast<int>(sizeof(kRegistry) / sizeof(kRegistry[0]));
  return kRegistry;
}

const KernelEntry& select_kernel(Op op, Isa level) {
  for (const KernelEntry& e : kRegistry) {
    if (e.op == op && static_cast<int>(e.isa) <= static_cast<int>(level)) return e;
  }
  throw std::logic_error("no kernel registered for an op");  // the reference is always listed
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
  }
  return "unknown";
}

}  // namespace sparsecpu
