// Scalar definitions every ISA shares: the quantization parameters of a row (must be bit-identical
// across kernels) and the activations of the reference epilogue. Kept in an anonymous namespace:
// each ISA object gets its own copy, so no AVX-512 code can be picked by the linker for a
// baseline caller.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/kernels.h"

namespace sparsecpu {
namespace {

struct RowQParams {
  float scale;
  float inv;
  int32_t zp;
};

// Asymmetric u8 over [min(mn, 0), max(mx, 0)], so that 0 is exact. Division before subtraction
// keeps the range finite for rows near FLT_MAX.
inline RowQParams row_qparams(float mn, float mx) {
  mn = std::min(mn, 0.0f);
  mx = std::max(mx, 0.0f);
  float scale = mx / 255.0f - mn / 255.0f;
  if (!(scale >= 1e-30f)) scale = 1.0f;  // all-zero (or denormal) row
  const float inv = 1.0f / scale;
  float zp = std::nearbyint(-mn * inv);
  zp = std::min(255.0f, std::max(0.0f, zp));
  return {scale, inv, static_cast<int32_t>(zp)};
}

// Clamped in float before the conversion, so that a NaN or Inf x (a row the op then rejects) converts
// to 0 or 255 rather than being undefined; finite rows get what an int32 clamp gives.
inline uint8_t quantize_u8(float x, const RowQParams& q) {
  const float v = std::nearbyint(x * q.inv) + static_cast<float>(q.zp);
  return static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, v)));
}

inline float activate_scalar(float v, Activation act) {
  switch (act) {
    case Activation::none: return v;
    case Activation::relu: return v > 0.0f ? v : 0.0f;
    case Activation::gelu: return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    case Activation::gelu_tanh: {
      const float u = 0.79788456080286536f * (v + 0.044715f * v * v * v);
      return 0.5f * v * (1.0f + std::tanh(u));
    }
  }
  return v;
}

// The int8 epilogue of one output: s32 accumulator -> fp32 (zero-point term, act scale x channel
// scale, bias, activation). Wrapping int32 arithmetic, like the vector kernels: the true value fits
// (see format.h).
inline float dequant_scalar(int32_t acc, int32_t x_zp, int32_t w_sum, float x_scale, float w_scale, float bias,
                            Activation act) {
  const int32_t centered =
      static_cast<int32_t>(static_cast<uint32_t>(acc) - static_cast<uint32_t>(x_zp) * static_cast<uint32_t>(w_sum));
  return activate_scalar(static_cast<float>(centered) * (x_scale * w_scale) + bias, act);
}

// fp32 -> bf16 as AVX512-BF16's vcvtneps2bf16 rounds: to nearest even, denormals to signed zero, NaN
// to a quiet NaN. The bf16 attention (op attention_bf16) rounds Q, K, V and the softmax weights this way.
inline uint16_t bf16_round(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  if ((bits & 0x7F800000u) == 0) return static_cast<uint16_t>((bits >> 16) & 0x8000);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float bf16_value(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace
}  // namespace sparsecpu
