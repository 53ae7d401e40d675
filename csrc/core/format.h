// Packed weight format: one self-describing byte buffer, in one of three formats.
//
// Format::bsr (block-sparse rows) layout (little-endian; every section starts at a multiple of 64 bytes):
//   Header (80 bytes, see below)
//   row_ptr   uint32[G + 1]          G = ceil(N / 4) groups of 4 output channels; block offsets
//   col_idx   uint16|uint32[nnzb]    input column of each stored block, non-decreasing per group
//   values    int8|float[nnzb * 4]   in quads of 4 blocks: [c0: k0 k1 k2 k3][c1: ...][c2: ...][c3: ...]
//   w_scale   float[4G]              int8 only: symmetric per-output-channel scale
//   w_sum     int32[4G]              int8 only: sum of the int8 weights of each channel (zero-point term)
// Each group's block list is padded to a multiple of 4 with zero blocks that repeat the last column, so
// a kernel always reads whole quads: 4 columns x 4 channels = one VNNI dword per channel.
//
// Format::dense (int8 only) layout:
//   Header    block 1x1, index_bytes 0, nnzb 0; kept_blocks counts the nonzero 4x1 blocks (for density)
//   values    int8[P][Kq][16][4]     P = ceil(N / 16) panels of 16 channels, Kq = ceil(K / 4): each panel
//                                    is a VNNI K/4 x 16 x 4 matrix, read front to back by the kernel;
//                                    channels >= N and columns >= K hold zeros
//   w_scale   float[16P]             channels >= N: 1
//   w_sum     int32[16P]             channels >= N: 0
//
// Format::panel (int8 only; version 2 and later) layout: block-sparse in 16x1 blocks for AMX tiles.
//   Header    block 16x1, index_bytes 2, nnzb = stored columns (padding included, a multiple of 64 per
//             panel); kept_blocks counts the nonzero 4x1 blocks (for density, as the other formats)
//   col_ptr   uint32[P + 1]          P = ceil(N / 16) panels of 16 output channels; column offsets
//   col_idx   uint16[nnzb]           per panel: the input columns kept by any of its 16 channels, strictly
//                                    increasing, then padding up to a multiple of 64 that repeats the last
//                                    kept column (fewer than 64 padding columns; an empty panel stores none)
//   values    int8[nnzb / 64][16][16][4]  per panel and 64-column step one AMX B tile: 16 K-quads x 16
//                                    channels x 4 columns (the dense format's VNNI order); stored column b
//                                    (global position in col_idx) of channel c at (b / 4) * 64 + 4 c + b % 4;
//                                    padding columns and channels >= N hold zeros
//   w_scale   float[16P]             channels >= N: 1
//   w_sum     int32[16P]             channels >= N: 0
// The 64 columns of a step are what one tile row of u8 activations holds: a kernel gathers them from x.
//
// Version 2 added outlier_threshold to the header (version 1 buffers, BSR only, are still read: their
// sections sit at the same offsets, and they have no outlier columns).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sparsecpu {

constexpr char kMagic[8] = {'S', 'P', 'C', 'P', 'U', 'P', 'W', '\0'};
constexpr uint32_t kFormatVersion = 2;
// int8: a s32 accumulator holds 255 * 127 * K exactly for K up to this.
constexpr uint64_t kMaxK_int8 = 65535;
constexpr uint64_t kMaxDim = uint64_t(1) << 31;

enum class Format : uint32_t { bsr = 1, dense = 2, panel = 3 };
// Channels per panel and input columns per VNNI dword of the dense format.
constexpr uint64_t kDensePanel = 16;
constexpr uint64_t kDenseQuad = 4;
// Input columns per step of the panel format: one 64-byte tile row of u8 activations.
constexpr uint64_t kPanelStep = 64;
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
  // Version 2. int8: input columns holding a value of magnitude above this are computed in fp32
  // beside the int8 product (LLM.int8() decomposition); 0 = off.
  float outlier_threshold;
  uint32_t reserved;  // 0
};
static_assert(sizeof(Header) == 80, "the header layout is part of the format");

// Section offsets, a pure function of the header fields.
struct Layout {
  uint64_t groups = 0;
  uint64_t row_ptr = 0, col_idx = 0, values = 0, w_scale = 0, w_sum = 0, total = 0;
};
// Returns false if the sizes overflow or exceed the limits.
bool compute_layout(DType dtype, uint64_t n, uint64_t index_bytes, uint64_t nnzb, Layout* out);
// Dense format: values, w_scale and w_sum; row_ptr and col_idx are empty (offset 0).
bool compute_layout_dense(uint64_t n, uint64_t k, Layout* out);
// Panel format: row_ptr holds col_ptr (P + 1 entries), col_idx the u16 columns, values nnzb * 16 bytes.
bool compute_layout_panel(uint64_t n, uint64_t nnzb, Layout* out);

// A validated view into a packed buffer (no ownership).
struct PackedView {
  DType dtype;
  uint64_t n, k, groups, nnzb, kept_blocks;
  uint32_t index_bytes;
  const uint32_t* row_ptr;  // panel: col_ptr, P + 1 column offsets
  const void* col_idx;
  const void* values;
  const float* w_scale;    // null for fp32
  const int32_t* w_sum;    // null for fp32
  Format format = Format::bsr;
  float outlier_threshold = 0.0f;  // 0: off
  uint64_t panels = 0, kq = 0;     // dense: ceil(N / 16) panels of ceil(K / 4) VNNI dwords; panel: P, 0
};

// Packs a dense row-major N x K float matrix already pruned in 4x1 blocks. Throws std::invalid_argument
// on non-finite weights, sizes over the limits or a bad outlier threshold (int8 only; 0 = off).
std::vector<uint8_t> pack_bsr(const float* w, uint64_t n, uint64_t k, DType dtype, float outlier_threshold = 0.0f);

// Packs a row-major N x K float matrix as dense int8 panels (same scales as pack_bsr).
std::vector<uint8_t> pack_dense(const float* w, uint64_t n, uint64_t k, float outlier_threshold = 0.0f);

// Packs a row-major N x K float matrix in the panel format (int8, same scales as pack_bsr): any pruning
// works (a 4x1-pruned weight keeps the union of its 4 groups' columns; 16x1 keeps exactly its blocks).
std::vector<uint8_t> pack_panel(const float* w, uint64_t n, uint64_t k, float outlier_threshold = 0.0f);

// The rows of several packed weights stacked into one (N the sum of theirs), byte for byte what pack
// gives for the stacked float weights: one kernel call then computes what one call per part did, with
// the same values (Q, K and V of an attention block in one call). The parts share format, dtype, K and
// outlier threshold, and every part but the last fills its channel tiles (N a multiple of 4 for bsr,
// of 16 for dense and panel); else std::invalid_argument. The parts must be validated views.
std::vector<uint8_t> stack_rows(const std::vector<PackedView>& parts);

// Full validation of an untrusted buffer: header, sizes, every index, ordering, scales and sums.
// Throws std::invalid_argument with a message naming what is wrong.
PackedView validate(const uint8_t* data, size_t size);

// Header and section checks only (O(1)); for buffers validated once already.
PackedView view_trusted(const uint8_t* data, size_t size);

// Dense N x K float copy of the (dequantized) weight.
void unpack_dense(const PackedView& v, float* out);
// Column k of the (dequantized) weight: N floats.
void weight_column(const PackedView& v, uint64_t k, float* out);

const char* dtype_name(DType d);
const char* format_name(Format f);

}  // namespace sparsecpu
