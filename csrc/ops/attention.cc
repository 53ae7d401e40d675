#include "ops/attention.h"

#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
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

// Whether a tensor's last dim is contiguous: stride 1, or at most one element.
bool last_contiguous(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides) {
  return dims.back() <= 1 || strides.back() == 1;
}

void check_contiguous_rows(const TensorArg& t, const std::vector<int64_t>& strides, const char* what) {
  if (!last_contiguous(t.dims, strides))
    throw std::invalid_argument(std::string(what) + " must be contiguous in its last dim, got strides " + dims_str(strides));
}

// A float32 4-D tensor of exactly these dims.
bool is_f32_of(const TensorArg& t, const std::vector<int64_t>& dims) { return t.given && t.elem == Elem::f32 && t.dims == dims; }

}  // namespace

void AttentionRequest::check_settings(const AttentionCall& c) {
  if (!std::isfinite(c.scale)) throw std::invalid_argument("scale must be finite, got " + float_str(c.scale));
}

AttentionRequest::AttentionRequest(const AttentionCall& c) : precision_(c.precision) {
  check_settings(c);
  if (!c.q.given || c.q.elem != Elem::f32 || c.q.dims.size() != 4)
    throw std::invalid_argument("q must be a 4-D float32 tensor [B, H, Sq, D], got " + describe(c.q));
  const std::vector<int64_t>& q = c.q.dims;
  const int64_t B = q[0], H = q[1], Sq = q[2], D = q[3];
  // Skv is v's: v is the one of k and v never given transposed.
  const int64_t Skv = c.v.dims.size() == 4 ? c.v.dims[2] : 0;
  if (!is_f32_of(c.v, {B, H, Skv, D}))
    throw std::invalid_argument("v must be a float32 tensor [B, H, Skv, D] = [" + std::to_string(B) + ", " + std::to_string(H) +
                                ", Skv, " + std::to_string(D) + "] to match q " + dims_str(q) + ", got " + describe(c.v));
  const std::vector<int64_t> kdims = c.k_transposed ? std::vector<int64_t>{B, H, D, Skv} : std::vector<int64_t>{B, H, Skv, D};
  if (!is_f32_of(c.k, kdims))
    throw std::invalid_argument(std::string("k must be a float32 tensor ") + (c.k_transposed ? "K^T [B, H, D, Skv] = " : "[B, H, Skv, D] = ") +
                                dims_str(kdims) + " to match q and v, got " + describe(c.k));
  const std::vector<int64_t> qs = c.q.element_strides(), ks = c.k.element_strides(), vs = c.v.element_strides();
  check_contiguous_rows(c.q, qs, "q");
  check_contiguous_rows(c.v, vs, "v");
  p_.B = B, p_.H = H, p_.Sq = Sq, p_.Skv = Skv, p_.D = D;
  p_.scale = c.scale;
  p_.q = static_cast<const float*>(c.q.data), p_.q_sb = qs[0], p_.q_sh = qs[1], p_.q_ss = qs[2];
  p_.k = static_cast<const float*>(c.k.data), p_.k_sb = ks[0], p_.k_sh = ks[1];
  p_.k_ss = c.k_transposed ? ks[3] : ks[2];
  p_.k_sd = c.k_transposed ? ks[2] : ks[3];
  p_.v = static_cast<const float*>(c.v.data), p_.v_sb = vs[0], p_.v_sh = vs[1], p_.v_ss = vs[2];
  if (c.mask.given) {
    const std::vector<int64_t> scores = {B, H, Sq, Skv};
    bool broadcasts = c.mask.elem != Elem::other && c.mask.dims.size() == 4;
    for (size_t i = 0; broadcasts && i < 4; ++i) broadcasts = c.mask.dims[i] == scores[i] || c.mask.dims[i] == 1;
    if (!broadcasts)
      throw std::invalid_argument("mask (M) must be a float32 or bool tensor that broadcasts to the scores [B, H, Sq, Skv] = " +
                                  dims_str(scores) + ", got " + describe(c.mask));
    // A broadcast dim is read at stride 0.
    const std::vector<int64_t> ms = c.mask.element_strides();
    int64_t* mstride[4] = {&p_.m_sb, &p_.m_sh, &p_.m_sq, &p_.m_sk};
    for (size_t i = 0; i < 4; ++i) *mstride[i] = c.mask.dims[i] == 1 ? 0 : ms[i];
    if (c.mask.elem == Elem::boolean) p_.keep = static_cast<const uint8_t*>(c.mask.data);
    else p_.bias = static_cast<const float*>(c.mask.data);
  }
  out_dims_ = q;
}

void AttentionRequest::set_out(const TensorArg& out) {
  if (!is_f32_of(out, out_dims_))
    throw std::invalid_argument("out must be a float32 tensor of q's shape " + dims_str(out_dims_) + ", got " + describe(out));
  const std::vector<int64_t> os = out.element_strides();
  check_contiguous_rows(out, os, "out");
  p_.o = static_cast<float*>(const_cast<void*>(out.data)), p_.o_sb = os[0], p_.o_sh = os[1], p_.o_ss = os[2];
}

void AttentionRequest::run(const ParallelFor* parallel) const {
  const AttnParams& p = p_;
  if (!p.o) throw std::logic_error("AttentionRequest::run needs set_out first");
  const int64_t pairs = p.B * p.H;
  if (pairs == 0 || p.Sq == 0) return;
  const Target t = active_target();
  const bool bf16 = attention_op(precision_, t) == Op::attention_bf16;
  const AttnFn kernel = bf16 ? use_kernel<Op::attention_bf16>(t).fn : use_kernel<Op::attention_f32>(t).fn;
  const int64_t floats = bf16 ? attn_bf16_scratch_floats(p.Skv, p.D) : attn_scratch_floats(p.Skv, p.D);
  // One task per (batch, head) pair, claimed dynamically; a single small head is not worth a wake-up.
  // A pair is 2 Sq Skv D multiply-adds (scores, then P V).
  constexpr int64_t kMinParallelMacs = int64_t(1) << 17;
  if (pairs == 1 || 2 * p.Sq * p.Skv * p.D * pairs < kMinParallelMacs) {
    for (int64_t bh = 0; bh < pairs; ++bh) kernel(p, bh, scratch_of_thread(floats));
    return;
  }
  const std::function<void(int)> task = [&](int bh) { kernel(p, bh, scratch_of_thread(floats)); };
  if (parallel) parallel->run(static_cast<int>(pairs), task);
  else parallel_run(static_cast<int>(pairs), task);
}

AttnPrecision parse_precision(const std::string& name) {
  if (name == "fp32") return AttnPrecision::fp32;
  if (name == "bf16") return AttnPrecision::bf16;
  throw std::invalid_argument("precision must be 'fp32' or 'bf16', got '" + name + "'");
}

const char* attention_kernel_name(AttnPrecision precision) {
  return select_kernel(attention_op(precision, active_target()), active_target()).name;
}

}  // namespace sparsecpu
