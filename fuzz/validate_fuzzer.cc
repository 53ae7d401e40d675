// libFuzzer target: sparsecpu::validate on untrusted packed buffers, and the kernels on what it accepts.
//
// The Python targets (fuzz_packed.py, fuzz_ort.py) reach the same code through the bindings at a few
// thousand inputs a second; this one calls csrc/core directly, 100x faster, with the C++ coverage
// steering the mutations. An accepted buffer must be safe to compute with: unpack_dense and the linear
// op (LinearRequest) run on it at every ISA level this machine can run (natively or emulated), and the
// int8 accumulators (raw_s32) of each level equal the reference kernel's bit for bit, as
// tests/test_kernels.py demands of valid weights. Built and run by scripts/fuzz.sh
// (clang -fsanitize=fuzzer,address,undefined).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#include "core/cpu.h"
#include "core/format.h"
#include "ops/linear.h"

namespace {

using namespace sparsecpu;

// Accepted buffers are computed with only up to these sizes (a valid header may claim K = 2**31 - 1
// with no blocks; materializing that is the caller's request, not a defect).
constexpr uint64_t kMaxDense = uint64_t(1) << 14;
constexpr uint64_t kMaxK = uint64_t(1) << 13;

std::vector<Target> targets() {
  std::vector<Target> out = {{Isa::reference, false}};
  const Isa best = cpu_info().best;
  for (Isa isa : {Isa::avx2, Isa::avx512, Isa::avx512_vnni}) {
    if (static_cast<int>(best) >= static_cast<int>(isa)) out.push_back({isa, false});
  }
  if (emulation_available()) {
    for (Isa isa : {Isa::avx512, Isa::avx512_vnni}) {
      if (static_cast<int>(best) < static_cast<int>(isa)) out.push_back({isa, true});
    }
  }
  return out;
}

// Tasks run in order on the calling thread: the fuzzer stays single-threaded.
const ParallelFor kSerial{[](int n, const std::function<void(int)>& fn) {
                            for (int t = 0; t < n; ++t) fn(t);
                          },
                          1};

[[noreturn]] void fail(const char* what, const PackedView& v, int64_t m, Target t, uint64_t at) {
  std::fprintf(stderr, "FINDING: %s (%s %s N=%llu K=%llu, M=%lld, level %s, element %llu)\n", what,
               format_name(v.format), dtype_name(v.dtype), static_cast<unsigned long long>(v.n),
               static_cast<unsigned long long>(v.k), static_cast<long long>(m), target_name(t).c_str(),
               static_cast<unsigned long long>(at));
  std::abort();
}

void run_kernels(const PackedView& v) {
  static const std::vector<Target> levels = targets();
  std::vector<float> dense(v.n * v.k);
  unpack_dense(v, dense.data());
  std::vector<float> col(v.n);
  for (uint64_t kk = 0; kk < v.k; kk += 1 + v.k / 4) weight_column(v, kk, col.data());
  for (int64_t m : {3, 9}) {  // the skinny kernel (M <= 8) and the row tile
    std::vector<float> x(static_cast<size_t>(m) * v.k);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>((i * 2654435761u) >> 24) % 17 - 8) * 0.25f;
    std::vector<float> ref, y(static_cast<size_t>(m) * v.n);
    for (const Target& t : levels) {
      set_target(t);
      LinearCall call;
      call.x = TensorArg::of(x.data(), {m, static_cast<int64_t>(v.k)});
      call.raw_s32 = v.dtype == DType::int8;
      LinearRequest(v, call).run(y.data(), &kSerial);
      if (ref.empty()) {
        ref = y;
      } else if (call.raw_s32 && std::memcmp(ref.data(), y.data(), y.size() * sizeof(float)) != 0) {
        uint64_t at = 0;
        while (std::memcmp(&ref[at], &y[at], sizeof(float)) == 0) ++at;
        fail("int8 accumulators differ from the reference kernel's", v, m, t, at);
      }
      if (!call.raw_s32) {
        // fp32: the same sums in another order; within 1e-4 of sum |x| |w| where that is finite.
        for (uint64_t r = 0; r < static_cast<uint64_t>(m); ++r) {
          for (uint64_t c = 0; c < v.n; ++c) {
            double mag = 0;
            for (uint64_t kk = 0; kk < v.k; ++kk) mag += std::fabs(double(x[r * v.k + kk]) * dense[c * v.k + kk]);
            const double d = std::fabs(double(y[r * v.n + c]) - ref[r * v.n + c]);
            if (std::isfinite(mag) && mag < 1e30 && !(d <= 1e-4 * mag + 1e-30))
              fail("fp32 output differs from the reference kernel's", v, m, t, r * v.n + c);
          }
        }
      }
    }
  }
  set_target(levels.front());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A heap copy of exactly `size` bytes (malloc aligns it to 16, as the library's callers must align
  // theirs to 8): ASan reports any read past its end.
  std::unique_ptr<uint8_t[]> buf(new uint8_t[size ? size : 1]);
  if (size) std::memcpy(buf.get(), data, size);
  PackedView v;
  try {
    v = validate(buf.get(), size);
  } catch (const std::invalid_argument&) {
    return 0;  // the documented outcome; any other exception escapes and aborts: a finding
  }
  // Validation holds for these bytes: view_trusted agrees, and the kernels may read them.
  v = view_trusted(buf.get(), size);
  if (v.n * v.k > 0 && v.n * v.k <= kMaxDense && v.k <= kMaxK) run_kernels(v);
  return 0;
}
