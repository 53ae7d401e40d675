// Scaled dot-product attention, scalar: the specification the vector kernel is held to (scores,
// softmax and products accumulated in double).
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/kernels.h"

namespace sparsecpu {

void attention_f32__ref(const AttnParams& p, int64_t bh, float* /*scratch*/) {
  const AttnHead head = attn_head(p, bh);
  const float *q = head.q, *k = head.k, *v = head.v;
  float* o = head.o;
  const int64_t m0 = head.mask;
  std::vector<double> s(p.Skv), acc(p.D);
  for (int64_t i = 0; i < p.Sq; ++i) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < p.Skv; ++j) {
      double d = 0.0;
      for (int64_t c = 0; c < p.D; ++c) d += static_cast<double>(q[i * p.q_ss + c]) * k[j * p.k_ss + c * p.k_sd];
      d *= p.scale;
      const int64_t m = m0 + i * p.m_sq + j * p.m_sk;
      if (p.bias) d += p.bias[m];
      if (p.keep && !p.keep[m]) d = -std::numeric_limits<double>::infinity();
      s[j] = d;
      mx = std::max(mx, d);
    }
    std::fill(acc.begin(), acc.end(), 0.0);
    double sum = 0.0;
    if (mx != -std::numeric_limits<double>::infinity()) {
      for (int64_t j = 0; j < p.Skv; ++j) {
        const double e = std::exp(s[j] - mx);
        sum += e;
        for (int64_t c = 0; c < p.D; ++c) acc[c] += e * v[j * p.v_ss + c];
      }
    }
    for (int64_t c = 0; c < p.D; ++c) o[i * p.o_ss + c] = sum > 0.0 ? static_cast<float>(acc[c] / sum) : 0.0f;
  }
}

}  // namespace sparsecpu
