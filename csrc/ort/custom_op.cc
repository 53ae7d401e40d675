// ONNX Runtime front door: the custom-op library libsparsecpu_ort.so, written against the ORT C API.
// Two ops: com.sparsecpu:Attention (below) and com.sparsecpu:SparseLinear (inputs X [..., K] fp32, W uint8 = a packed weight buffer,
// optional bias [N] fp32, optional residual R of Y's shape and LayerNorm Scale / B [N] fp32; output
// Y [..., N] fp32), computed by the same ops/linear as the Python binding. The packed weight comes from a model file, which is untrusted: it is validated in full
// when the kernel is created, so a bad model fails session creation with an error naming the node.
#include <onnxruntime_c_api.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/format.h"
#include "core/threadpool.h"
#include "ops/attention.h"
#include "ops/linear.h"

namespace {

using sparsecpu::Activation;
using sparsecpu::DType;
using sparsecpu::PackedView;

constexpr const char* kDomain = "com.sparsecpu";
// KernelContext_ParallelFor arrived in API 17 (onnxruntime 1.17); the V2 kernel callbacks in 16.
constexpr uint32_t kMinApiVersion = 17;
static_assert(ORT_API_VERSION >= kMinApiVersion, "the ONNX Runtime header is older than API 17");

const OrtApi* g_api = nullptr;

// An error thrown with the text the ORT status carries.
struct OrtError : std::runtime_error {
  OrtErrorCode code;
  OrtError(OrtErrorCode c, const std::string& msg) : std::runtime_error(msg), code(c) {}
};

// Turns an ORT status into an OrtError (and releases it).
void check(OrtStatus* status) {
  if (!status) return;
  const OrtErrorCode code = g_api->GetErrorCode(status);
  std::string msg = g_api->GetErrorMessage(status);
  g_api->ReleaseStatus(status);
  throw OrtError(code, msg);
}

std::string node_name(const OrtKernelInfo* info) {
  size_t size = 0;
  if (OrtStatus* s = g_api->KernelInfo_GetNodeName(info, nullptr, &size)) {
    g_api->ReleaseStatus(s);
    return "?";
  }
  std::string name(size, '\0');
  if (OrtStatus* s = g_api->KernelInfo_GetNodeName(info, name.data(), &size)) {
    g_api->ReleaseStatus(s);
    return "?";
  }
  name.resize(size > 0 ? size - 1 : 0);  // size counts the terminating null
  return name;
}

// An integer attribute; without fallback a missing one is an error.
int64_t attr_int(const OrtKernelInfo* info, const char* name, const int64_t* fallback = nullptr) {
  int64_t v = 0;
  if (OrtStatus* s = g_api->KernelInfoGetAttribute_int64(info, name, &v)) {
    g_api->ReleaseStatus(s);
    if (fallback) return *fallback;
    throw std::invalid_argument(std::string("missing or non-integer attribute '") + name + "'");
  }
  return v;
}

float attr_float(const OrtKernelInfo* info, const char* name, float fallback) {
  float v = 0.0f;
  if (OrtStatus* s = g_api->KernelInfoGetAttribute_float(info, name, &v)) {
    g_api->ReleaseStatus(s);
    return fallback;
  }
  return v;
}

std::string attr_string(const OrtKernelInfo* info, const char* name, const char* fallback) {
  size_t size = 0;
  if (OrtStatus* s = g_api->KernelInfoGetAttribute_string(info, name, nullptr, &size)) {
    g_api->ReleaseStatus(s);
    if (fallback) return fallback;
    throw std::invalid_argument(std::string("missing or non-string attribute '") + name + "'");
  }
  std::string v(size, '\0');
  check(g_api->KernelInfoGetAttribute_string(info, name, v.data(), &size));
  v.resize(size > 0 ? size - 1 : 0);
  return v;
}

Activation parse_activation(const std::string& s) {
  if (s == "none") return Activation::none;
  if (s == "relu") return Activation::relu;
  if (s == "gelu") return Activation::gelu;
  if (s == "gelu_tanh") return Activation::gelu_tanh;
  throw std::invalid_argument("attribute 'activation' must be none, relu, gelu or gelu_tanh, got '" + s + "'");
}

// Element type and dims of a tensor value.
struct TensorShape {
  ONNXTensorElementDataType type;
  std::vector<int64_t> dims;
};

TensorShape shape_of(const OrtValue* v) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(g_api->GetTensorTypeAndShape(v, &info));
  std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> guard(
      info, [](OrtTensorTypeAndShapeInfo* p) { g_api->ReleaseTensorTypeAndShapeInfo(p); });
  TensorShape out{};
  size_t n = 0;
  check(g_api->GetTensorElementType(info, &out.type));
  check(g_api->GetDimensionsCount(info, &n));
  out.dims.resize(n);
  check(g_api->GetDimensions(info, out.dims.data(), n));
  return out;
}

std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

struct FreeAligned {
  void operator()(uint8_t* p) const { std::free(p); }
};

struct LinearKernel {
  std::string name;
  std::unique_ptr<uint8_t, FreeAligned> buf;  // owned, 64-byte aligned copy of the packed weight
  PackedView w{};
  Activation act = Activation::none;
  bool norm = false;  // LayerNorm after the residual add (attribute norm = 1)
  float epsilon = 1e-5f;
  int threads = 1;  // tasks ORT's intra-op pool runs at once (its default size: one per core)

  // Checks a per-channel tensor (bias, Scale, B; constant or not) against N.
  void check_channels(const TensorShape& b, const char* what) const {
    if (b.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || b.dims.size() != 1 || static_cast<uint64_t>(b.dims[0]) != w.n)
      throw std::invalid_argument(std::string(what) + " must be a float tensor of shape [" + std::to_string(w.n) +
                                  "], got " + dims_str(b.dims));
  }
};

// Optional inputs after W: bias (2), residual R (3), LayerNorm Scale (4) and B (5).
constexpr size_t kInputs = 6;
const char* const kChannelInputs[kInputs] = {nullptr, nullptr, "bias", nullptr, "Scale", "B"};

LinearKernel* create_linear(const OrtKernelInfo* info) {
  auto k = std::make_unique<LinearKernel>();
  const int64_t n = attr_int(info, "N"), kk = attr_int(info, "K");
  const std::string dtype = attr_string(info, "dtype", nullptr);
  const std::string format = attr_string(info, "format", "bsr");
  k->act = parse_activation(attr_string(info, "activation", "none"));
  const int64_t no_norm = 0;
  const int64_t norm = attr_int(info, "norm", &no_norm);
  if (norm != 0 && norm != 1) throw std::invalid_argument("attribute 'norm' must be 0 or 1, got " + std::to_string(norm));
  k->norm = norm == 1;
  k->epsilon = attr_float(info, "epsilon", 1e-5f);
  if (!(k->epsilon >= 0.0f) || !std::isfinite(k->epsilon))
    throw std::invalid_argument("attribute 'epsilon' must be finite and >= 0, got " + std::to_string(k->epsilon));
  if (dtype != "int8" && dtype != "fp32")
    throw std::invalid_argument("attribute 'dtype' must be int8 or fp32, got '" + dtype + "'");
  if (format != "bsr" && format != "dense")
    throw std::invalid_argument("attribute 'format' must be bsr or dense, got '" + format + "'");

  int is_constant = 0;
  const OrtValue* wv = nullptr;
  check(g_api->KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &wv));
  if (!is_constant || !wv) throw std::invalid_argument("the packed weight (input 1) must be a constant initializer");
  const TensorShape ws = shape_of(wv);
  if (ws.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || ws.dims.size() != 1 || ws.dims[0] < 0)
    throw std::invalid_argument("the packed weight (input 1) must be a 1-D uint8 tensor, got shape " + dims_str(ws.dims));
  const size_t size = static_cast<size_t>(ws.dims[0]);
  void* data = nullptr;
  check(g_api->GetTensorMutableData(const_cast<OrtValue*>(wv), &data));
  // Own a copy: the kernels read whole aligned sections, and validation holds only for the bytes it saw.
  k->buf.reset(static_cast<uint8_t*>(std::aligned_alloc(64, (size + 63) / 64 * 64 + 64)));
  if (!k->buf) throw std::bad_alloc();
  if (size) std::memcpy(k->buf.get(), data, size);
  k->w = sparsecpu::validate(k->buf.get(), size);
  if (k->w.n != static_cast<uint64_t>(n) || k->w.k != static_cast<uint64_t>(kk))
    throw std::invalid_argument("attributes N = " + std::to_string(n) + ", K = " + std::to_string(kk) +
                                " do not match the packed weight (N = " + std::to_string(k->w.n) +
                                ", K = " + std::to_string(k->w.k) + ")");
  if (format != sparsecpu::format_name(k->w.format))
    throw std::invalid_argument("attribute format = " + format + " does not match the packed weight (" +
                                sparsecpu::format_name(k->w.format) + ")");
  if (dtype != sparsecpu::dtype_name(k->w.dtype))
    throw std::invalid_argument("attribute dtype = " + dtype + " does not match the packed weight (" +
                                sparsecpu::dtype_name(k->w.dtype) + ")");
  size_t inputs = 0;
  check(g_api->KernelInfo_GetInputCount(info, &inputs));
  if (inputs > kInputs) throw std::invalid_argument("at most 6 inputs (X, W, bias, R, Scale, B), got " + std::to_string(inputs));
  for (size_t i = 2; i < inputs; ++i) {
    if (!kChannelInputs[i]) continue;
    const OrtValue* v = nullptr;
    check(g_api->KernelInfoGetConstantInput_tensor(info, i, &is_constant, &v));
    if (is_constant && v) k->check_channels(shape_of(v), kChannelInputs[i]);
  }
  k->threads = sparsecpu::default_num_threads();
  return k.release();
}

// Tasks of ops/linear never throw, so none unwinds through ONNX Runtime's pool.
void trampoline(void* fn, size_t t) { (*static_cast<const std::function<void(int)>*>(fn))(static_cast<int>(t)); }

// ORT's intra-op pool as a ParallelFor: a second pool of our own would fight it for the cores.
sparsecpu::ParallelFor ort_pool(OrtKernelContext* ctx, int threads) {
  sparsecpu::ParallelFor par;
  par.threads = threads;
  par.run = [ctx](int n, const std::function<void(int)>& fn) {
    check(g_api->KernelContext_ParallelFor(ctx, trampoline, static_cast<size_t>(n), 0,
                                           const_cast<std::function<void(int)>*>(&fn)));
  };
  return par;
}

void compute_linear(const LinearKernel& k, OrtKernelContext* ctx) {
  const OrtValue* xv = nullptr;
  check(g_api->KernelContext_GetInput(ctx, 0, &xv));
  const TensorShape xs = shape_of(xv);
  if (xs.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) throw std::invalid_argument("X must be a float tensor");
  if (xs.dims.empty() || static_cast<uint64_t>(xs.dims.back()) != k.w.k)
    throw std::invalid_argument("X must have shape [..., " + std::to_string(k.w.k) + "], got " + dims_str(xs.dims));
  int64_t M = 1;
  for (size_t i = 0; i + 1 < xs.dims.size(); ++i) M *= xs.dims[i];
  std::vector<int64_t> ydims = xs.dims;
  ydims.back() = static_cast<int64_t>(k.w.n);

  sparsecpu::LinearArgs a;
  a.w = k.w;
  a.M = M;
  a.act = k.act;
  a.norm = k.norm;
  a.norm_eps = k.epsilon;
  size_t inputs = 0;
  check(g_api->KernelContext_GetInputCount(ctx, &inputs));
  const float** targets[kInputs] = {nullptr, nullptr, &a.bias, &a.residual, &a.norm_weight, &a.norm_bias};
  for (size_t i = 2; i < inputs && i < kInputs; ++i) {
    const OrtValue* v = nullptr;
    check(g_api->KernelContext_GetInput(ctx, i, &v));
    if (!v) continue;
    const TensorShape s = shape_of(v);
    if (kChannelInputs[i]) {
      k.check_channels(s, kChannelInputs[i]);
      if (i >= 4 && !k.norm) throw std::invalid_argument(std::string(kChannelInputs[i]) + " is given but attribute norm is 0");
    } else if (s.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || s.dims != ydims) {
      throw std::invalid_argument("R must be a float tensor of Y's shape " + dims_str(ydims) + ", got " + dims_str(s.dims));
    }
    check(g_api->GetTensorMutableData(const_cast<OrtValue*>(v), reinterpret_cast<void**>(const_cast<float**>(targets[i]))));
  }
  OrtValue* yv = nullptr;
  check(g_api->KernelContext_GetOutput(ctx, 0, ydims.data(), ydims.size(), &yv));
  if (M == 0 || k.w.n == 0) return;
  check(g_api->GetTensorMutableData(const_cast<OrtValue*>(xv), reinterpret_cast<void**>(const_cast<float**>(&a.x))));
  check(g_api->GetTensorMutableData(yv, reinterpret_cast<void**>(&a.y)));
  const sparsecpu::ParallelFor par = ort_pool(ctx, k.threads);
  a.parallel = &par;
  sparsecpu::linear(a);
}

void set_float_output(OrtShapeInferContext* ctx, const std::vector<int64_t>& dims, std::vector<const char*>& names);

// Output shape: X's with the last dimension replaced by N (symbolic dimensions kept), so that ORT
// plans memory and checks downstream shapes as it would for MatMul. Inputs of unknown rank or with
// unknown unnamed dimensions, or an unreadable N, leave the output shape unknown (kernel creation
// reports a bad N).
void infer_linear_shape(OrtShapeInferContext* ctx) {
  OrtTensorTypeAndShapeInfo* x = nullptr;  // owned by the context, not released here
  check(g_api->ShapeInferContext_GetInputTypeShape(ctx, 0, &x));
  size_t rank = 0;
  check(g_api->GetDimensionsCount(x, &rank));
  const OrtOpAttr* attr = nullptr;
  int64_t n = -1;
  size_t read = 0;
  if (rank == 0 || g_api->ShapeInferContext_GetAttribute(ctx, "N", &attr) != nullptr || !attr) return;
  if (OrtStatus* s = g_api->ReadOpAttr(attr, ORT_OP_ATTR_INT, &n, sizeof(n), &read)) {
    g_api->ReleaseStatus(s);
    return;
  }
  if (n < 0) return;
  std::vector<int64_t> dims(rank);
  std::vector<const char*> names(rank, nullptr);
  check(g_api->GetDimensions(x, dims.data(), rank));
  check(g_api->GetSymbolicDimensions(x, names.data(), rank));
  // The C API writes an unnamed dimension as its value, so an unknown one (-1) would become a
  // literal -1 that downstream shape inference trusts: leave such an output shape unknown.
  for (size_t i = 0; i + 1 < rank; ++i) {
    if (dims[i] < 0 && (!names[i] || !*names[i])) return;
  }
  dims.back() = n;
  names.back() = "";
  set_float_output(ctx, dims, names);
}

void set_float_output(OrtShapeInferContext* ctx, const std::vector<int64_t>& dims, std::vector<const char*>& names) {
  const size_t rank = dims.size();
  OrtTensorTypeAndShapeInfo* y = nullptr;
  check(g_api->CreateTensorTypeAndShapeInfo(&y));
  std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> y_guard(
      y, [](OrtTensorTypeAndShapeInfo* p) { g_api->ReleaseTensorTypeAndShapeInfo(p); });
  check(g_api->SetTensorElementType(y, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
  check(g_api->SetDimensions(y, dims.data(), rank));
  check(g_api->SetSymbolicDimensions(y, names.data(), rank));
  check(g_api->ShapeInferContext_SetOutputTypeShape(ctx, 0, y));
}

// The SparseLinear op: the functions make_op wires into an OrtCustomOp.
struct LinearOp {
  using Kernel = LinearKernel;
  static constexpr const char* kName = "SparseLinear";
  static constexpr size_t kInputCount = kInputs;
  static ONNXTensorElementDataType input_type(size_t i) {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  static bool optional(size_t i) { return i >= 2; }
  static Kernel* create(const OrtKernelInfo* info) { return create_linear(info); }
  static void compute(const Kernel& k, OrtKernelContext* ctx) { compute_linear(k, ctx); }
  static void infer_shape(OrtShapeInferContext* ctx) { infer_linear_shape(ctx); }
};

// ---------------------------------------------------------------------------------------------
// The Attention op: O = softmax(scale Q K^T + M) V per (batch, head), from an exported graph's
// attention subgraph. Inputs Q [B, H, Sq, D], K [B, H, Skv, D] (or K^T [B, H, D, Skv] with
// k_transposed = 1), V [B, H, Skv, D], optional additive float mask M (4-D, each dim that of the
// scores [B, H, Sq, Skv] or 1); output O [B, H, Sq, D]. With num_heads = H > 0 the heads are
// merged instead, as the projections write them and the output projection reads them: Q [B, Sq, H D],
// K and V [B, Skv, H D], O [B, Sq, H D]. A query row with no key to attend to (all of M's row
// -inf) gets zeros.

struct AttnKernel {
  std::string name;
  float scale = 1.0f;
  bool k_transposed = false;
  int64_t heads = 0;  // > 0: merged-heads layout
  int threads = 1;
};

AttnKernel* create_attention(const OrtKernelInfo* info) {
  auto k = std::make_unique<AttnKernel>();
  k->scale = attr_float(info, "scale", std::numeric_limits<float>::quiet_NaN());
  if (!std::isfinite(k->scale)) throw std::invalid_argument("attribute 'scale' is missing or not finite");
  const int64_t no = 0;
  const int64_t kt = attr_int(info, "k_transposed", &no);
  if (kt != 0 && kt != 1) throw std::invalid_argument("attribute 'k_transposed' must be 0 or 1, got " + std::to_string(kt));
  k->k_transposed = kt == 1;
  k->heads = attr_int(info, "num_heads", &no);
  if (k->heads < 0) throw std::invalid_argument("attribute 'num_heads' must be >= 0, got " + std::to_string(k->heads));
  if (k->heads > 0 && k->k_transposed) throw std::invalid_argument("k_transposed = 1 needs the [B, H, S, D] layout (num_heads = 0)");
  k->threads = sparsecpu::default_num_threads();
  return k.release();
}

// Element strides of a row-major tensor.
std::vector<int64_t> row_major_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) s[i - 1] = s[i] * dims[i];
  return s;
}

// Shapes and strides of Q, K, V, O in the [B, H, S, D] layout (K or K^T).
void heads_layout(const AttnKernel& k, const TensorShape s[4], sparsecpu::AttnParams& p) {
  const std::vector<int64_t>& q = s[0].dims;
  const int64_t B = q[0], H = q[1], Sq = q[2], D = q[3], Skv = s[2].dims[2];
  const std::vector<int64_t> kv = {B, H, Skv, D};
  const std::vector<int64_t> kdims = k.k_transposed ? std::vector<int64_t>{B, H, D, Skv} : kv;
  if (s[1].dims != kdims)
    throw std::invalid_argument(std::string("K must have shape ") + dims_str(kdims) + (k.k_transposed ? " (K^T)" : "") +
                                " to match Q " + dims_str(q) + " and V, got " + dims_str(s[1].dims));
  if (s[2].dims != kv) throw std::invalid_argument("V must have shape [B, H, Skv, D] = " + dims_str(kv) + ", got " + dims_str(s[2].dims));
  p.B = B, p.H = H, p.Sq = Sq, p.Skv = Skv, p.D = D;
  const auto qs = row_major_strides(q), ks = row_major_strides(s[1].dims), vs = row_major_strides(kv);
  p.q_sb = qs[0], p.q_sh = qs[1], p.q_ss = qs[2];
  p.k_sb = ks[0], p.k_sh = ks[1];
  p.k_ss = k.k_transposed ? 1 : ks[2];
  p.k_sd = k.k_transposed ? ks[2] : 1;
  p.v_sb = vs[0], p.v_sh = vs[1], p.v_ss = vs[2];
  p.o_sb = qs[0], p.o_sh = qs[1], p.o_ss = qs[2];
}

// The same for merged heads: Q [B, Sq, H D], K and V [B, Skv, H D]; head h is columns [h D, (h + 1) D).
void merged_layout(const AttnKernel& k, const TensorShape s[4], sparsecpu::AttnParams& p) {
  const std::vector<int64_t>& q = s[0].dims;
  const int64_t B = q[0], Sq = q[1], N = q[2], H = k.heads, Skv = s[1].dims[1];
  if (N % H != 0) throw std::invalid_argument("Q's last dim " + std::to_string(N) + " is not a multiple of num_heads = " + std::to_string(H));
  const std::vector<int64_t> kv = {B, Skv, N};
  for (int i = 1; i < 3; ++i) {
    if (s[i].dims != kv)
      throw std::invalid_argument(std::string(i == 1 ? "K" : "V") + " must have shape [B, Skv, H D] = " + dims_str(kv) +
                                  " to match Q " + dims_str(q) + ", got " + dims_str(s[i].dims));
  }
  p.B = B, p.H = H, p.Sq = Sq, p.Skv = Skv, p.D = N / H;
  p.q_sb = Sq * N, p.q_sh = p.D, p.q_ss = N;
  p.k_sb = Skv * N, p.k_sh = p.D, p.k_ss = N, p.k_sd = 1;
  p.v_sb = Skv * N, p.v_sh = p.D, p.v_ss = N;
  p.o_sb = Sq * N, p.o_sh = p.D, p.o_ss = N;
}

void compute_attention(const AttnKernel& k, OrtKernelContext* ctx) {
  const OrtValue* v[4] = {nullptr, nullptr, nullptr, nullptr};
  size_t inputs = 0;
  check(g_api->KernelContext_GetInputCount(ctx, &inputs));
  for (size_t i = 0; i < 4 && i < inputs; ++i) check(g_api->KernelContext_GetInput(ctx, i, &v[i]));
  if (!v[0] || !v[1] || !v[2]) throw std::invalid_argument("inputs Q, K and V are required");
  TensorShape s[4];
  const char* names[4] = {"Q", "K", "V", "M"};
  const size_t rank = k.heads > 0 ? 3 : 4;
  for (int i = 0; i < 4; ++i) {
    if (!v[i]) continue;
    s[i] = shape_of(v[i]);
    const size_t want = i == 3 ? 4 : rank;
    if (s[i].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || s[i].dims.size() != want)
      throw std::invalid_argument(std::string(names[i]) + " must be a " + std::to_string(want) + "-D float tensor, got " +
                                  dims_str(s[i].dims));
  }
  sparsecpu::AttnParams p{};
  if (k.heads > 0) merged_layout(k, s, p);
  else heads_layout(k, s, p);
  p.scale = k.scale;
  if (v[3]) {
    const int64_t want[4] = {p.B, p.H, p.Sq, p.Skv};
    const auto ms = row_major_strides(s[3].dims);
    int64_t* mstride[4] = {&p.m_sb, &p.m_sh, &p.m_sq, &p.m_sk};
    for (int i = 0; i < 4; ++i) {
      if (s[3].dims[i] != want[i] && s[3].dims[i] != 1)
        throw std::invalid_argument("M must broadcast to the scores " + dims_str({p.B, p.H, p.Sq, p.Skv}) + ", got " +
                                    dims_str(s[3].dims));
      *mstride[i] = s[3].dims[i] == 1 ? 0 : ms[i];
    }
  }
  const std::vector<int64_t>& q = s[0].dims;
  OrtValue* ov = nullptr;
  check(g_api->KernelContext_GetOutput(ctx, 0, q.data(), q.size(), &ov));
  if (p.B * p.H * p.Sq * p.D == 0) return;
  float* data[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  for (int i = 0; i < 4; ++i) {
    if (v[i]) check(g_api->GetTensorMutableData(const_cast<OrtValue*>(v[i]), reinterpret_cast<void**>(&data[i])));
  }
  check(g_api->GetTensorMutableData(ov, reinterpret_cast<void**>(&data[4])));
  p.q = data[0], p.k = data[1], p.v = data[2], p.bias = data[3], p.o = data[4];
  const sparsecpu::ParallelFor par = ort_pool(ctx, k.threads);
  sparsecpu::attention(p, &par);
}

// Output shape: Q's.
void infer_attention_shape(OrtShapeInferContext* ctx) {
  OrtTensorTypeAndShapeInfo* q = nullptr;  // owned by the context
  check(g_api->ShapeInferContext_GetInputTypeShape(ctx, 0, &q));
  size_t rank = 0;
  check(g_api->GetDimensionsCount(q, &rank));
  if (rank != 3 && rank != 4) return;
  std::vector<int64_t> dims(rank);
  std::vector<const char*> names(rank, nullptr);
  check(g_api->GetDimensions(q, dims.data(), rank));
  check(g_api->GetSymbolicDimensions(q, names.data(), rank));
  for (size_t i = 0; i < rank; ++i) {
    if (dims[i] < 0 && (!names[i] || !*names[i])) return;
  }
  set_float_output(ctx, dims, names);
}

struct AttentionOp {
  using Kernel = AttnKernel;
  static constexpr const char* kName = "Attention";
  static constexpr size_t kInputCount = 4;
  static ONNXTensorElementDataType input_type(size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static bool optional(size_t i) { return i == 3; }
  static Kernel* create(const OrtKernelInfo* info) { return create_attention(info); }
  static void compute(const Kernel& k, OrtKernelContext* ctx) { compute_attention(k, ctx); }
  static void infer_shape(OrtShapeInferContext* ctx) { infer_attention_shape(ctx); }
};

// ---------------------------------------------------------------------------------------------

OrtStatus* to_status(const char* op, const std::string& node, const std::exception& e, OrtErrorCode code) {
  const std::string where = std::string(op) + " node '" + node + "': ";
  return g_api->CreateStatus(code, (where + e.what()).c_str());
}

// ORT reads the fields of this struct up to `version`, so one built against a newer header loads
// into an older runtime as long as `version` is what that runtime speaks.
template <class Op>
OrtCustomOp make_op(uint32_t version) {
  using Kernel = typename Op::Kernel;
  OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  op.version = version;
  op.GetName = [](const OrtCustomOp*) { return Op::kName; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };  // CPU
  op.GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return Op::kInputCount; };
  op.GetInputType = [](const OrtCustomOp*, size_t i) { return Op::input_type(i); };
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
    return Op::optional(i) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetStartVersion = [](const OrtCustomOp*) { return 1; };
  op.GetEndVersion = [](const OrtCustomOp*) { return INT_MAX; };
  op.CreateKernelV2 = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) -> OrtStatus* {
    *out = nullptr;
    const std::string node = node_name(info);
    try {
      Kernel* k = Op::create(info);
      k->name = node;
      *out = k;
      return nullptr;
    } catch (const OrtError& e) {
      return to_status(Op::kName, node, e, e.code);
    } catch (const std::bad_alloc& e) {
      return to_status(Op::kName, node, e, ORT_FAIL);
    } catch (const std::exception& e) {
      return to_status(Op::kName, node, e, ORT_INVALID_GRAPH);
    }
  };
  op.KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatus* {
    const Kernel* k = static_cast<const Kernel*>(kernel);
    try {
      Op::compute(*k, ctx);
      return nullptr;
    } catch (const OrtError& e) {
      return to_status(Op::kName, k->name, e, e.code);
    } catch (const std::bad_alloc& e) {
      return to_status(Op::kName, k->name, e, ORT_FAIL);
    } catch (const std::exception& e) {
      return to_status(Op::kName, k->name, e, ORT_INVALID_ARGUMENT);
    }
  };
  op.KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
  op.InferOutputShapeFn = [](const OrtCustomOp*, OrtShapeInferContext* ctx) -> OrtStatus* {
    try {
      Op::infer_shape(ctx);
      return nullptr;
    } catch (const OrtError& e) {
      return g_api->CreateStatus(e.code, (std::string(Op::kName) + " shape inference: " + e.what()).c_str());
    } catch (const std::exception& e) {
      return g_api->CreateStatus(ORT_FAIL, (std::string(Op::kName) + " shape inference: " + e.what()).c_str());
    }
  };
  return op;
}

// API version to speak: the header's, or the runtime's if that is older (ORT 1.x speaks API 1.x's minor).
uint32_t runtime_api_version(const OrtApiBase* base) {
  const char* v = base->GetVersionString();
  unsigned major = 0, minor = 0;
  if (!v || std::sscanf(v, "%u.%u", &major, &minor) != 2 || major != 1) return ORT_API_VERSION;
  return minor < ORT_API_VERSION ? minor : ORT_API_VERSION;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  static std::once_flag once;
  static OrtCustomOp linear_op, attention_op;
  static uint32_t version = 0;
  std::call_once(once, [&] {
    version = runtime_api_version(api_base);
    if (version >= kMinApiVersion) {
      g_api = api_base->GetApi(version);
      linear_op = make_op<LinearOp>(version);
      attention_op = make_op<AttentionOp>(version);
    }
  });
  if (!g_api) {
    const OrtApi* v1 = api_base->GetApi(1);  // every runtime speaks API 1
    const std::string msg = std::string("libsparsecpu_ort needs onnxruntime >= 1.17 (API ") +
                            std::to_string(kMinApiVersion) + "), this is " + api_base->GetVersionString();
    return v1 ? v1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  // The domain must outlive every session built from these options, which this library cannot
  // see; it is kept for the life of the process (one small object per registration).
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* s = g_api->CreateCustomOpDomain(kDomain, &domain)) return s;
  if (OrtStatus* s = g_api->CustomOpDomain_Add(domain, &linear_op)) return s;
  if (OrtStatus* s = g_api->CustomOpDomain_Add(domain, &attention_op)) return s;
  return g_api->AddCustomOpDomain(options, domain);
}
