#include "core/cpu.h"

#include <cpuid.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <utility>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sparsecpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::reference: return "reference";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512_vnni: return "avx512_vnni";
    case Isa::amx: return "amx";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::reference, Isa::avx2, Isa::avx512, Isa::avx512_vnni, Isa::amx}) {
    if (name == isa_name(isa)) return isa;
  }
  throw std::invalid_argument("unknown ISA level '" + name +
                              "': expected one of reference, avx2, avx512, avx512_vnni, amx");
}

std::string target_name(Target t) {
  std::string name = isa_name(t.isa);
  return t.emulated ? name + ":emulated" : name;
}

Target parse_target(const std::string& name) {
  const std::string suffix = ":emulated";
  const bool emulated = name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  const Target t{parse_isa(emulated ? name.substr(0, name.size() - suffix.size()) : name), emulated};
  if (t.emulated && !emulatable(t.isa))
    throw std::invalid_argument("'" + name + "': only the avx512, avx512_vnni and amx levels have emulated builds");
  return t;
}

namespace {

struct Regs { uint32_t a, b, c, d; };

Regs cpuid(uint32_t leaf, uint32_t sub = 0) {
  Regs r{};
  __cpuid_count(leaf, sub, r.a, r.b, r.c, r.d);
  return r;
}

uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

// Linux grants the AMX tile data (8 KB of state per thread) per process, on request: until then the
// first tile instruction faults (XFD) and the process gets a SIGILL. The permission covers every
// thread of the process, present and future. Returns "" when granted, else why not.
std::string request_tile_permission() {
  const char* env = std::getenv("SPARSECPU_AMX_PERMISSION");
  if (env && std::strcmp(env, "deny") == 0)
    return "the tile data permission was refused (SPARSECPU_AMX_PERMISSION=deny: the request is not made)";
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kArchReqXcompPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM, <asm/prctl.h> (Linux 5.16)
  constexpr long kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0) return "";
  const int err = errno;
  return std::string("Linux refused the tile data permission (arch_prctl(ARCH_REQ_XCOMP_PERM, "
                     "XFEATURE_XTILEDATA): ") + std::strerror(err) + ")";
#else
  return "the tile data permission can only be requested on Linux";
#endif
}

CpuInfo detect() {
  CpuInfo info;
  Regs r0 = cpuid(0);
  char vendor[13] = {};
  std::memcpy(vendor + 0, &r0.b, 4);
  std::memcpy(vendor + 4, &r0.d, 4);
  std::memcpy(vendor + 8, &r0.c, 4);
  info.vendor = vendor;

  if (cpuid(0x80000000).a >= 0x80000004) {
    char brand[49] = {};
    for (uint32_t i = 0; i < 3; ++i) {
      Regs r = cpuid(0x80000002 + i);
      std::memcpy(brand + 16 * i + 0, &r.a, 4);
      std::memcpy(brand + 16 * i + 4, &r.b, 4);
      std::memcpy(brand + 16 * i + 8, &r.c, 4);
      std::memcpy(brand + 16 * i + 12, &r.d, 4);
    }
    info.brand = brand;
    size_t end = info.brand.find_last_not_of(' ');
    info.brand = end == std::string::npos ? "" : info.brand.substr(0, end + 1);
  }

  const uint32_t max_leaf = r0.a;
  Regs r1 = cpuid(1);
  Regs r7 = max_leaf >= 7 ? cpuid(7, 0) : Regs{};
  Regs r71 = max_leaf >= 7 ? cpuid(7, 1) : Regs{};

  // The OS must save the registers we use: XMM|YMM for AVX, plus opmask|ZMM_Hi256|Hi16_ZMM for AVX-512.
  const bool osxsave = (r1.c >> 27) & 1;
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;

  auto add = [&](bool present, const char* name) {
    if (present) info.features.push_back(name);
    return present;
  };
  const bool fma = add(os_avx && ((r1.c >> 12) & 1), "fma");
  const bool f16c = add(os_avx && ((r1.c >> 29) & 1), "f16c");
  const bool avx2 = add(os_avx && ((r7.b >> 5) & 1), "avx2");
  const bool avx512f = add(os_avx512 && ((r7.b >> 16) & 1), "avx512f");
  const bool avx512dq = add(os_avx512 && ((r7.b >> 17) & 1), "avx512dq");
  const bool avx512bw = add(os_avx512 && ((r7.b >> 30) & 1), "avx512bw");
  const bool avx512vl = add(os_avx512 && ((r7.b >> 31) & 1), "avx512vl");
  const bool vnni = add(os_avx512 && ((r7.c >> 11) & 1), "avx512_vnni");
  add(os_avx512 && ((r71.a >> 5) & 1), "avx512_bf16");
  add(os_avx512 && ((r7.d >> 23) & 1), "avx512_fp16");
  // AMX as the CPU reports it; whether the level is used is decided below.
  const bool amx_bf16 = add((r7.d >> 22) & 1, "amx_bf16");
  const bool amx_tile = add((r7.d >> 24) & 1, "amx_tile");
  const bool amx_int8 = add((r7.d >> 25) & 1, "amx_int8");

  if (avx2 && fma && f16c) info.best = Isa::avx2;
  if (info.best == Isa::avx2 && avx512f && avx512dq && avx512bw && avx512vl) info.best = Isa::avx512;
  if (info.best == Isa::avx512 && vnni) info.best = Isa::avx512_vnni;

  // The amx level, from the cheapest check up; the permission request (a syscall with a process-wide
  // effect) is made only where everything else is there.
  std::string missing;
  for (auto [have, name] : {std::pair<bool, const char*>{amx_tile, "AMX-TILE"}, {amx_int8, "AMX-INT8"},
                            {amx_bf16, "AMX-BF16"}}) {
    if (!have) missing += missing.empty() ? name : std::string(", ") + name;
  }
  // XCR0 bit 17 (XTILECFG) and bit 18 (XTILEDATA): the OS saves and restores the tile state.
  const bool os_tiles = (xcr0 & (uint64_t(3) << 17)) == (uint64_t(3) << 17);
  std::string why;
  if (!missing.empty()) why = "the CPU has no " + missing;
  else if (info.best != Isa::avx512_vnni)
    why = std::string("its kernels need avx512_vnni beside the tiles (detected: ") + isa_name(info.best) + ")";
  else if (!os_tiles) why = "the OS has not enabled the tile state (XCR0 bits 17-18; Linux 5.16 or newer does)";
  else why = request_tile_permission();
  info.amx = why.empty() ? "available" : "not used: " + why;
  if (why.empty()) info.best = Isa::amx;
  return info;
}

}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

}  // namespace sparsecpu
