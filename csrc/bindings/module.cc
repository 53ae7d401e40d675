// pybind11 front door: takes numpy buffers, describes them to the ops' requests (which check them),
// releases the GIL, maps C++ errors to ValueError. Argument checking that needs Python types (torch
// tensors, dtypes) lives in python/sparsecpu.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/peak.h"
#include "core/cpu.h"
#include "core/format.h"
#include "core/threadpool.h"
#include "kernels/amx/tilemachine.h"
#include "ops/attention.h"
#include "ops/linear.h"

namespace py = pybind11;
using namespace sparsecpu;

namespace {

using F32Array = py::array_t<float, py::array::c_style>;
using U8Array = py::array_t<uint8_t, py::array::c_style>;

DType parse_dtype(const std::string& s) {
  if (s == "int8") return DType::int8;
  if (s == "fp32") return DType::fp32;
  throw std::invalid_argument("dtype must be 'int8' or 'fp32', got '" + s + "'");
}

PackedView view_of(const U8Array& buf, bool full) {
  if (buf.ndim() != 1) throw std::invalid_argument("packed weight buffer must be 1-D uint8");
  return full ? validate(buf.data(), static_cast<size_t>(buf.size()))
              : view_trusted(buf.data(), static_cast<size_t>(buf.size()));
}

py::dict describe(const PackedView& v, size_t nbytes) {
  py::dict d;
  d["n"] = v.n;
  d["k"] = v.k;
  d["dtype"] = dtype_name(v.dtype);
  d["format"] = format_name(v.format);
  d["block"] = v.format == Format::dense   ? py::make_tuple(1, 1)
               : v.format == Format::panel ? py::make_tuple(16, 1)
                                           : py::make_tuple(4, 1);
  d["outlier_threshold"] = v.outlier_threshold;
  d["stored_blocks"] = v.nnzb;
  d["kept_blocks"] = v.kept_blocks;
  d["index_bytes"] = v.index_bytes;
  d["nbytes"] = nbytes;
  return d;
}

// A packed buffer as a new numpy uint8 array.
U8Array to_array(const std::vector<uint8_t>& buf) {
  U8Array out(static_cast<py::ssize_t>(buf.size()));
  std::memcpy(out.mutable_data(), buf.data(), buf.size());
  return out;
}

U8Array pack(const F32Array& w, const std::string& dtype, const std::string& format, float outlier_threshold) {
  if (w.ndim() != 2) throw std::invalid_argument("weight must be 2-D (N x K)");
  const DType dt = parse_dtype(dtype);
  if (format != "bsr" && format != "dense" && format != "panel")
    throw std::invalid_argument("format must be 'bsr', 'dense' or 'panel'");
  if (format != "bsr" && dt != DType::int8) throw std::invalid_argument("format '" + format + "' needs dtype 'int8'");
  std::vector<uint8_t> buf;
  {
    py::gil_scoped_release release;
    const uint64_t n = static_cast<uint64_t>(w.shape(0)), k = static_cast<uint64_t>(w.shape(1));
    buf = format == "dense"   ? pack_dense(w.data(), n, k, outlier_threshold)
          : format == "panel" ? pack_panel(w.data(), n, k, outlier_threshold)
                              : pack_bsr(w.data(), n, k, dt, outlier_threshold);
  }
  return to_array(buf);
}

// A C-contiguous float32 array as a request argument.
TensorArg arg_of(const F32Array& a) {
  return TensorArg::of(a.data(), std::vector<int64_t>(a.shape(), a.shape() + a.ndim()));
}

// An optional float32 array argument (None: not given), kept alive by `keep`.
TensorArg optional_arg(const py::object& v, F32Array& keep) {
  if (v.is_none()) return {};
  keep = v.cast<F32Array>();
  return arg_of(keep);
}

// The activation name a Python argument stands for: None means none. Anything but a str keeps its
// repr, which no activation has, so that the request rejects it with the names it accepts.
std::string activation_name(const py::object& act) {
  if (act.is_none()) return "none";
  if (py::isinstance<py::str>(act)) return act.cast<std::string>();
  return py::repr(act).cast<std::string>();
}

// y = act(x W^T + bias) [+ residual, LayerNorm] into out: x [..., K] and out [..., N], C-contiguous.
void linear_py(const F32Array& x, const U8Array& buf, const py::object& bias, const py::object& activation, F32Array& out,
               bool raw_s32, const py::object& residual, bool norm, const py::object& norm_weight,
               const py::object& norm_bias, float norm_eps) {
  F32Array b, r, nw, nb;
  LinearCall c;
  c.x = arg_of(x);
  c.out = arg_of(out);
  c.bias = optional_arg(bias, b);
  c.residual = optional_arg(residual, r);
  c.norm_weight = optional_arg(norm_weight, nw);
  c.norm_bias = optional_arg(norm_bias, nb);
  c.activation = activation_name(activation);
  c.norm = norm;
  c.norm_eps = norm_eps;
  c.raw_s32 = raw_s32;
  const LinearRequest request(view_of(buf, false), c);
  py::gil_scoped_release release;
  request.run(out.mutable_data());
}

// A new C-contiguous float32 array of `shape`, 64-byte aligned (numpy's allocator aligns to 16).
F32Array aligned_f32(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  const size_t bytes = std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
  float* y = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!y) throw std::bad_alloc();
  py::capsule owner(y, [](void* p) { std::free(p); });
  return F32Array(std::vector<py::ssize_t>(shape.begin(), shape.end()), y, owner);
}

// A layer's packed weight, bias and activation bound once, then called per input: a decode step
// makes ~50 calls per token, and converting all of linear_py's arguments each time costs as much as
// a small layer's kernel. Only for weights validated beforehand (PackedWeight.buffer).
class BoundLinear {
 public:
  BoundLinear(U8Array buf, const py::object& bias, const py::object& activation)
      : buf_(std::move(buf)), w_(view_of(buf_, false)) {
    call_.bias = optional_arg(bias, bias_);
    call_.activation = activation_name(activation);
    LinearRequest::check_settings(w_, call_);
  }

  // activation(x @ W^T + bias) [+ residual] for x [..., K] and residual None or [..., N]: a new
  // float32 array [..., N], 64-byte aligned.
  F32Array operator()(const F32Array& x, const py::object& residual) const {
    LinearCall c = call_;
    c.x = arg_of(x);
    F32Array r;
    c.residual = optional_arg(residual, r);
    const LinearRequest request(w_, c);
    F32Array out = aligned_f32(request.y_dims());
    float* y = out.mutable_data();
    {
      py::gil_scoped_release release;
      request.run(y);
    }
    return out;
  }

 private:
  U8Array buf_;
  PackedView w_;
  F32Array bias_;
  LinearCall call_;  // the bias and activation; x set per call
};

// A numpy array as a request argument: its element type, and its strides in elements (0 for a dim
// of one element, which is never stepped over).
TensorArg strided_arg(const py::array& a, const char* what) {
  const Elem elem = a.dtype().is(py::dtype::of<float>())  ? Elem::f32
                    : a.dtype().is(py::dtype::of<bool>()) ? Elem::boolean
                                                          : Elem::other;
  std::vector<int64_t> dims(a.shape(), a.shape() + a.ndim()), strides(a.ndim(), 0);
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (a.shape(i) <= 1) continue;
    if (a.strides(i) % a.itemsize() != 0)
      throw std::invalid_argument(std::string(what) + " has a stride that is not a whole number of elements");
    strides[i] = a.strides(i) / a.itemsize();
  }
  return TensorArg::of(a.data(), std::move(dims), elem, std::move(strides));
}

// q [B, H, Sq, D], k and v [B, H, Skv, D], mask None or [B|1, H|1, Sq|1, Skv|1] (float32 added, bool
// True = attend), any strides: see AttentionCall. out: a writeable float32 [B, H, Sq, D] array, or
// None for a new [B, Sq, H, D] array (the merged-heads layout) written through its [B, H, Sq, D]
// view. precision: "fp32" or "bf16". Returns out, or the new array.
py::array attention_py(const py::array& q, const py::array& k, const py::array& v, const py::object& out_or_none,
                       const py::object& mask, float scale, const std::string& precision) {
  AttentionCall c;
  c.q = strided_arg(q, "q");
  c.k = strided_arg(k, "k");
  c.v = strided_arg(v, "v");
  py::array m;
  if (!mask.is_none()) {
    m = mask.cast<py::array>();
    c.mask = strided_arg(m, "mask");
  }
  c.scale = scale;
  c.precision = parse_precision(precision);
  AttentionRequest request(c);
  py::array result;
  if (out_or_none.is_none()) {
    const std::vector<int64_t>& d = request.out_dims();
    const int64_t H = d[1], Sq = d[2], D = d[3];
    F32Array merged = aligned_f32({d[0], Sq, H, D});
    request.set_out(TensorArg::of(merged.mutable_data(), d, Elem::f32, {Sq * H * D, D, H * D, 1}));
    result = merged;
  } else {
    result = out_or_none.cast<py::array>();
    if (!result.writeable()) throw std::invalid_argument("out must be writeable");
    request.set_out(strided_arg(result, "out"));
  }
  {
    py::gil_scoped_release release;
    request.run();
  }
  return result;
}

py::dict info() {
  const CpuInfo& c = cpu_info();
  py::dict d;
  d["vendor"] = c.vendor;
  d["cpu"] = c.brand;
  d["features"] = c.features;
  d["detected_isa"] = isa_name(c.best);
  d["amx"] = c.amx;
  const Target t = active_target();
  d["isa"] = isa_name(t.isa);
  d["emulated"] = t.emulated;
  py::dict kernels;
  for (Op op : kAllOps) kernels[op_name(op)] = select_kernel(op, t).name;
  // A bf16 attention request runs the fp32 kernel at the levels without a bf16 kernel of their own.
  kernels[op_name(Op::attention_bf16)] = attention_kernel_name(AttnPrecision::bf16);
  d["kernels"] = kernels;
  d["threads"] = get_num_threads();
  const std::string omp = host_openmp();
  d["threading"] = omp.empty() ? std::string("sparsecpu pool") : "host OpenMP (" + omp + ")";
  return d;
}

py::list registry() {
  int n = 0;
  const KernelEntry* e = kernel_registry(&n);
  py::list out;
  for (int i = 0; i < n; ++i) {
    py::dict d;
    d["op"] = op_name(e[i].op);
    d["isa"] = isa_name(e[i].isa);
    d["emulated"] = e[i].emulated;
    d["name"] = e[i].name;
    d["rows"] = e[i].rows;
    d["channels"] = e[i].channels;
    d["lanes"] = e[i].lanes;
    d["calls"] = kernel_calls(i);
    out.append(d);
  }
  return out;
}

py::list supported_isas() {
  py::list out;
  for (int i = 0; i <= static_cast<int>(cpu_info().best); ++i) out.append(isa_name(static_cast<Isa>(i)));
  return out;
}

// Every target this machine can run: its native levels, then (on an AVX2 CPU) each AVX-512 and AMX level emulated.
py::list test_targets() {
  py::list out = supported_isas();
  if (emulation_available()) {
    for (Isa isa : {Isa::avx512, Isa::avx512_vnni, Isa::amx}) out.append(target_name({isa, true}));
  }
  return out;
}

// Test hook: runs a tile program on the calling thread's tile machine (kernels/amx/tilemachine.h), every
// address an offset into `memory` (a writeable uint8 array), which no tile load or store may leave.
// Instructions: ("ldtilecfg", off), ("sttilecfg", off), ("tilerelease",), ("tilezero", t),
// ("tileloadd", t, off, stride), ("tilestored", t, off, stride), ("tdpbusd", c, a, b), ("tdpbf16ps", c, a, b).
// A fault raises RuntimeError("#UD: ..." / "#GP: ..." / "#PF: ...") after the instructions before it ran.
void amx_tile_program(const py::list& program, py::array& memory) {
  namespace tm = amx::machine;
  if (!emulation_available()) throw std::invalid_argument("the tile machine needs a CPU with AVX2, FMA and F16C");
  // Taken as it is (no converted copy, which the program would write to in vain).
  if (memory.ndim() != 1 || !memory.dtype().is(py::dtype::of<uint8_t>()) || !memory.writeable() ||
      !(memory.flags() & py::array::c_style))
    throw std::invalid_argument("memory must be a writeable contiguous 1-D uint8 array");
  uint8_t* mem = static_cast<uint8_t*>(memory.mutable_data());
  const int64_t size = memory.size();
  auto config_at = [&](int64_t off) {
    if (off < 0 || off + 64 > size) throw std::invalid_argument("a tile configuration must lie inside memory");
    return mem + off;
  };
  const tm::MemoryWindow window(mem, static_cast<size_t>(size));
  for (const py::handle& item : program) {
    const py::tuple insn = py::reinterpret_borrow<py::object>(item).cast<py::tuple>();
    if (insn.size() == 0) throw std::invalid_argument("an empty instruction");
    const std::string op = insn[0].cast<std::string>();
    auto arg = [&](size_t i) {
      if (i >= insn.size()) throw std::invalid_argument(op + ": missing operand " + std::to_string(i));
      return insn[i].cast<int64_t>();
    };
    auto tile = [&](size_t i) { return static_cast<int>(arg(i)); };
    if (op == "ldtilecfg") tm::ldtilecfg(config_at(arg(1)));
    else if (op == "sttilecfg") tm::sttilecfg(config_at(arg(1)));
    else if (op == "tilerelease") tm::tilerelease();
    else if (op == "tilezero") tm::tilezero(tile(1));
    // The window checks every row these touch; base + offset itself stays a plain address computation.
    else if (op == "tileloadd") tm::tileloadd(tile(1), reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(mem) + arg(2)), arg(3));
    else if (op == "tilestored") tm::tilestored(tile(1), reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(mem) + arg(2)), arg(3));
    else if (op == "tdpbusd") tm::tdpbusd(tile(1), tile(2), tile(3));
    else if (op == "tdpbf16ps") tm::tdpbf16ps(tile(1), tile(2), tile(3));
    else throw std::invalid_argument("unknown tile instruction '" + op + "'");
  }
}

// Test hook: the 16 x 64 bytes of the calling thread's tile t, configured or not.
py::bytes amx_tile_data(int t) {
  if (!emulation_available()) throw std::invalid_argument("the tile machine needs a CPU with AVX2, FMA and F16C");
  return py::bytes(reinterpret_cast<const char*>(amx::machine::tile_data(t)), amx::kTileRows * amx::kTileBytes);
}

// {"fp32_fma": {...}, "int8": {...}}: each kind holds the entry of its best native level (isa,
// instruction, ops_per_instruction, "gflops" for fp32 / "gops" for int8, seconds of the fastest run)
// plus "levels": every level's entry, the ones this CPU lacks as {isa, instruction, absent: reason}.
// A kind that no level runs here is {"isa": None, "absent": the lowest level's reason, "levels"}.
py::dict peak_py(int runs) {
  std::vector<PeakResult> results;
  {
    py::gil_scoped_release release;
    results = measure_peaks(runs);
  }
  py::dict out;
  for (const std::string kind : {"fp32_fma", "int8"}) {
    py::dict levels, best;
    std::string absent;
    for (const PeakResult& r : results) {
      if (r.loop->kind != kind) continue;
      py::dict d;
      d["isa"] = isa_name(r.loop->isa);
      d["instruction"] = r.loop->instruction;
      d["ops_per_instruction"] = r.loop->ops_per_instruction;
      if (r.available) {
        d[kind == "fp32_fma" ? "gflops" : "gops"] = r.gops;
        d["seconds"] = r.best_s;
        best = d.attr("copy")();  // levels ascend: the last available one is the best
      } else {
        d["absent"] = r.absent;
        if (absent.empty()) absent = r.absent;
      }
      levels[isa_name(r.loop->isa)] = d;
    }
    if (best.empty()) {
      best["isa"] = py::none();
      best["absent"] = absent;
    }
    best["levels"] = levels;
    out[kind.c_str()] = best;
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparsecpu native core (kernels, packing, dispatch, thread pool)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  // Fail the import on a bad SPARSECPU_ISA rather than on the first call.
  active_target();

  m.def("pack", &pack, py::arg("weight"), py::arg("dtype"), py::arg("format") = "bsr",
        py::arg("outlier_threshold") = 0.0f);
  m.def("stack_rows", [](const std::vector<U8Array>& bufs) {
    std::vector<PackedView> parts;
    for (const U8Array& b : bufs) parts.push_back(view_of(b, true));
    return to_array(stack_rows(parts));
  }, py::arg("bufs"));
  m.def("validate", [](const U8Array& buf) { return describe(view_of(buf, true), buf.size()); }, py::arg("buf"));
  m.def("describe", [](const U8Array& buf) { return describe(view_of(buf, false), buf.size()); }, py::arg("buf"));
  m.def("unpack", [](const U8Array& buf) {
    const PackedView v = view_of(buf, false);
    F32Array out({static_cast<py::ssize_t>(v.n), static_cast<py::ssize_t>(v.k)});
    unpack_dense(v, out.mutable_data());
    return out;
  }, py::arg("buf"));
  m.def("activations", [] {
    py::list names;
    for (const ActivationName& a : kActivations) names.append(a.name);
    return py::tuple(names);
  });
  m.def("linear", &linear_py, py::arg("x"), py::arg("buf"), py::arg("bias"), py::arg("activation"), py::arg("out"),
        py::arg("raw_s32") = false, py::arg("residual") = py::none(), py::arg("norm") = false,
        py::arg("norm_weight") = py::none(), py::arg("norm_bias") = py::none(), py::arg("norm_eps") = 1e-5f);
  py::class_<BoundLinear>(m, "BoundLinear")
      .def(py::init<U8Array, const py::object&, const py::object&>(), py::arg("buf"), py::arg("bias"),
           py::arg("activation"))
      .def("__call__", &BoundLinear::operator(), py::arg("x"), py::arg("residual") = py::none());
  m.def("attention", &attention_py, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("mask"),
        py::arg("scale"), py::arg("precision") = "fp32");
  m.def("attention_kernel", [](const std::string& precision) { return attention_kernel_name(parse_precision(precision)); },
        py::arg("precision") = "fp32");
  m.def("info", &info);
  m.def("kernel_registry", &registry);
  m.def("kernel_ops", [] {
    py::list ops;
    for (Op op : kAllOps) ops.append(op_name(op));
    return ops;
  });
  m.def("supported_isas", &supported_isas);
  m.def("test_targets", &test_targets);
  m.def("get_isa", [] { return target_name(active_target()); });
  m.def("set_isa", [](const std::string& name) { return target_name(set_target(parse_target(name))); },
        py::arg("level"));
  m.def("kernel_name", [](const std::string& dtype) { return std::string(kernel_name(parse_dtype(dtype))); });
  m.def("kernel_for", [](const U8Array& buf, int64_t m) { return std::string(kernel_for(view_of(buf, false), m)); },
        py::arg("buf"), py::arg("m"));
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("set_host_openmp", &set_host_openmp, py::arg("on"));
  m.def("peak", &peak_py, py::arg("runs") = 20);
  m.def("_amx_tile_program", &amx_tile_program, py::arg("program"), py::arg("memory"));
  m.def("_amx_tile_data", &amx_tile_data, py::arg("tile"));
}
