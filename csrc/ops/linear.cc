#include "ops/linear.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "core/threadpool.h"

namespace sparsecpu {

namespace {

// Every kernel's tile height divides this; it also keeps threads' K-major writes on separate
// cache lines.
constexpr int64_t kRowAlign = 64;

Isa capped(Isa cap) {
  const Isa best = cpu_info().best;
  return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
}

// The active target as one word (level | emulated << 8), so that a call reads it at once.
int encode(Target t) { return static_cast<int>(t.isa) | (t.emulated ? 0x100 : 0); }

int initial_target() {
  const char* env = std::getenv("SPARSECPU_ISA");
  if (!env || !*env) return encode({cpu_info().best, false});
  return encode({capped(parse_isa(env)), false});  // throws on an unknown value: the module import fails with it
}

std::atomic<int>& target_state() {
  static std::atomic<int> state{initial_target()};
  return state;
}

// What each buffer of a thread's Scratch holds.
enum class Slot : int {
  bias,          // the bias, zero-padded to the kernel's channel tiles
  x,             // the activations in the kernel's layout: u8 (K-major or row-major) or fp32 K-major
  x_scale,       // int8: per-row quantization scale and zero point, in row order
  x_zp,
  x_scale_slab,  // K-major int8: the same in slab order (see slab_order_index)
  x_zp_slab,
  absmax,        // max |x| per row: the outlier check
  outlier_x,     // the outlier path: x with the outlier columns zeroed
  outlier_sum,   // the outlier path: those columns' fp32 product, and one dequantized weight column
  count
};

// Scratch memory of the calling thread, grown on demand and kept: a fresh 100 KB+ allocation per
// call would be an mmap and a page fault storm on every layer.
class Scratch {
 public:
  template <class T>
  T* get(Slot slot, size_t count) {
    Buf& b = bufs_[static_cast<int>(slot)];
    const size_t bytes = std::max<size_t>(64, count * sizeof(T));
    if (b.size < bytes) {
      b.ptr.reset(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) & ~size_t(63))));
      if (!b.ptr) throw std::bad_alloc();
      b.size = bytes;
    }
    return reinterpret_cast<T*>(b.ptr.get());
  }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  struct Buf {
    std::unique_ptr<uint8_t, Free> ptr;
    size_t size = 0;
  };
  Buf bufs_[static_cast<int>(Slot::count)];
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Tile boundaries that give every chunk about the same work: stored blocks (bsr: per 4-channel group;
// panel: stored columns per 16-channel panel, from its column offsets) plus a fixed cost per tile for
// its epilogue (equal nonzeros, not equal rows).
std::vector<int64_t> balanced_chunks(const PackedView& w, int chunks) {
  const bool panel = w.format == Format::panel;
  const int64_t kGroupCost = panel ? 32 : 8;
  const int64_t G = static_cast<int64_t>(panel ? w.panels : w.groups);
  auto cost = [&](int64_t g) { return static_cast<int64_t>(w.row_ptr[g]) + kGroupCost * g; };
  const int64_t total = cost(G);
  std::vector<int64_t> bounds(chunks + 1, G);
  bounds[0] = 0;
  for (int c = 1; c < chunks; ++c) {
    const int64_t target = total * c / chunks;
    int64_t lo = bounds[c - 1], hi = G;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (cost(mid) < target) lo = mid + 1;
      else hi = mid;
    }
    bounds[c] = lo;
  }
  return bounds;
}

// Rows at most this many take the skinny kernels (vectorized over channels, not rows).
constexpr int64_t kSkinnyRows = 8;

bool has_outliers(const float* absmax, int64_t M, float threshold) {
  bool any = false;
  for (int64_t m = 0; m < M; ++m) any |= absmax[m] > threshold;
  return any;
}

// The bias zero-padded to the kernel's channel tiles, or null without one.
const float* padded_bias(Scratch& s, const LinearArgs& a, int64_t padded) {
  if (!a.bias) return nullptr;
  float* bias = s.get<float>(Slot::bias, padded);
  std::fill(bias, bias + padded, 0.0f);
  std::copy(a.bias, a.bias + a.w.n, bias);
  return bias;
}

// Multiply-adds of a call below which it runs on the calling thread: waking the pool's workers would
// cost more than they save. One threshold for the kernels that read x row-major (dense, panel,
// skinny), one for the 4x1 SpMM over K-major activations.
constexpr uint64_t kMinParallelMacsRows = uint64_t(1) << 16;
constexpr uint64_t kMinParallelMacsKMajor = uint64_t(1) << 20;

// Whether x[0..n) holds no NaN or Inf (exponent bits all ones), in integer ops that vectorize.
bool all_finite(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    bad |= (bits & 0x7f800000u) == 0x7f800000u;
  }
  return bad == 0;
}

// The parameters of a row kernel (dense GEMM, skinny SpMM) that come straight from the call; the
// activations and their quantization are the caller's to fill in.
RowParams row_params(const LinearArgs& a, const float* bias) {
  RowParams p{};
  p.w = a.w;
  p.y = a.y;
  p.ldy = static_cast<int64_t>(a.w.n);
  p.M = a.M;
  p.N = static_cast<int64_t>(a.w.n);
  p.act = a.act;
  p.raw_s32 = a.raw_s32;
  p.bias = bias;
  return p;
}

// The pool the call splits its work over: the caller's (ONNX Runtime's intra-op pool) or sparsecpu's own.
ParallelFor parallel_of(const LinearArgs& a) {
  if (a.parallel) return *a.parallel;
  return {&parallel_run, get_num_threads()};
}

// The threads a call of `macs` multiply-adds runs on: the pool's, or 1 below `min_macs`.
int threads_for(const ParallelFor& tp, uint64_t macs, uint64_t min_macs) { return macs < min_macs ? 1 : tp.threads; }

bool has_post(const LinearArgs& a) { return a.residual != nullptr || a.norm; }

// The residual add and LayerNorm on rows [m0, m1) of y, once the product is in them.
void post_rows(const LinearArgs& a, int64_t m0, int64_t m1) {
  const int64_t N = static_cast<int64_t>(a.w.n);
  float* y = a.y + m0 * N;
  const float* r = a.residual ? a.residual + m0 * N : nullptr;
  if (a.norm) {
    const auto add_norm = use_kernel<Op::add_norm_f32>(active_target()).fn;
    add_norm(y, r, m1 - m0, N, a.norm_weight, a.norm_bias, a.norm_eps);
  } else {
    const auto add_act = use_kernel<Op::add_act_f32>(active_target()).fn;
    add_act(r, y, (m1 - m0) * N, Activation::none);
  }
}

// Runs fn(c0, c1) over channel tiles [0, tiles) split in chunks, two per thread (a thread that loses
// its core for a while leaves work to the others): equal nonzeros for a block-sparse weight (tiles
// are groups), equal tiles for a dense one (tiles are panels).
template <class Fn>
void over_channel_chunks(const ParallelFor& tp, int threads, const PackedView& w, int64_t tiles, Fn fn) {
  const int chunks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads > 1 ? 2 * threads : 1, tiles)));
  std::vector<int64_t> bounds(chunks + 1);
  if (w.format == Format::dense) {
    for (int c = 0; c <= chunks; ++c) bounds[c] = tiles * c / chunks;
  } else {
    bounds = balanced_chunks(w, chunks);
  }
  if (chunks == 1) fn(bounds[0], bounds[1]);
  else tp.run(chunks, [&](int t) { fn(bounds[t], bounds[t + 1]); });
}

}  // namespace

Target active_target() {
  const int s = target_state().load();
  return {static_cast<Isa>(s & 0xff), (s & 0x100) != 0};
}

Target set_target(Target want) {
  Target t{capped(want.isa), false};
  if (want.emulated) {
    if (!emulatable(want.isa))
      throw std::invalid_argument(std::string("the ") + isa_name(want.isa) + " level has no emulated build");
    if (!emulation_available())
      throw std::invalid_argument("the emulated AVX-512 and AMX levels need a CPU with AVX2, FMA and F16C");
    t = want;
  }
  target_state().store(encode(t));
  return t;
}

const char* kernel_name(DType dtype) {
  return select_kernel(dtype == DType::int8 ? Op::spmm_s8 : Op::spmm_f32, active_target()).name;
}

namespace {

// How a call's product is split over the pool: see run_split.
struct Split {
  ParallelFor tp;
  int threads;    // 1: all of it on the calling thread
  int64_t units;  // 64-row units of x
  bool by_rows;
  int64_t tiles;  // channel tiles (4-channel groups or 16-channel panels)
};

// The task code of linear_kmajor and linear_rows, which differ in how they prepare the activations
// and in the kernel they run. Work is split one of two ways:
//  - By rows (s.by_rows): a task prepares one 64-row unit, runs every channel tile over it, then adds
//    the residual and normalizes its rows while they are in its core's caches. One dispatch, no
//    barrier, and each core reads only the activations it wrote.
//  - By output channels otherwise (few rows: the decode and small-batch case): every unit is prepared
//    first, then the tiles are split into chunks (over_channel_chunks).
// prepare(u) readies unit u and returns false if its rows hold NaN or Inf; unit(u) runs every tile
// over unit u; chunk(c0, c1) runs tiles [c0, c1) over every row. Tasks are claimed dynamically (see
// ThreadPool::run). With absmax (max |x| per row, which prepare fills: the outlier check), a unit
// computes only if its own rows hold no outlier; if some row does, nothing more is computed and
// false is returned, for the call to be redone by the outlier path (rare by design) while the common
// case keeps its single dispatch. post_done tells whether the residual and norm were applied.
template <class Prepare, class Unit, class Chunk>
bool run_split(const LinearArgs& a, const Split& s, const float* absmax, bool& post_done, Prepare prepare, Unit unit,
               Chunk chunk) {
  const float threshold = a.w.outlier_threshold;
  auto rows_end = [&](int64_t u) { return std::min(a.M, (u + 1) * kRowAlign); };
  std::vector<char> finite(s.units, 1);
  if (s.by_rows) {
    const bool post = has_post(a);
    s.tp.run(static_cast<int>(s.units), [&](int u) {
      finite[u] = prepare(u);
      const int64_t m0 = u * kRowAlign, m1 = rows_end(u);
      if (finite[u] && !(absmax && has_outliers(absmax + m0, m1 - m0, threshold))) {
        unit(u);
        if (post) post_rows(a, m0, m1);
      }
    });
    post_done = true;
  } else if (s.threads == 1 || s.units == 1) {
    for (int64_t u = 0; u < s.units; ++u) finite[u] = prepare(u);
  } else {
    s.tp.run(static_cast<int>(s.units), [&](int u) { finite[u] = prepare(u); });
  }
  for (char f : finite) {
    if (!f) throw std::invalid_argument("x contains NaN or Inf");
  }
  if (absmax && has_outliers(absmax, a.M, threshold)) return false;
  if (!s.by_rows) over_channel_chunks(s.tp, s.threads, a.w, s.tiles, chunk);
  return true;
}

// The 4x1 SpMM over K-major activations (M > kSkinnyRows, or fp32). With check_outliers, every
// row is quantized first and nothing is computed (false returned) if some |x| exceeds the
// weight's outlier threshold.
bool linear_kmajor(const LinearArgs& a, bool check_outliers, bool& post_done) {
  const PackedView& w = a.w;
  const Target isa = active_target();
  const bool int8 = w.dtype == DType::int8;
  const Kernel<SpmmFn> spmm = int8 ? use_kernel<Op::spmm_s8>(isa) : use_kernel<Op::spmm_f32>(isa);
  const int64_t K = static_cast<int64_t>(w.k), M = a.M, G = static_cast<int64_t>(w.groups);
  const int64_t Mpad = round_up(M, kRowAlign);
  Scratch& s = scratch();
  const ParallelFor tp = parallel_of(a);
  // 4 multiply-adds per stored block and row, and 4 blocks' worth per group for its epilogue.
  const int threads = threads_for(tp, 4 * (w.nnzb + 4 * w.groups) * static_cast<uint64_t>(Mpad), kMinParallelMacsKMajor);
  const int64_t units = Mpad / kRowAlign;
  const Split split{tp, threads, units, threads > 1 && units >= threads, G};

  SpmmParams p{};
  p.w = w;
  p.ldk = Mpad;
  p.y = a.y;
  p.ldy = static_cast<int64_t>(w.n);
  p.M = M;
  p.N = static_cast<int64_t>(w.n);
  p.act = a.act;
  p.raw_s32 = a.raw_s32;
  // A tile reads K-major activation rows in the (data-dependent) order of the column indices. Once
  // the rows one thread works on (K x 64 of them) no longer sit in its L2 beside the weights
  // streaming through, they come from L3 or memory: fetch them 4 quads ahead. Measured on Zen 3:
  // 10-20% faster from 196 KB of rows up, slightly slower below.
  constexpr uint64_t kPrefetchFromBytes = uint64_t(128) << 10;
  p.prefetch = w.k * kRowAlign * (int8 ? 1 : 4) >= kPrefetchFromBytes ? 16 : 0;
  p.bias = padded_bias(s, a, 4 * G);

  const auto kernel = spmm.fn;
  const int64_t tiles_per_unit = kRowAlign / spmm.rows;
  uint8_t* xq = nullptr;
  float *xt = nullptr, *scale = nullptr, *scale_s = nullptr, *absmax = nullptr;
  int32_t *zp = nullptr, *zp_s = nullptr;
  QuantFn quant = nullptr;
  TransposeFn transpose = nullptr;
  if (int8) {
    xq = s.get<uint8_t>(Slot::x, K * Mpad);
    scale = s.get<float>(Slot::x_scale, Mpad);
    zp = s.get<int32_t>(Slot::x_zp, Mpad);
    scale_s = s.get<float>(Slot::x_scale_slab, Mpad);
    zp_s = s.get<int32_t>(Slot::x_zp_slab, Mpad);
    if (check_outliers) absmax = s.get<float>(Slot::absmax, Mpad);
    quant = use_kernel<Op::quant_u8>(isa).fn;
    p.xk = xq;
    p.x_scale = scale_s;
    p.x_zp = zp_s;
  } else {
    xt = s.get<float>(Slot::x, K * Mpad);
    transpose = use_kernel<Op::transpose_f32>(isa).fn;
    p.xk = xt;
  }
  // Unit u's 64 rows to K-major (rows >= M as zeros).
  auto prepare = [&](int64_t u) {
    const int64_t m0 = u * kRowAlign, m1 = m0 + kRowAlign;
    if (!int8) return transpose(a.x, M, K, m0, m1, xt, Mpad);
    const bool ok = quant(a.x, M, K, m0, m1, xq, Mpad, scale, zp, absmax);
    // Per-row parameters in the order the kernel's accumulator lanes hold the rows.
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t tile = m / spmm.rows * spmm.rows;
      const int64_t at = tile + slab_order_index(m - tile, spmm.rows, spmm.lanes);
      scale_s[at] = scale[m];
      zp_s[at] = zp[m];
    }
    return ok;
  };
  auto run_tiles = [&](int64_t g0, int64_t g1, int64_t u0, int64_t u1) {
    for (int64_t t = u0 * tiles_per_unit; t < u1 * tiles_per_unit && t * spmm.rows < M; ++t) kernel(p, g0, g1, t * spmm.rows);
  };
  return run_split(a, split, absmax, post_done, prepare, [&](int64_t u) { run_tiles(0, G, u, u + 1); },
                   [&](int64_t g0, int64_t g1) { run_tiles(g0, g1, 0, units); });
}

// Dense int8 and panel int8 (any M) and skinny int8 BSR (M <= kSkinnyRows): activations quantized
// row-major, kernels vectorized over output channels (or gathering columns into AMX tiles: panel).
// Same outlier contract as linear_kmajor.
bool linear_rows(const LinearArgs& a, bool check_outliers, bool& post_done) {
  const PackedView& w = a.w;
  const Target isa = active_target();
  const bool panel = w.format == Format::panel;
  const bool dense = w.format == Format::dense || panel;  // 16-channel panels
  const auto kernel = (panel   ? use_kernel<Op::spmm_panel_s8>(isa)
                       : dense ? use_kernel<Op::gemm_s8>(isa)
                               : use_kernel<Op::spmm_s8_skinny>(isa)).fn;
  const auto quant = use_kernel<Op::quant_u8_rows>(isa).fn;
  const int64_t K = static_cast<int64_t>(w.k), M = a.M;
  const int64_t ldx = round_up(std::max<int64_t>(K, 1), 64);
  // Channel tiles: 16-channel panels (dense) or 4-channel groups (skinny).
  const int64_t tiles = dense ? static_cast<int64_t>(w.panels) : static_cast<int64_t>(w.groups);
  const int64_t padded = dense ? 16 * tiles : 4 * tiles;
  Scratch& s = scratch();
  const ParallelFor tp = parallel_of(a);

  RowParams p = row_params(a, padded_bias(s, a, padded));
  // A dense weight past the last-level cache (a GPT-2 lm_head: 38.6 MB) comes from memory at every call.
  constexpr uint64_t kStreamFromBytes = uint64_t(16) << 20;
  p.stream_weights = w.format == Format::dense && static_cast<uint64_t>(w.panels) * 64 * w.kq >= kStreamFromBytes;
  p.xq = s.get<uint8_t>(Slot::x, M * ldx);
  p.ldx = ldx;
  float* scale = s.get<float>(Slot::x_scale, M);
  int32_t* zp = s.get<int32_t>(Slot::x_zp, M);
  float* absmax = check_outliers ? s.get<float>(Slot::absmax, M) : nullptr;
  p.x_scale = scale;
  p.x_zp = zp;
  const uint64_t macs = (panel   ? kDensePanel * w.nnzb
                         : dense ? static_cast<uint64_t>(w.panels) * 64 * w.kq
                                 : 4 * w.nnzb) *
                        static_cast<uint64_t>(M);
  const int threads = threads_for(tp, macs, kMinParallelMacsRows);
  const int64_t units = (M + kRowAlign - 1) / kRowAlign;
  // By rows only when the 64-row units share out evenly (M = 65 would leave one thread 1 row).
  const bool by_rows = threads > 1 && units >= threads && (units % threads == 0 || units >= 4 * threads);
  auto rows_end = [&](int64_t u) { return std::min<int64_t>(M, (u + 1) * kRowAlign); };
  auto prepare = [&](int64_t u) {
    return quant(a.x, M, K, u * kRowAlign, rows_end(u), const_cast<uint8_t*>(p.xq), ldx, scale, zp, absmax);
  };
  // Rows in 64-row blocks, so that a block's activations stay in L2 across the panels.
  auto rows_over = [&](int64_t c0, int64_t c1, int64_t u) { kernel(p, c0, c1, u * kRowAlign, rows_end(u)); };
  return run_split(a, {tp, threads, units, by_rows, tiles}, absmax, post_done, prepare,
                   [&](int64_t u) { rows_over(0, tiles, u); },
                   [&](int64_t c0, int64_t c1) {
                     for (int64_t u = 0; u < units; ++u) rows_over(c0, c1, u);
                   });
}

// fp32 block-sparse with M <= kSkinnyRows: the skinny kernel reads x as it is (row-major, nothing
// to prepare), over chunks of channel groups.
void linear_f32_skinny(const LinearArgs& a) {
  const PackedView& w = a.w;
  const int64_t K = static_cast<int64_t>(w.k), M = a.M, G = static_cast<int64_t>(w.groups);
  if (!all_finite(a.x, M * K)) throw std::invalid_argument("x contains NaN or Inf");
  const auto kernel = use_kernel<Op::spmm_f32_skinny>(active_target()).fn;
  const ParallelFor tp = parallel_of(a);
  RowParams p = row_params(a, padded_bias(scratch(), a, 4 * G));
  p.xf = a.x;
  p.ldx = K;
  const int threads = threads_for(tp, 4 * w.nnzb * static_cast<uint64_t>(M), kMinParallelMacsRows);
  over_channel_chunks(tp, threads, w, G, [&](int64_t g0, int64_t g1) { kernel(p, g0, g1, 0, M); });
}

// The product (and the activation); post_done tells whether the residual and norm were applied too.
bool linear_int8_or_fp32(const LinearArgs& a, bool check_outliers, bool& post_done) {
  post_done = false;
  if (a.w.dtype == DType::fp32 && a.M <= kSkinnyRows) {
    linear_f32_skinny(a);
    return true;
  }
  const bool rows = a.w.dtype == DType::int8 && (a.w.format != Format::bsr || a.M <= kSkinnyRows);
  return rows ? linear_rows(a, check_outliers, post_done) : linear_kmajor(a, check_outliers, post_done);
}

// Input columns holding a value above the threshold in some row (LLM.int8() decomposition).
std::vector<int64_t> outlier_columns(const float* x, int64_t M, int64_t K, float threshold) {
  std::vector<char> hit(K, 0);
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    for (int64_t k = 0; k < K; ++k) hit[k] |= std::fabs(row[k]) > threshold;
  }
  std::vector<int64_t> cols;
  for (int64_t k = 0; k < K; ++k) {
    if (hit[k]) cols.push_back(k);
  }
  return cols;
}

// The outlier path: the int8 product runs on x with the outlier columns zeroed (so that they do
// not set the rows' quantization ranges, and contribute exactly zero), and those columns are
// multiplied in fp32 with the dequantized weight and added before the activation.
void linear_outliers(const LinearArgs& a) {
  const PackedView& w = a.w;
  const int64_t K = static_cast<int64_t>(w.k), M = a.M, N = static_cast<int64_t>(w.n);
  const std::vector<int64_t> cols = outlier_columns(a.x, M, K, w.outlier_threshold);
  Scratch& s = scratch();
  float* xz = s.get<float>(Slot::outlier_x, M * K);
  std::copy(a.x, a.x + M * K, xz);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k : cols) xz[m * K + k] = 0.0f;
  }
  LinearArgs inner = a;
  inner.x = xz;
  inner.act = a.raw_s32 ? a.act : Activation::none;
  inner.residual = nullptr;
  inner.norm = false;
  bool post_done = false;
  linear_int8_or_fp32(inner, false, post_done);
  if (a.raw_s32) return;
  float* c = s.get<float>(Slot::outlier_sum, M * N + N);
  float* wcol = c + M * N;
  std::fill(c, c + M * N, 0.0f);
  for (int64_t k : cols) {
    weight_column(w, static_cast<uint64_t>(k), wcol);
    for (int64_t m = 0; m < M; ++m) {
      const float xv = a.x[m * K + k];
      float* cm = c + m * N;
      for (int64_t n = 0; n < N; ++n) cm[n] += xv * wcol[n];
    }
  }
  const auto add_act = use_kernel<Op::add_act_f32>(active_target()).fn;
  add_act(c, a.y, M * N, a.act);
}

// The residual and norm over all rows, after the product: 64-row units over the pool.
void post_pass(const LinearArgs& a) {
  const int64_t units = (a.M + kRowAlign - 1) / kRowAlign;
  const ParallelFor tp = parallel_of(a);
  auto unit = [&](int u) { post_rows(a, u * kRowAlign, std::min(a.M, (u + 1) * kRowAlign)); };
  if (units == 1 || tp.threads == 1) {
    post_rows(a, 0, a.M);
  } else {
    tp.run(static_cast<int>(units), unit);
  }
}

// The op, on a checked call.
void linear(const LinearArgs& a) {
  if (a.M == 0) return;
  const bool check = a.w.dtype == DType::int8 && a.w.outlier_threshold > 0.0f;
  bool post_done = false;
  if (!linear_int8_or_fp32(a, check, post_done)) {
    linear_outliers(a);
    post_done = false;
  }
  if (has_post(a) && !post_done) post_pass(a);
}

// A per-channel vector of the call: float32 [N], or null when not given.
const float* channel_vector(const TensorArg& v, const char* what, uint64_t n) {
  if (!v.given) return nullptr;
  if (v.elem != Elem::f32 || v.dims.size() != 1 || static_cast<uint64_t>(v.dims[0]) != n)
    throw std::invalid_argument(std::string(what) + " must be a float32 tensor of shape [" + std::to_string(n) +
                                "], got " + describe(v));
  return static_cast<const float*>(v.data);
}

// The checked settings of a call: all of LinearArgs but x, its rows, the residual and y.
LinearArgs settings_of(const PackedView& w, const LinearCall& c) {
  LinearArgs a;
  a.w = w;
  a.act = parse_activation(c.activation);
  if (!(c.norm_eps >= 0.0f) || !std::isfinite(c.norm_eps))
    throw std::invalid_argument("norm_eps (epsilon) must be finite and >= 0, got " + float_str(c.norm_eps));
  a.bias = channel_vector(c.bias, "bias", w.n);
  a.norm_weight = channel_vector(c.norm_weight, "norm_weight (Scale)", w.n);
  a.norm_bias = channel_vector(c.norm_bias, "norm_bias (B)", w.n);
  if (!c.norm && (c.norm_weight.given || c.norm_bias.given))
    throw std::invalid_argument(std::string(c.norm_weight.given ? "norm_weight (Scale)" : "norm_bias (B)") +
                                " is given but norm is off");
  if (c.raw_s32 && (c.norm || c.residual.given))
    throw std::invalid_argument("raw_s32 returns the accumulators: no residual or norm");
  a.norm = c.norm;
  a.norm_eps = c.norm_eps;
  a.raw_s32 = c.raw_s32;
  return a;
}

}  // namespace

Activation parse_activation(const std::string& name) {
  std::string names;
  for (const ActivationName& a : kActivations) {
    if (name == a.name) return a.act;
    names += (names.empty() ? "" : ", ") + std::string(a.name);
  }
  throw std::invalid_argument("activation must be one of " + names + ", got '" + name + "'");
}

void LinearRequest::check_settings(const PackedView& w, const LinearCall& call) { settings_of(w, call); }

LinearRequest::LinearRequest(const PackedView& w, const LinearCall& c) : args_(settings_of(w, c)) {
  const TensorArg& x = c.x;
  if (!x.given || x.elem != Elem::f32 || x.dims.empty() || static_cast<uint64_t>(x.dims.back()) != w.k)
    throw std::invalid_argument("x must be a float32 tensor of shape [..., " + std::to_string(w.k) +
                                "], got " + describe(x));
  y_dims_ = x.dims;
  y_dims_.back() = static_cast<int64_t>(w.n);
  args_.x = static_cast<const float*>(x.data);
  args_.M = 1;
  for (size_t i = 0; i + 1 < x.dims.size(); ++i) args_.M *= x.dims[i];
  if (c.residual.given) {
    if (c.residual.elem != Elem::f32 || c.residual.dims != y_dims_)
      throw std::invalid_argument("residual (R) must be a float32 tensor of the output's shape " + dims_str(y_dims_) +
                                  ", got " + describe(c.residual));
    args_.residual = static_cast<const float*>(c.residual.data);
  }
  if (c.out.given && (c.out.elem != Elem::f32 || c.out.dims != y_dims_))
    throw std::invalid_argument("out must be a float32 tensor of the output's shape " + dims_str(y_dims_) + ", got " +
                                describe(c.out));
}

void LinearRequest::run(float* y, const ParallelFor* parallel) const {
  LinearArgs a = args_;
  a.y = y;
  a.parallel = parallel;
  linear(a);
}

const char* kernel_for(const PackedView& w, int64_t M) {
  const Target isa = active_target();
  if (w.dtype == DType::fp32) return select_kernel(M <= kSkinnyRows ? Op::spmm_f32_skinny : Op::spmm_f32, isa).name;
  if (w.format == Format::dense) return select_kernel(Op::gemm_s8, isa).name;
  if (w.format == Format::panel) return select_kernel(Op::spmm_panel_s8, isa).name;
  return select_kernel(M <= kSkinnyRows ? Op::spmm_s8_skinny : Op::spmm_s8, isa).name;
}

}  // namespace sparsecpu
