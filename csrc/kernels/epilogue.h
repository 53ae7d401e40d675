// Vector pieces every kernel's epilogue shares (written once over a vector-traits type, like
// kernels/spmm_4x1.h): activations and the y = act(y + c) pass of the outlier path. Anonymous
// namespace for the same reason as there: one copy per ISA object.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"
#include "kernels/scalar.h"

namespace sparsecpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Vector math for the epilogue (fp32, ~1e-7 absolute error).

template <class V>
inline typename V::F vexp(typename V::F x) {
  using F = typename V::F;
  // Clamped so that n + 127 stays a normal exponent.
  x = V::min(V::max(x, V::set1f(-87.0f)), V::set1f(88.0f));
  const auto n_i = V::cvt_round(V::mul(x, V::set1f(1.44269504088896341f)));
  const F n = V::cvt(n_i);
  F r = V::fmadd(n, V::set1f(-0.693359375f), x);  // Cody-Waite: ln2 = hi + lo
  r = V::fmadd(n, V::set1f(2.12194440e-4f), r);
  F p = V::set1f(1.0f / 720.0f);
  p = V::fmadd(p, r, V::set1f(1.0f / 120.0f));
  p = V::fmadd(p, r, V::set1f(1.0f / 24.0f));
  p = V::fmadd(p, r, V::set1f(1.0f / 6.0f));
  p = V::fmadd(p, r, V::set1f(0.5f));
  p = V::fmadd(p, r, V::set1f(1.0f));
  p = V::fmadd(p, r, V::set1f(1.0f));
  return V::mul(p, V::asf(V::slli32(V::add32(n_i, V::set1(127)), 23)));
}

// 1 / d for normal d: the estimate and one Newton step (relative error ~1e-7, a third of the cost of a
// divide, which throughput-bounds the GELU epilogue of the wide layers).
template <class V>
inline typename V::F vrecip(typename V::F d) {
  const typename V::F r = V::rcp(d);
  return V::fmadd(V::fnmadd(d, r, V::set1f(1.0f)), r, r);
}

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).
template <class V>
inline typename V::F verf(typename V::F x) {
  using F = typename V::F;
  const F sign = V::and_(x, V::asf(V::set1(static_cast<int32_t>(0x80000000u))));
  // Clamped where erf is 1 in fp32 (|x| > 3.92): keeps exp(-x^2) and the product below normal
  // (denormal multiplies go through a slow microcode path).
  const F ax = V::min(V::xor_(x, sign), V::set1f(4.0f));
  const F t = vrecip<V>(V::fmadd(ax, V::set1f(0.3275911f), V::set1f(1.0f)));
  F p = V::set1f(1.061405429f);
  p = V::fmadd(p, t, V::set1f(-1.453152027f));
  p = V::fmadd(p, t, V::set1f(1.421413741f));
  p = V::fmadd(p, t, V::set1f(-0.284496736f));
  p = V::fmadd(p, t, V::set1f(0.254829592f));
  p = V::mul(p, t);
  const F e = vexp<V>(V::xor_(V::mul(ax, ax), V::set1f(-0.0f)));
  const F y = V::sub(V::set1f(1.0f), V::mul(p, e));
  return V::xor_(y, sign);
}

template <class V>
inline typename V::F vactivate(typename V::F v, Activation act) {
  using F = typename V::F;
  switch (act) {
    case Activation::none: return v;
    case Activation::relu: return V::max(v, V::zerof());
    case Activation::gelu: {
      const F e = verf<V>(V::mul(v, V::set1f(0.70710678118654752f)));
      return V::mul(V::mul(V::set1f(0.5f), v), V::add(V::set1f(1.0f), e));
    }
    case Activation::gelu_tanh: {
      // 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)): no cancellation for negative v. exp is clamped at
      // e^80, so that the reciprocal stays normal (at most ~1e-34 off a result that is 0 to fp32).
      const F v3 = V::mul(V::mul(v, v), v);
      const F u2 = V::mul(V::set1f(-2.0f * 0.79788456080286536f), V::fmadd(v3, V::set1f(0.044715f), v));
      return V::mul(v, vrecip<V>(V::add(vexp<V>(V::min(u2, V::set1f(80.0f))), V::set1f(1.0f))));
    }
  }
  return v;
}

// y[i] = act(y[i] + c[i]) for i < n (the outlier path adds its fp32 columns before the activation).
template <class V>
void add_act_f32(const float* c, float* y, int64_t n, Activation act) {
  int64_t i = 0;
  for (; i + V::kLanes <= n; i += V::kLanes) V::storef(y + i, vactivate<V>(V::add(V::loadf(y + i), V::loadf(c + i)), act));
  for (; i < n; ++i) y[i] = activate_scalar(y[i] + c[i], act);
}

}  // namespace
}  // namespace sparsecpu
