// pybind11 front door: takes numpy buffers, releases the GIL, maps C++ errors to ValueError.
// Argument checking that needs Python types (torch tensors, dtypes) lives in python/sparsecpu.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
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
  U8Array out(static_cast<py::ssize_t>(buf.size()));
  std::memcpy(out.mutable_data(), buf.data(), buf.size());
  return out;
}

// A float32 [n] array (null for None), kept alive by `keep`.
const float* channel_vector(const py::object& v, uint64_t n, const char* what, F32Array& keep) {
  if (v.is_none()) return nullptr;
  keep = v.cast<F32Array>();
  if (keep.ndim() != 1 || static_cast<uint64_t>(keep.shape(0)) != n)
    throw std::invalid_argument(std::string(what) + " must be 1-D with N = " + std::to_string(n) + " elements");
  return keep.data();
}

// The rows M of x [..., K] (the product of its leading dims), after checking its last dim is K.
int64_t rows_of(const F32Array& x, uint64_t k) {
  const py::ssize_t d = x.ndim();
  if (d < 1 || static_cast<uint64_t>(x.shape(d - 1)) != k)
    throw std::invalid_argument("x must have shape [..., K] with K = " + std::to_string(k));
  int64_t M = 1;
  for (py::ssize_t i = 0; i + 1 < d; ++i) M *= x.shape(i);
  return M;
}

Activation activation_of(int act) {
  if (act < 0 || act > 3) throw std::invalid_argument("unknown activation code");
  return static_cast<Activation>(act);
}

void linear_py(const F32Array& x, const U8Array& buf, const py::object& bias, int act, F32Array& out,
               bool raw_s32, const py::object& residual, bool norm, const py::object& norm_weight,
               const py::object& norm_bias, float norm_eps) {
  // x [..., K] and out [..., N], C-contiguous, with the same leading dims: M rows.
  const PackedView w = view_of(buf, false);
  const int64_t M = rows_of(x, w.k);
  const py::ssize_t d = x.ndim();
  bool same_lead = out.ndim() == d && static_cast<uint64_t>(out.shape(d - 1)) == w.n;
  for (py::ssize_t i = 0; same_lead && i + 1 < d; ++i) same_lead = out.shape(i) == x.shape(i);
  if (!same_lead) throw std::invalid_argument("out has the wrong shape");
  LinearArgs a;
  a.w = w;
  a.x = x.data();
  a.M = M;
  a.act = activation_of(act);
  a.y = out.mutable_data();
  a.raw_s32 = raw_s32;
  F32Array b, r, nw, nb;
  a.bias = channel_vector(bias, w.n, "bias", b);
  if (!residual.is_none()) {
    r = residual.cast<F32Array>();
    bool same = r.ndim() == out.ndim();
    for (py::ssize_t i = 0; same && i < d; ++i) same = r.shape(i) == out.shape(i);
    if (!same) throw std::invalid_argument("residual must have the output's shape [..., N]");
    a.residual = r.data();
  }
  a.norm = norm;
  a.norm_weight = channel_vector(norm_weight, w.n, "norm_weight", nw);
  a.norm_bias = channel_vector(norm_bias, w.n, "norm_bias", nb);
  if (!(norm_eps >= 0.0f) || !std::isfinite(norm_eps)) throw std::invalid_argument("norm_eps must be finite and >= 0");
  a.norm_eps = norm_eps;
  py::gil_scoped_release release;
  linear(a);
}

// A new C-contiguous float32 array of `shape`, 64-byte aligned (numpy's allocator aligns to 16).
F32Array aligned_f32(const std::vector<py::ssize_t>& shape) {
  size_t n = 1;
  for (py::ssize_t d : shape) n *= static_cast<size_t>(d);
  const size_t bytes = std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
  float* y = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!y) throw std::bad_alloc();
  py::capsule owner(y, [](void* p) { std::free(p); });
  return F32Array(shape, y, owner);
}

// A layer's packed weight, bias and activation bound once, then called per input: a decode step
// makes ~50 calls per token, and parsing all of linear_py's arguments each time costs as much as a
// small layer's kernel. Only for weights validated beforehand (PackedWeight.buffer).
class BoundLinear {
 public:
  BoundLinear(U8Array buf, const py::object& bias, int act)
      : buf_(std::move(buf)), w_(view_of(buf_, false)), act_(activation_of(act)) {
    bias_ptr_ = channel_vector(bias, w_.n, "bias", bias_);
  }

  // activation(x @ W^T + bias) for x [..., K]: a new float32 array [..., N], 64-byte aligned.
  F32Array operator()(const F32Array& x) const {
    const int64_t M = rows_of(x, w_.k);
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    shape.back() = static_cast<py::ssize_t>(w_.n);
    F32Array out = aligned_f32(shape);
    LinearArgs a;
    a.w = w_;
    a.x = x.data();
    a.M = M;
    a.act = act_;
    a.y = out.mutable_data();
    a.bias = bias_ptr_;
    {
      py::gil_scoped_release release;
      linear(a);
    }
    return out;
  }

 private:
  U8Array buf_;
  PackedView w_;
  Activation act_;
  F32Array bias_;
  const float* bias_ptr_ = nullptr;
};

// Element strides of a float32 / uint8 array whose last dim is contiguous (numpy strides are bytes).
template <class T>
std::vector<int64_t> element_strides(const py::array& a, const char* what, bool last_contiguous = true) {
  std::vector<int64_t> s(a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (a.strides(i) % static_cast<py::ssize_t>(sizeof(T)) != 0)
      throw std::invalid_argument(std::string(what) + " has a stride that is not a whole number of elements");
    s[i] = a.strides(i) / static_cast<py::ssize_t>(sizeof(T));
  }
  if (last_contiguous && a.ndim() > 0 && a.shape(a.ndim() - 1) > 1 && s.back() != 1)
    throw std::invalid_argument(std::string(what) + " must be contiguous in its last dim");
  return s;
}

// q [B, H, Sq, D], k and v [B, H, Skv, D], out [B, H, Sq, D] (float32, any strides; the last dim
// contiguous except in k), or None for a new [B, Sq, H, D] array (the merged-heads layout) written
// through its [B, H, Sq, D] view; mask: None, or float32 (added) / bool (True = attend) of 4 dims each
// equal to the scores' [B, H, Sq, Skv] or 1 (broadcast); precision: "fp32" or "bf16" (see AttnPrecision).
// Returns out, or the new array.
AttnPrecision parse_precision(const std::string& s) {
  if (s == "fp32") return AttnPrecision::fp32;
  if (s == "bf16") return AttnPrecision::bf16;
  throw std::invalid_argument("precision must be 'fp32' or 'bf16', got '" + s + "'");
}

py::array attention_py(const py::array& q, const py::array& k, const py::array& v, const py::object& out_or_none,
                       const py::object& mask, float scale, const std::string& precision) {
  py::array out, result;
  const py::array* arrays[] = {&q, &k, &v};
  const char* names[] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) {
    if (arrays[i]->ndim() != 4 || !arrays[i]->dtype().is(py::dtype::of<float>()))
      throw std::invalid_argument(std::string(names[i]) + " must be a 4-D float32 array [B, H, S, D]");
  }
  const int64_t B = q.shape(0), H = q.shape(1), Sq = q.shape(2), D = q.shape(3), Skv = k.shape(2);
  for (const py::array* kv : {&k, &v}) {
    if (kv->shape(0) != B || kv->shape(1) != H || kv->shape(2) != Skv || kv->shape(3) != D)
      throw std::invalid_argument("k and v must have shape [B, H, Skv, D] matching q");
  }
  if (out_or_none.is_none()) {
    F32Array merged = aligned_f32({B, Sq, H, D});
    const py::ssize_t f = sizeof(float);
    out = py::array_t<float>({B, H, Sq, D}, {Sq * H * D * f, D * f, H * D * f, f}, merged.mutable_data(), merged);
    result = merged;
  } else {
    result = out = out_or_none.cast<py::array>();
    if (out.ndim() != 4 || !out.dtype().is(py::dtype::of<float>()))
      throw std::invalid_argument("out must be a 4-D float32 array [B, H, S, D]");
    if (out.shape(0) != B || out.shape(1) != H || out.shape(2) != Sq || out.shape(3) != D)
      throw std::invalid_argument("out must have q's shape");
    if (!out.writeable()) throw std::invalid_argument("out must be writeable");
  }
  if (!std::isfinite(scale)) throw std::invalid_argument("scale must be finite");
  const AttnPrecision prec = parse_precision(precision);
  AttnParams p{};
  p.B = B, p.H = H, p.Sq = Sq, p.Skv = Skv, p.D = D;
  p.scale = scale;
  const auto qs = element_strides<float>(q, "q"), ks = element_strides<float>(k, "k", false);
  const auto vs = element_strides<float>(v, "v"), os = element_strides<float>(out, "out");
  p.q = static_cast<const float*>(q.data()), p.q_sb = qs[0], p.q_sh = qs[1], p.q_ss = qs[2];
  p.k = static_cast<const float*>(k.data()), p.k_sb = ks[0], p.k_sh = ks[1], p.k_ss = ks[2], p.k_sd = ks[3];
  p.v = static_cast<const float*>(v.data()), p.v_sb = vs[0], p.v_sh = vs[1], p.v_ss = vs[2];
  p.o = static_cast<float*>(out.mutable_data()), p.o_sb = os[0], p.o_sh = os[1], p.o_ss = os[2];
  py::array m;
  if (!mask.is_none()) {
    m = mask.cast<py::array>();
    const bool is_bool = m.dtype().is(py::dtype::of<bool>());
    if (m.ndim() != 4 || !(is_bool || m.dtype().is(py::dtype::of<float>())))
      throw std::invalid_argument("mask must be a 4-D float32 or bool array");
    const int64_t want[4] = {B, H, Sq, Skv};
    std::vector<int64_t> ms(4);
    for (int i = 0; i < 4; ++i) {
      if (m.shape(i) != want[i] && m.shape(i) != 1)
        throw std::invalid_argument("mask dim " + std::to_string(i) + " is " + std::to_string(m.shape(i)) +
                                    ": it must be " + std::to_string(want[i]) + " or 1");
      const py::ssize_t item = is_bool ? 1 : 4;
      if (m.strides(i) % item != 0) throw std::invalid_argument("mask has a misaligned stride");
      ms[i] = m.shape(i) == 1 ? 0 : m.strides(i) / item;
    }
    p.m_sb = ms[0], p.m_sh = ms[1], p.m_sq = ms[2], p.m_sk = ms[3];
    if (is_bool) p.keep = static_cast<const uint8_t*>(m.data());
    else p.bias = static_cast<const float*>(m.data());
  }
  {
    py::gil_scoped_release release;
    attention(p, nullptr, prec);
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
  m.def("validate", [](const U8Array& buf) { return describe(view_of(buf, true), buf.size()); }, py::arg("buf"));
  m.def("describe", [](const U8Array& buf) { return describe(view_of(buf, false), buf.size()); }, py::arg("buf"));
  m.def("unpack", [](const U8Array& buf) {
    const PackedView v = view_of(buf, false);
    F32Array out({static_cast<py::ssize_t>(v.n), static_cast<py::ssize_t>(v.k)});
    unpack_dense(v, out.mutable_data());
    return out;
  }, py::arg("buf"));
  m.def("linear", &linear_py, py::arg("x"), py::arg("buf"), py::arg("bias"), py::arg("act"), py::arg("out"),
        py::arg("raw_s32") = false, py::arg("residual") = py::none(), py::arg("norm") = false,
        py::arg("norm_weight") = py::none(), py::arg("norm_bias") = py::none(), py::arg("norm_eps") = 1e-5f);
  py::class_<BoundLinear>(m, "BoundLinear")
      .def(py::init<U8Array, const py::object&, int>(), py::arg("buf"), py::arg("bias"), py::arg("act"))
      .def("__call__", &BoundLinear::operator(), py::arg("x"));
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
