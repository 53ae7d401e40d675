// Packed weight format: one self-describing byte buffer.
//
// Layout (little-endian; every section starts at a multiple of 64 bytes):
//   Header (72 bytes, see below)
//   row_ptr   uint32[G + 1]          G = ceil(N / 4) groups of 4 output channels; block offsets
//   col_idx   uint16|uint32[nnzb]    input column of each stored block, non-decreasing per group
//   values    int8|float[nnzb * 4]   in quads of 4 blocks: [c0: k0 k1 k2 k3][c1: ...][c2: ...][c3: ...]
//   w_scale   float[4G]              int8 only: symmetric per-output-channel scale
//   w_sum     int32[4G]              int8 only: sum of the int8 weights of each channel (zero-point term)
// Each group's block list is padded to a multiple of 4 with zero blocks that repeat the last column, so
// a kernel always reads whole quads: 4 columns x 4 channels = one VNNI dword per channel.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sparsecpu {

constexpr char kMagic[8] = {'S', 'P', 'C', 'P', 'U', 'P', 'W', '\0'};
constexpr uint32_t kFormatVersion = 1;
// int8: a s32 accumulator holds 255 * 127 * K exactly for K up to this.
constexpr uint64_t kMaxK_int8 = 65535;
constexpr uint64_t kMaxDim = uint64_t(1) << 31;

enum class Format : uint32_t { bsr = 1 };
enum class DType : uint32_t { int8 = 1, fp32 = 2 };

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t format;
  uint32_t dtype;
  uint32_t block_n;
  uint32_t block_k;
  uint32_t index_bytes;
  uint64_t n;
  uint64_t k;
  uint64_t nnzb;         // stored blocks, padding included
  uint64_t kept_blocks;  // blocks with a nonzero value: what density counts
  uint64_t total_bytes;
};
static_assert(sizeof(Header) == 72, "the header layout is part of the format");

// Section offsets, a pure function of the header fields.
struct Layout {
  uint64_t groups = 0;
  uint64_t row_ptr = 0, col_idx = 0, values = 0, w_scale = 0, w_sum = 0, total = 0;
};
// Returns false if the sizes overflow or exceed the limits.
bool compute_layout(DType dtype, uint64_t n, uint64_t index_bytes, uint64_t nnzb, Layout* out);

// A validated view into a packed buffer (no ownership).
struct PackedView {
  DType dtype;
  uint64_t n, k, groups, nnzb, kept_blocks;
  uint32_t index_bytes;
  const uint32_t* row_ptr;
  const void* col_idx;
  const void* values;
  const float* w_scale;    // null for fp32
  const int32_t* w_sum;    // null for fp32
};

// Packs a dense row-major N x K float matrix already pruned in 4x1 blocks. Throws std::invalid_argument
// on non-finite weights or sizes over the limits.
std::vector<uint8_t> pack_bsr(const float* w, uint64_t n, uint64_t k, DType dtype);

// Full validation of an untrusted buffer: header, sizes, every index, ordering, scales and sums.
// Throws std::invalid_argument with a message naming what is wrong.
PackedView validate(const uint8_t* data, size_t size);

// Header and section checks only (O(1)); for buffers validated once already.
PackedView view_trusted(const uint8_t* data, size_t size);

// Dense N x K float copy of the (dequantized) weight.
void unpack_dense(const PackedView& v, float* out);

const char* dtype_name(DType d);

}  // namespace sparsecpu
