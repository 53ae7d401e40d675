// CPU feature detection (CPUID + XGETBV), compiled for baseline x86-64.
#pragma once
#include <string>
#include <vector>

namespace sparsecpu {

// Ordered ISA levels: each one implies the ones before it.
enum class Isa : int { reference = 0, avx2 = 1, avx512 = 2, avx512_vnni = 3 };

const char* isa_name(Isa isa);
// Parses a level name; throws std::invalid_argument naming the accepted values.
Isa parse_isa(const std::string& name);

struct CpuInfo {
  std::string vendor;
  std::string brand;
  std::vector<std::string> features;  // the ones sparsecpu cares about, as detected
  Isa best = Isa::reference;          // highest level the CPU *and* the OS support
};

// Detected once, on first use.
const CpuInfo& cpu_info();

}  // namespace sparsecpu
