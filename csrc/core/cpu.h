// CPU feature detection (CPUID + XGETBV), compiled for baseline x86-64.
#pragma once
#include <string>
#include <vector>

namespace sparsecpu {

// Ordered ISA levels: each one implies the ones before it. amx = avx512_vnni + AMX-TILE/INT8/BF16, the OS's
// tile state (XCR0) and Linux's per-process permission for it: its kernels use AVX-512 beside the tiles.
enum class Isa : int { reference = 0, avx2 = 1, avx512 = 2, avx512_vnni = 3, amx = 4 };

const char* isa_name(Isa isa);
// Parses a level name; throws std::invalid_argument naming the accepted values.
Isa parse_isa(const std::string& name);

// What dispatch runs: a level and, for the AVX-512 and AMX levels, whether their kernels are the emulated
// builds (the same sources compiled for AVX2 against SIMDe and, for AMX, sparsecpu's tile machine
// (kernels/amx/tilemachine.h): slow, for tests on any host).
struct Target {
  Isa isa = Isa::reference;
  bool emulated = false;
};
// The levels whose kernels are also built emulated: avx512, avx512_vnni and amx.
inline bool emulatable(Isa isa) { return static_cast<int>(isa) >= static_cast<int>(Isa::avx512); }
// "avx512_vnni" or "avx512_vnni:emulated".
std::string target_name(Target t);
// Parses a level name, optionally with ":emulated" (only for an emulatable level).
Target parse_target(const std::string& name);

struct CpuInfo {
  std::string vendor;
  std::string brand;
  std::vector<std::string> features;  // the ones sparsecpu cares about, as detected
  Isa best = Isa::reference;          // highest level the CPU *and* the OS support
  // "available", or "not used: <why>" (no AMX on the CPU, no tile state enabled by the OS, Linux refused
  // the permission, ...): why best stops below amx.
  std::string amx;
};

// Detected once, on first use. Where the CPU and the OS support AMX, detection also asks Linux for the
// process's permission to use the tile data (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)), without
// which the first tile instruction is a SIGILL; SPARSECPU_AMX_PERMISSION=deny (read here, once) skips the
// request and takes it as refused, so that the refused case is testable on any machine.
const CpuInfo& cpu_info();
// The emulated kernels (and the tile machine) are compiled for AVX2 + FMA + F16C: they run where the CPU
// has the avx2 level.
inline bool emulation_available() { return static_cast<int>(cpu_info().best) >= static_cast<int>(Isa::avx2); }

}  // namespace sparsecpu
