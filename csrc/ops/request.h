// What the front doors (pybind11 module, ONNX Runtime custom op) hand to an op's request: each tensor
// argument described plainly, before anything checks it. The requests (LinearRequest in ops/linear.h,
// AttentionRequest in ops/attention.h) check these descriptions once for both doors, so a fault gets
// the same error text from Python and from ONNX Runtime.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace sparsecpu {

// Element types a door can meet; the ops take float32 (and bool for an attention mask).
enum class Elem { f32, boolean, other };

// One tensor argument: whether it was given, its element type, dims, strides (in elements; empty
// means row-major) and data. The data is only read once the request holding it has been checked.
struct TensorArg {
  bool given = false;
  Elem elem = Elem::f32;
  std::vector<int64_t> dims;
  std::vector<int64_t> strides;
  const void* data = nullptr;

  static TensorArg of(const void* data, std::vector<int64_t> dims, Elem elem = Elem::f32,
                      std::vector<int64_t> strides = {}) {
    return {true, elem, std::move(dims), std::move(strides), data};
  }
  // Element strides, the given ones or row-major.
  std::vector<int64_t> element_strides() const {
    if (!strides.empty()) return strides;
    std::vector<int64_t> s(dims.size(), 1);
    for (size_t i = dims.size(); i-- > 1;) s[i - 1] = s[i] * dims[i];
    return s;
  }
};

// "[2, 3, 5]": dims as error texts print them.
inline std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// An argument as an error text shows it: its dims, and its element type unless float32.
inline std::string describe(const TensorArg& t) {
  if (!t.given) return "none";
  const char* type = t.elem == Elem::f32 ? "" : t.elem == Elem::boolean ? " of bool" : " of another element type";
  return dims_str(t.dims) + type;
}

// A float as an error text shows it ("-1", "1e-05", "nan", "inf").
inline std::string float_str(float v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
  return buf;
}

}  // namespace sparsecpu
