// Micro-kernel contract. A kernel sees raw pointers and one tile loop; ops/ owns validation,
// scratch memory, tiling and threads. Each op has one function-pointer type (SpmmFn, RowFn, ... below;
// the ops: kernels/ops.inc), and every kernel is registered in kernels/kernels.inc under a name that
// spells its register tile rows first, <what>_<rows>x<channels>__<isa> (rows of x by output channels,
// XNNPACK's MRxNR): spmm_4x1_s8_64x4__avx512vnni accumulates 64 rows x 4 channels in zmm registers.
#pragma once
#include <cstdint>
#include <type_traits>

#include "core/cpu.h"
#include "core/format.h"

namespace sparsecpu {

enum class Activation : int { none = 0, relu = 1, gelu = 2, gelu_tanh = 3 };

// Activations are stored K-major for the SpMM kernels: row k holds x[m0.., k] for a tile of
// `mr` rows of x. A kernel with vectors of V 32-bit lanes holds a tile in S = mr / V vectors per
// channel; lane (j, i) (j = 128-bit lane, i = 0..3) of the s-th vector is row
// m = 4 S j + 4 s + i  (int8: the unpack order of the VNNI gather) or  m = V s + 4 j + i  (fp32:
// plain loads). Per-row quantization parameters are handed over in the int8 order ("slab
// order"), see slab_order_index().
struct SpmmParams {
  PackedView w;
  const void* xk;          // uint8 (int8 kernels) or float (fp32 kernels), [K][ldk]
  int64_t ldk;             // elements per K row; a multiple of 64
  const float* x_scale;    // int8: per-row scale, slab order, [ldk]
  const int32_t* x_zp;     // int8: per-row zero point, slab order, [ldk]
  const float* bias;       // [4 * groups] (zero padded) or null
  float* y;                // [M][ldy] row-major; int32 bits when raw_s32
  int64_t ldy;
  int64_t M, N;
  Activation act;
  bool raw_s32;            // test hook: store the s32 accumulators, no epilogue
  uint64_t prefetch;       // prefetch the activation rows of the block this far ahead (0: off)
};

// Computes output channels of groups [g0, g1) for rows [m0, m0 + mr) (stores only rows < M).
using SpmmFn = void (*)(const SpmmParams& p, int64_t g0, int64_t g1, int64_t m0);

// Kernels that read the activations row-major (dense GEMM, skinny-M SpMM). int8: u8 x [M][ldx], ldx
// a multiple of 64 (an AMX tile reads whole 64-byte rows) whose columns >= K are zero; per-row
// quantization parameters in row order.
// fp32 (skinny SpMM): x itself, [M][ldx] with ldx >= K; xq and the quantization parameters unused.
struct RowParams {
  PackedView w;
  const uint8_t* xq;
  const float* xf;
  int64_t ldx;
  const float* x_scale;    // [M]
  const int32_t* x_zp;     // [M]
  const float* bias;       // zero padded to the kernel's channel tile (16 * panels or 4 * groups), or null
  float* y;                // [M][ldy] row-major; int32 bits when raw_s32
  int64_t ldy;
  int64_t M, N;
  Activation act;
  bool raw_s32;            // test hook: store the s32 accumulators, no epilogue
  bool stream_weights;     // dense: the weight is too large for the caches, prefetch it (a hint only)
};

// Dense GEMM and panel SpMM (the panel format): channel panels [c0, c1) (16 channels each) for rows [m0, m1).
// Skinny SpMM (int8 and fp32): channel groups [c0, c1) (4 channels each) for rows [m0, m1), m1 - m0 <= 8.
using RowFn = void (*)(const RowParams& p, int64_t c0, int64_t c1, int64_t m0, int64_t m1);

// Dynamic per-row asymmetric u8 quantization, written K-major: rows [m0, m1) of x [M][K]
// (m0 % 16 == 0, m1 % 16 == 0; rows >= M are written as zeros with scale 1, zero point 0).
// absmax (may be null) receives max |x| of each row (0 for rows >= M): the outlier check.
// Returns false if that part of x holds NaN or Inf.
using QuantFn = bool (*)(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, uint8_t* xq,
                         int64_t ldq, float* scale, int32_t* zp, float* absmax);
// Op quant_u8_rows has the same signature: the same quantization written row-major, rows [m0, m1)
// (all < M) to xq + m * ldq, columns [K, ldq) zero (ldq >= K, a multiple of 4).
// y[i] = act(y[i] + c[i]) for i < n.
using AddActFn = void (*)(const float* c, float* y, int64_t n, Activation act);
// Rows [0, rows) of y [rows][n] (and of r, if not null) become
// LayerNorm(y + r) = (t - mean(t)) / sqrt(var(t) + eps) * gamma + beta with t = y + r, per row; the
// variance is the biased one (as torch's), gamma / beta null mean 1 / 0.
using AddNormFn = void (*)(float* y, const float* r, int64_t rows, int64_t n, const float* gamma, const float* beta,
                           float eps);
// Same contract for fp32: x transposed to K-major, rows >= M zero.
using TransposeFn = bool (*)(const float* x, int64_t M, int64_t K, int64_t m0, int64_t m1, float* xt,
                             int64_t ldt);

// Scaled dot-product attention of one (batch, head) pair: O = softmax(scale Q K^T + mask) V over
// the Skv keys, per query row. Q, K, V, O are fp32 with any strides (in elements); the last dim (D)
// is contiguous in Q, V and O, and K's D stride is k_sd (1, or Skv-contiguous keys: K given as K^T). The mask is optional and broadcast by zero strides: additive (bias) or
// boolean (keep: nonzero = attend). A query row with no key to attend to gets zeros.
struct AttnParams {
  const float* q;
  const float* k;
  const float* v;
  float* o;
  int64_t B, H, Sq, Skv, D;
  int64_t q_sb, q_sh, q_ss;
  int64_t k_sb, k_sh, k_ss, k_sd;
  int64_t v_sb, v_sh, v_ss;
  int64_t o_sb, o_sh, o_ss;
  float scale;
  const float* bias;      // [B][H][Sq][Skv] by the m_ strides, or null
  const uint8_t* keep;    // same indexing, or null (at most one of bias / keep)
  int64_t m_sb, m_sh, m_sq, m_sk;
};

// Pair bh's slices of Q, K, V and O, and its offset into the mask.
struct AttnHead {
  const float* q;
  const float* k;
  const float* v;
  float* o;
  int64_t mask;
};
// The inline helpers of this header sit in anonymous namespaces: the kernel sources of every ISA level
// include it, compiled with different -m flags, and one shared (weak) copy could carry AVX-512 code into
// an AVX2 kernel. See kernels/amx/tile.h.
namespace {
inline AttnHead attn_head(const AttnParams& p, int64_t bh) {
  const int64_t b = bh / p.H, h = bh % p.H;
  return {p.q + b * p.q_sb + h * p.q_sh, p.k + b * p.k_sb + h * p.k_sh, p.v + b * p.v_sb + h * p.v_sh,
          p.o + b * p.o_sb + h * p.o_sh, b * p.m_sb + h * p.m_sh};
}

// Floats of scratch an attention kernel needs per call (one (batch, head) pair at a time).
inline int64_t attn_scratch_floats(int64_t Skv, int64_t D) {
  const int64_t skv = (Skv + 15) / 16 * 16;
  return (D + 8) * skv + 16;
}
// Op attention_bf16 is the same product at bf16 precision (Q, K, V and the softmax weights rounded to
// bf16, products summed in fp32: reference/attention_bf16__ref.cc), for AMX-BF16; its scratch:
inline int64_t attn_bf16_scratch_floats(int64_t Skv, int64_t D) {
  const int64_t skv = (Skv + 31) / 32 * 32, d32 = (D + 31) / 32 * 32, dv = (D + 15) / 16 * 16;
  return d32 / 2 * skv + skv / 2 * dv + 8 * d32 + 24 * skv + 16 * dv;
}
}  // namespace
// Computes pair bh = b * H + h; scratch holds attn_scratch_floats(Skv, D) (attention_f32) or
// attn_bf16_scratch_floats(Skv, D) (attention_bf16) floats, 64-byte aligned.
using AttnFn = void (*)(const AttnParams& p, int64_t bh, float* scratch);

// Position of row m (0 <= m < mr) of an mr-row tile in slab order, for a kernel with `lanes`-lane vectors.
namespace {
inline int64_t slab_order_index(int64_t m, int mr, int lanes) {
  const int64_t span = 4 * (mr / lanes);  // rows covered by one 128-bit lane across the slabs
  const int64_t j = m / span, s = (m % span) / 4, i = m % 4;
  return s * lanes + 4 * j + i;
}
}  // namespace

// The ops and their kernels' function-pointer types, listed once in kernels/ops.inc: the enum, kAllOps,
// OpTraits and op_name() are generated from it, and _C.kernel_ops() hands it to the tests.
enum class Op : int {
#define SPARSECPU_OP(op, FnType) op,
#include "kernels/ops.inc"
#undef SPARSECPU_OP
};
constexpr Op kAllOps[] = {
#define SPARSECPU_OP(op, FnType) Op::op,
#include "kernels/ops.inc"
#undef SPARSECPU_OP
};
const char* op_name(Op op);

// OpTraits<op>::Fn: the function-pointer type of op's kernels.
template <Op kOp>
struct OpTraits;
#define SPARSECPU_OP(op, FnType) \
  template <>                    \
  struct OpTraits<Op::op> {      \
    using Fn = FnType;           \
  };
#include "kernels/ops.inc"
#undef SPARSECPU_OP

// What the registry says of a kernel, whatever its op.
struct KernelInfo {
  Op op;
  Isa isa;          // lowest level the kernel needs
  bool emulated;    // the emulated build of an AVX-512 / AMX kernel (runs on AVX2); name ends in ":emulated"
  const char* name;
  // The register tile the name spells (kernels.inc): rows of x (M) by output channels (N), attention: query
  // rows by output columns; 0 x 0 for a kernel without one. For the SpMM ops it is also a call's tile (rows
  // [m0, m0 + rows) of each group of 4 channels), so their references list the 16 x 4 they stand in for.
  int rows;
  int channels;
  // SpMM ops: 32-bit lanes per vector, which fix the slab order of the per-row quantization parameters
  // (slab_order_index); 0 for the other ops.
  int lanes;
};

// A kernel's function with its op's type erased: registry.cc stores only functions of type OpTraits<op>::Fn
// (checked as it compiles), and select_kernel<op> / use_kernel<op> give them back at that type.
using ErasedKernelFn = void (*)();
struct KernelEntry : KernelInfo {
  ErasedKernelFn fn;
};

// A registry entry with its function typed: what dispatch calls, no cast at the call site.
template <class Fn>
struct Kernel : KernelInfo {
  Fn fn;
};
template <Op kOp>
using KernelOf = Kernel<typename OpTraits<kOp>::Fn>;

// Every kernel, best first within an op, the reference last; each AVX-512 and AMX kernel is followed by
// its emulated build. Dispatch, tests and the benchmark all read this list.
const KernelEntry* kernel_registry(int* count);
// The best kernel of `op` for target `t` (the first entry at or below its level): at an emulated target
// the AVX-512 and AMX kernels are the emulated builds, the ones below AVX-512 native. Untyped: for its name.
const KernelEntry& select_kernel(Op op, Target t);
// Calls counted by use_kernel, per registry entry (same order), since the library was loaded.
uint64_t kernel_calls(int index);

namespace detail {
// select_kernel, counted for kernel_calls: use_kernel<op> is the way in.
const KernelEntry& use_entry(Op op, Target t);
template <Op kOp>
KernelOf<kOp> typed(const KernelEntry& e) {
  // The one cast back: e's function was stored from exactly this type (registry.cc, erase<op>).
  return {e, reinterpret_cast<typename OpTraits<kOp>::Fn>(e.fn)};
}
}  // namespace detail

// select_kernel(kOp, t), typed.
template <Op kOp>
KernelOf<kOp> select_kernel(Target t) {
  return detail::typed<kOp>(select_kernel(kOp, t));
}
// select_kernel<kOp> for a call that is about to run the kernel: counted per entry, so that the tests can
// check that every registered kernel was run (kernel_calls).
template <Op kOp>
KernelOf<kOp> use_kernel(Target t) {
  return detail::typed<kOp>(detail::use_entry(kOp, t));
}

// Declarations of the kernels, generated from the list, each with its op's function type.
template <Op kOp>
using KernelSig = std::remove_pointer_t<typename OpTraits<kOp>::Fn>;
#define SPARSECPU_KERNEL(op, isa, name, rows, channels, lanes) KernelSig<Op::op> name;
#include "kernels/kernels.inc"
// The emulated builds of the AVX-512 and AMX kernels (declared for every name; defined for those only).
namespace emulated {
#include "kernels/kernels.inc"
}  // namespace emulated
#undef SPARSECPU_KERNEL

}  // namespace sparsecpu
