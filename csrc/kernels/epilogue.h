// Vector pieces every kernel's epilogue shares (written once over a vector-traits type, like
// kernels/spmm_4x1.h): activations, the y = act(y + c) pass of the outlier path and the residual
// add + LayerNorm pass. Anonymous namespace for the same reason as there: one copy per ISA object.
#pragma once
#include <cmath>
#include <type_traits>
#include <cstdint>

#include "kernels/kernels.h"
#include "kernels/scalar.h"

namespace sparsecpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Vector math for the epilogue (fp32, ~1e-7 absolute error).

// Runtime choices as template arguments, so that each kernel instantiates its tile loop once per case
// instead of spelling out the switch.
// The epilogue a call asks for: Epilogue<act, false>, or with raw_s32 (the test hook: s32 accumulators,
// no activation) Epilogue<none, true>. with_epilogue(act, raw, f) calls f(Epilogue<...>{}).
template <Activation A, bool R>
struct Epilogue {
  static constexpr Activation kAct = A;
  static constexpr bool kRaw = R;
};
template <class F>
inline void with_epilogue(Activation act, bool raw, F&& f) {
  if (raw) return f(Epilogue<Activation::none, true>{});
  switch (act) {
    case Activation::none: return f(Epilogue<Activation::none, false>{});
    case Activation::relu: return f(Epilogue<Activation::relu, false>{});
    case Activation::gelu: return f(Epilogue<Activation::gelu, false>{});
    case Activation::gelu_tanh: return f(Epilogue<Activation::gelu_tanh, false>{});
  }
}
// f(std::integral_constant<int, r>{}) for a row count r in [1, kMax] (r > kMax: kMax).
template <int kMax, class F>
inline void with_rows(int64_t r, F&& f) {
  if constexpr (kMax > 1) {
    if (r < kMax) return with_rows<kMax - 1>(r, f);
  }
  f(std::integral_constant<int, kMax>{});
}

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

// GELU, erf form: x Phi(x) with Phi(x) = 1 - h for x >= 0 and h for x < 0, where
// h = erfc(|x| / sqrt 2) / 2 = t P(t) exp(-x^2 / 2) / 2, t = 1 / (1 + p |x| / sqrt 2) (Abramowitz &
// Stegun 7.1.26, |error| <= 1.5e-7 in erfc). Taking h for x < 0 (not 1 - (1 - h)) keeps the negative
// tail free of cancellation, and exp(-x^2 / 2) is 2^a built straight from a's integer and fraction.
//   |x| is held at 11.7 (a >= -98.8: 2^a and h stay normal, so no denormal stalls) and x at -20
// (below that x Phi(x) is 0 to fp32; what is left is under 1e-28). Both keep NaN.
template <class V>
inline typename V::F vgelu(typename V::F x) {
  using F = typename V::F;
  x = V::max(V::set1f(-20.0f), x);
  const F ax = V::min(V::set1f(11.7f), V::and_(x, V::asf(V::set1(0x7fffffff))));
  const F t = vrecip<V>(V::fmadd(ax, V::set1f(0.3275911f * 0.70710678118654752f), V::set1f(1.0f)));
  F p = V::set1f(0.5f * 1.061405429f);
  p = V::fmadd(p, t, V::set1f(0.5f * -1.453152027f));
  p = V::fmadd(p, t, V::set1f(0.5f * 1.421413741f));
  p = V::fmadd(p, t, V::set1f(0.5f * -0.284496736f));
  p = V::fmadd(p, t, V::set1f(0.5f * 0.254829592f));
  p = V::mul(p, t);
  // exp(-x^2 / 2) = 2^a, a = -x^2 log2(e) / 2 = n + f, |f| <= 1/2; 2^f by its Taylor series to
  // degree 6 (relative error <= 1.2e-7), 2^n added into the exponent bits.
  const F a = V::mul(V::mul(ax, ax), V::set1f(-0.72134752044448170f));
  const auto n = V::cvt_round(a);
  const F f = V::sub(a, V::cvt(n));
  F e = V::set1f(1.5403530393381609e-4f);
  e = V::fmadd(e, f, V::set1f(1.3333558146428443e-3f));
  e = V::fmadd(e, f, V::set1f(9.6181291076284772e-3f));
  e = V::fmadd(e, f, V::set1f(5.5504108664821580e-2f));
  e = V::fmadd(e, f, V::set1f(2.4022650695910071e-1f));
  e = V::fmadd(e, f, V::set1f(6.9314718055994531e-1f));
  e = V::fmadd(e, f, V::set1f(1.0f));
  e = V::asf(V::add32(V::asi(e), V::slli32(n, 23)));
  const F h = V::mul(p, e);
  return V::mul(x, V::select_neg(V::sub(V::set1f(1.0f), h), h, x));
}

template <class V>
inline typename V::F vactivate(typename V::F v, Activation act) {
  using F = typename V::F;
  switch (act) {
    case Activation::none: return v;
    case Activation::relu: return V::max(v, V::zerof());
    case Activation::gelu: return vgelu<V>(v);
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

// Residual add + LayerNorm of whole rows (AddNormFn): three passes over a row that stays in L1
// (t = y + r stored back, with its sum; the sum of squared deviations; the affine output), four
// vectors at a time into four accumulators so that the adds do not wait on one another.
template <class V>
void add_norm_f32(float* y, const float* r, int64_t rows, int64_t n, const float* gamma, const float* beta, float eps) {
  using F = typename V::F;
  constexpr int L = V::kLanes;
  const int64_t n4 = n / (4 * L) * (4 * L), n1 = n / L * L;
  auto total = [](const F a[4]) { return V::hsum(V::add(V::add(a[0], a[1]), V::add(a[2], a[3]))); };
  for (int64_t row = 0; row < rows; ++row) {
    float* t = y + row * n;
    const float* rr = r ? r + row * n : nullptr;
    auto sum_at = [&](int64_t i) {
      const F v = rr ? V::add(V::loadf(t + i), V::loadf(rr + i)) : V::loadf(t + i);
      V::storef(t + i, v);
      return v;
    };
    F acc[4] = {V::zerof(), V::zerof(), V::zerof(), V::zerof()};
    int64_t i = 0;
    for (; i < n4; i += 4 * L) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[j] = V::add(acc[j], sum_at(i + j * L));
    }
    for (; i < n1; i += L) acc[0] = V::add(acc[0], sum_at(i));
    float sum = total(acc);
    for (; i < n; ++i) {
      t[i] += rr ? rr[i] : 0.0f;
      sum += t[i];
    }
    const float mean = sum / static_cast<float>(n);
    const F vmean = V::set1f(mean);
    auto sq_at = [&](int64_t i, F a) {
      const F d = V::sub(V::loadf(t + i), vmean);
      return V::fmadd(d, d, a);
    };
    for (auto& a : acc) a = V::zerof();
    for (i = 0; i < n4; i += 4 * L) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[j] = sq_at(i + j * L, acc[j]);
    }
    for (; i < n1; i += L) acc[0] = sq_at(i, acc[0]);
    float ss = total(acc);
    for (; i < n; ++i) ss += (t[i] - mean) * (t[i] - mean);
    const float rstd = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    const F vrstd = V::set1f(rstd), one = V::set1f(1.0f), zero = V::zerof();
    for (i = 0; i < n1; i += L) {
      const F g = gamma ? V::loadf(gamma + i) : one;
      const F b = beta ? V::loadf(beta + i) : zero;
      V::storef(t + i, V::fmadd(V::mul(V::sub(V::loadf(t + i), vmean), vrstd), g, b));
    }
    for (; i < n; ++i) t[i] = (t[i] - mean) * rstd * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f);
  }
}

}  // namespace
}  // namespace sparsecpu
