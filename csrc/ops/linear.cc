#include "ops/linear.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#include "core/threadpool.h"

namespace sparsecpu {

namespace {

// Every kernel's tile height divides this; it also keeps threads' K-major writes on separate
// cache lines.
constexpr int64_t kRowAlign = 64;

Isa initial_isa() {
  const Isa best = cpu_info().best;
  const char* env = std::getenv("SPARSECPU_ISA");
  if (!env || !*env) return best;
  const Isa cap = parse_isa(env);  // throws on an unknown value: the module import fails with it
  return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
}

std::atomic<int>& isa_state() {
  static std::atomic<int> state{static_cast<int>(initial_isa())};
  return state;
}

// Scratch memory of the calling thread, grown on demand and kept: a fresh 100 KB+ allocation per
// call would be an mmap and a page fault storm on every layer.
class Scratch {
 public:
  template <class T>
  T* get(int slot, size_t count) {
    Buf& b = bufs_[slot];
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
  Buf bufs_[6];
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Group boundaries that give every chunk about the same work: stored blocks plus a fixed cost
// per group for its epilogue (equal nonzeros, not equal rows).
std::vector<int64_t> balanced_chunks(const PackedView& w, int chunks) {
  constexpr int64_t kGroupCost = 8;
  const int64_t G = static_cast<int64_t>(w.groups);
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

}  // namespace

Isa active_isa() { return static_cast<Isa>(isa_state().load()); }

void set_isa(Isa cap) {
  const Isa best = cpu_info().best;
  isa_state().store(static_cast<int>(static_cast<int>(cap) < static_cast<int>(best) ? cap : best));
}

const char* kernel_name(DType dtype) {
  return select_kernel(dtype == DType::int8 ? Op::spmm_s8 : Op::spmm_f32, active_isa()).name;
}

void linear(const LinearArgs& a) {
  const PackedView& w = a.w;
  if (a.M == 0) return;
  const Isa isa = active_isa();
  const bool int8 = w.dtype == DType::int8;
  const KernelEntry& spmm = select_kernel(int8 ? Op::spmm_s8 : Op::spmm_f32, isa);
  const int64_t K = static_cast<int64_t>(w.k), M = a.M, G = static_cast<int64_t>(w.groups);
  const int64_t Mpad = round_up(M, kRowAlign);
  Scratch& s = scratch();
  ParallelFor own;
  if (!a.parallel) own = {[](int n, const std::function<void(int)>& fn) { pool().run(n, fn); }, pool().size()};
  const ParallelFor& tp = a.parallel ? *a.parallel : own;
  // Below a few microseconds of work, waking a worker costs more than it saves.
  constexpr uint64_t kMinParallelWork = uint64_t(1) << 18;  // block x row products
  const int threads = (w.nnzb + 4 * w.groups) * static_cast<uint64_t>(Mpad) < kMinParallelWork ? 1 : tp.threads;

  SpmmParams p{};
  p.w = w;
  p.ldk = Mpad;
  p.y = a.y;
  p.ldy = static_cast<int64_t>(w.n);
  p.M = M;
  p.N = static_cast<int64_t>(w.n);
  p.act = a.act;
  p.raw_s32 = a.raw_s32;
  if (a.bias) {
    float* bias = s.get<float>(0, 4 * G);
    std::fill(bias, bias + 4 * G, 0.0f);
    std::copy(a.bias, a.bias + w.n, bias);
    p.bias = bias;
  }

  // Work is split one of two ways.
  //  - By rows, when x has at least as many 64-row units as there are threads: a task quantizes
  //    one unit and runs every group over it. One dispatch, no barrier, and each core reads only
  //    the K-major rows it wrote.
  //  - By output channels otherwise (few rows: the decode and small-batch case): the rows are
  //    prepared first, then groups are split into chunks of equal nonzero count.
  const auto kernel = reinterpret_cast<SpmmFn>(spmm.fn);
  const int64_t units = Mpad / kRowAlign;
  const int64_t tiles_per_unit = kRowAlign / spmm.mr;
  const bool by_rows = threads > 1 && units >= threads;

  uint8_t* xq = nullptr;
  float *xt = nullptr, *scale = nullptr, *scale_s = nullptr;
  int32_t *zp = nullptr, *zp_s = nullptr;
  QuantFn quant = nullptr;
  TransposeFn transpose = nullptr;
  if (int8) {
    xq = s.get<uint8_t>(1, K * Mpad);
    scale = s.get<float>(2, Mpad);
    zp = s.get<int32_t>(3, Mpad);
    scale_s = s.get<float>(4, Mpad);
    zp_s = s.get<int32_t>(5, Mpad);
    quant = reinterpret_cast<QuantFn>(select_kernel(Op::quant_u8, isa).fn);
    p.xk = xq;
    p.x_scale = scale_s;
    p.x_zp = zp_s;
  } else {
    xt = s.get<float>(1, K * Mpad);
    transpose = reinterpret_cast<TransposeFn>(select_kernel(Op::transpose_f32, isa).fn);
    p.xk = xt;
  }
  // Rows [u0, u1) (in 64-row units) to K-major; returns false on NaN/Inf.
  auto prepare = [&](int64_t u0, int64_t u1) {
    const int64_t m0 = u0 * kRowAlign, m1 = u1 * kRowAlign;
    if (!int8) return transpose(a.x, M, K, m0, m1, xt, Mpad);
    const bool ok = quant(a.x, M, K, m0, m1, xq, Mpad, scale, zp);
    // Per-row parameters in the order the kernel's accumulator lanes hold the rows.
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t tile = m / spmm.mr * spmm.mr;
      const int64_t at = tile + slab_order_index(m - tile, spmm.lanes);
      scale_s[at] = scale[m];
      zp_s[at] = zp[m];
    }
    return ok;
  };
  auto run_tiles = [&](int64_t g0, int64_t g1, int64_t u0, int64_t u1) {
    for (int64_t t = u0 * tiles_per_unit; t < u1 * tiles_per_unit && t * spmm.mr < M; ++t) kernel(p, g0, g1, t * spmm.mr);
  };

  // Tasks are claimed dynamically (see ThreadPool::run): one per 64-row unit, or one per chunk.
  std::vector<char> finite(units, 1);
  if (by_rows) {
    tp.run(static_cast<int>(units), [&](int u) {
      finite[u] = prepare(u, u + 1);
      if (finite[u]) run_tiles(0, G, u, u + 1);
    });
  } else {
    tp.run(static_cast<int>(units), [&](int u) { finite[u] = prepare(u, u + 1); });
  }
  for (char f : finite) {
    if (!f) throw std::invalid_argument("x contains NaN or Inf");
  }
  if (!by_rows) {
    // Two chunks per thread: a thread that loses its core for a while leaves work to the others.
    const int chunks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(2 * threads, G)));
    const std::vector<int64_t> bounds = balanced_chunks(w, chunks);
    tp.run(chunks, [&](int t) { run_tiles(bounds[t], bounds[t + 1], 0, units); });
  }
}

}  // namespace sparsecpu
