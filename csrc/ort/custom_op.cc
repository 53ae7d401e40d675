// ONNX Runtime front door: the custom-op library libsparsecpu_ort.so, written against the ORT C API.
// Two ops: com.sparsecpu:Attention (below) and com.sparsecpu:SparseLinear (inputs X [..., K] fp32, W uint8 = a packed weight buffer,
// optional bias [N] fp32, optional residual R of Y's shape and LayerNorm Scale / B [N] fp32; output
// Y [..., N] fp32), computed by the same ops/linear as the Python binding. Each op's inputs and
// attributes are checked by its request in ops/ (LinearRequest, AttentionRequest), as the binding's
// are, so a fault reads the same here as from Python, after the node's name; what this file checks
// itself is what only ONNX Runtime has (attributes N, K, dtype, format, the merged-heads layout).
// The packed weight comes from a model file, which is untrusted: it is validated in full when the
// kernel is created, so a bad model fails session creation with an error naming the node.
#include <onnxruntime_c_api.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
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

using sparsecpu::AttentionCall;
using sparsecpu::AttentionRequest;
using sparsecpu::dims_str;
using sparsecpu::Elem;
using sparsecpu::LinearCall;
using sparsecpu::LinearRequest;
using sparsecpu::PackedView;
using sparsecpu::TensorArg;

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

// A float attribute; without fallback a missing one is an error.
float attr_float(const OrtKernelInfo* info, const char* name, const float* fallback = nullptr) {
  float v = 0.0f;
  if (OrtStatus* s = g_api->KernelInfoGetAttribute_float(info, name, &v)) {
    g_api->ReleaseStatus(s);
    if (fallback) return *fallback;
    throw std::invalid_argument(std::string("missing or non-float attribute '") + name + "'");
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

// A tensor value as a request argument; null (an absent optional input): not given.
TensorArg arg_of(const OrtValue* v) {
  if (!v) return {};
  const TensorShape s = shape_of(v);
  void* data = nullptr;
  check(g_api->GetTensorMutableData(const_cast<OrtValue*>(v), &data));
  return TensorArg::of(data, s.dims, s.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? Elem::f32 : Elem::other);
}

// Input i of a run as a request argument (not given when absent).
TensorArg input_arg(OrtKernelContext* ctx, size_t i) {
  size_t inputs = 0;
  check(g_api->KernelContext_GetInputCount(ctx, &inputs));
  const OrtValue* v = nullptr;
  if (i < inputs) check(g_api->KernelContext_GetInput(ctx, i, &v));
  return arg_of(v);
}

// Input i of a node as a request argument when it is a constant initializer; else not given.
TensorArg constant_arg(const OrtKernelInfo* info, size_t i) {
  size_t inputs = 0;
  check(g_api->KernelInfo_GetInputCount(info, &inputs));
  int is_constant = 0;
  const OrtValue* v = nullptr;
  if (i < inputs) check(g_api->KernelInfoGetConstantInput_tensor(info, i, &is_constant, &v));
  return is_constant ? arg_of(v) : TensorArg{};
}

struct FreeAligned {
  void operator()(uint8_t* p) const { std::free(p); }
};

struct LinearKernel {
  std::string name;
  std::unique_ptr<uint8_t, FreeAligned> buf;  // owned, 64-byte aligned copy of the packed weight
  PackedView w{};
  LinearCall settings;  // activation, norm and epsilon from the attributes; the inputs come per run
  int threads = 1;  // tasks ORT's intra-op pool runs at once (its default size: one per core)
};

// Inputs: X (0), W (1), then the optional bias (2), residual R (3), LayerNorm Scale (4) and B (5).
constexpr size_t kInputs = 6;

LinearKernel* create_linear(const OrtKernelInfo* info) {
  auto k = std::make_unique<LinearKernel>();
  const int64_t n = attr_int(info, "N"), kk = attr_int(info, "K");
  const std::string dtype = attr_string(info, "dtype", nullptr);
  const std::string format = attr_string(info, "format", "bsr");
  k->settings.activation = attr_string(info, "activation", "none");
  const int64_t no_norm = 0;
  const int64_t norm = attr_int(info, "norm", &no_norm);
  if (norm != 0 && norm != 1) throw std::invalid_argument("attribute 'norm' must be 0 or 1, got " + std::to_string(norm));
  k->settings.norm = norm == 1;
  const float default_epsilon = 1e-5f;
  k->settings.norm_eps = attr_float(info, "epsilon", &default_epsilon);
  if (dtype != "int8" && dtype != "fp32")
    throw std::invalid_argument("attribute 'dtype' must be int8 or fp32, got '" + dtype + "'");
  if (format != "bsr" && format != "dense" && format != "panel")
    throw std::invalid_argument("attribute 'format' must be bsr, dense or panel, got '" + format + "'");

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
  // The attributes, with the per-channel inputs that are constant: a bad node fails session creation.
  LinearCall call = k->settings;
  call.bias = constant_arg(info, 2);
  call.norm_weight = constant_arg(info, 4);
  call.norm_bias = constant_arg(info, 5);
  LinearRequest::check_settings(k->w, call);
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
  LinearCall call = k.settings;
  call.x = input_arg(ctx, 0);
  call.bias = input_arg(ctx, 2);
  call.residual = input_arg(ctx, 3);
  call.norm_weight = input_arg(ctx, 4);
  call.norm_bias = input_arg(ctx, 5);
  const LinearRequest request(k.w, call);
  const std::vector<int64_t>& ydims = request.y_dims();
  OrtValue* yv = nullptr;
  check(g_api->KernelContext_GetOutput(ctx, 0, ydims.data(), ydims.size(), &yv));
  float* y = nullptr;
  check(g_api->GetTensorMutableData(yv, reinterpret_cast<void**>(&y)));
  const sparsecpu::ParallelFor par = ort_pool(ctx, k.threads);
  request.run(y, &par);
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
// -inf) gets zeros. precision = "bf16" (default "fp32") allows bf16 products where the CPU has AMX-BF16
// (see AttnPrecision).

struct AttnKernel {
  std::string name;
  AttentionCall settings;  // scale and k_transposed from the attributes; the inputs come per run
  int64_t heads = 0;  // > 0: merged-heads layout
  int threads = 1;
};

AttnKernel* create_attention(const OrtKernelInfo* info) {
  auto k = std::make_unique<AttnKernel>();
  k->settings.scale = attr_float(info, "scale");
  const int64_t no = 0;
  const int64_t kt = attr_int(info, "k_transposed", &no);
  if (kt != 0 && kt != 1) throw std::invalid_argument("attribute 'k_transposed' must be 0 or 1, got " + std::to_string(kt));
  k->settings.k_transposed = kt == 1;
  k->settings.precision = sparsecpu::parse_precision(attr_string(info, "precision", "fp32"));
  k->heads = attr_int(info, "num_heads", &no);
  if (k->heads < 0) throw std::invalid_argument("attribute 'num_heads' must be >= 0, got " + std::to_string(k->heads));
  if (k->heads > 0 && k->settings.k_transposed) throw std::invalid_argument("k_transposed = 1 needs the [B, H, S, D] layout (num_heads = 0)");
  AttentionRequest::check_settings(k->settings);
  k->threads = sparsecpu::default_num_threads();
  return k.release();
}

// Merged heads: Q [B, Sq, H D], K and V [B, Skv, H D] become the [B, H, S, D] views the request
// takes (head h is columns [h D, (h + 1) D)).
void merged_heads_views(int64_t H, TensorArg qkv[3]) {
  const char* names[3] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) {
    if (qkv[i].elem != Elem::f32 || qkv[i].dims.size() != 3)
      throw std::invalid_argument(std::string(names[i]) + " must be a 3-D float32 tensor [B, S, H D] (num_heads = " +
                                  std::to_string(H) + "), got " + sparsecpu::describe(qkv[i]));
  }
  const std::vector<int64_t> q = qkv[0].dims;
  const int64_t B = q[0], Sq = q[1], N = q[2], Skv = qkv[1].dims[1];
  if (N % H != 0) throw std::invalid_argument("q's last dim " + std::to_string(N) + " is not a multiple of num_heads = " + std::to_string(H));
  const std::vector<int64_t> kv = {B, Skv, N};
  for (int i = 1; i < 3; ++i) {
    if (qkv[i].dims != kv)
      throw std::invalid_argument(std::string(names[i]) + " must have shape [B, Skv, H D] = " + dims_str(kv) + " to match q " +
                                  dims_str(q) + ", got " + dims_str(qkv[i].dims));
  }
  const int64_t D = N / H;
  for (int i = 0; i < 3; ++i) {
    const int64_t S = i == 0 ? Sq : Skv;
    qkv[i].dims = {B, H, S, D};
    qkv[i].strides = {S * N, D, N, 1};
  }
}

void compute_attention(const AttnKernel& k, OrtKernelContext* ctx) {
  TensorArg qkv[3] = {input_arg(ctx, 0), input_arg(ctx, 1), input_arg(ctx, 2)};
  if (!qkv[0].given || !qkv[1].given || !qkv[2].given) throw std::invalid_argument("inputs Q, K and V are required");
  const std::vector<int64_t> out_dims = qkv[0].dims;  // Q's, as given
  if (k.heads > 0) merged_heads_views(k.heads, qkv);
  AttentionCall call = k.settings;
  call.q = qkv[0], call.k = qkv[1], call.v = qkv[2];
  call.mask = input_arg(ctx, 3);
  AttentionRequest request(call);
  OrtValue* ov = nullptr;
  check(g_api->KernelContext_GetOutput(ctx, 0, out_dims.data(), out_dims.size(), &ov));
  void* o = nullptr;
  check(g_api->GetTensorMutableData(ov, &o));
  // O has Q's layout: the same [B, H, Sq, D] view.
  request.set_out(TensorArg::of(o, request.out_dims(), Elem::f32, call.q.strides));
  const sparsecpu::ParallelFor par = ort_pool(ctx, k.threads);
  request.run(&par);
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
