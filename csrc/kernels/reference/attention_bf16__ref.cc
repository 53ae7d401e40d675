// Scaled dot-product attention at bf16 precision, scalar: the specification the AMX-BF16 kernel is
// held to. Q, K and V are rounded to bf16 (bf16_round); the scores are exact products of those summed
// (here in double), then scaled, masked and softmaxed in full precision; the unnormalized weights
// e_j = exp(s_j - max) are rounded to bf16 and the output is sum_j bf16(e_j) bf16(v_j) / sum_j e_j.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/scalar.h"

namespace sparsecpu {

void attention_bf16__ref(const AttnParams& p, int64_t bh, float* /*scratch*/) {
  const AttnHead head = attn_head(p, bh);
  const auto bf = [](float x) { return static_cast<double>(bf16_value(bf16_round(x))); };
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::vector<double> s(p.Skv), acc(p.D);
  for (int64_t i = 0; i < p.Sq; ++i) {
    double mx = kNegInf;
    for (int64_t j = 0; j < p.Skv; ++j) {
      double d = 0.0;
      for (int64_t c = 0; c < p.D; ++c) d += bf(head.q[i * p.q_ss + c]) * bf(head.k[j * p.k_ss + c * p.k_sd]);
      d = static_cast<double>(static_cast<float>(d) * p.scale);
      const int64_t m = head.mask + i * p.m_sq + j * p.m_sk;
      if (p.bias) d += p.bias[m];
      if (p.keep && !p.keep[m]) d = kNegInf;
      s[j] = d;
      mx = std::max(mx, d);
    }
    std::fill(acc.begin(), acc.end(), 0.0);
    double sum = 0.0;
    if (mx != kNegInf) {
      for (int64_t j = 0; j < p.Skv; ++j) {
        const double e = std::exp(s[j] - mx);
        sum += e;
        const double w = bf(static_cast<float>(e));
        for (int64_t c = 0; c < p.D; ++c) acc[c] += w * bf(head.v[j * p.v_ss + c]);
      }
    }
    for (int64_t c = 0; c < p.D; ++c) head.o[i * p.o_ss + c] = sum > 0.0 ? static_cast<float>(acc[c] / sum) : 0.0f;
  }
}

}  // namespace sparsecpu
