#include "core/format.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace sparsecpu {

namespace {

constexpr uint64_t kAlign = 64;

bool add_ovf(uint64_t a, uint64_t b, uint64_t* r) { return __builtin_add_overflow(a, b, r); }
bool mul_ovf(uint64_t a, uint64_t b, uint64_t* r) { return __builtin_mul_overflow(a, b, r); }

// Appends a section of `bytes` at the next aligned offset.
bool place(uint64_t* cursor, uint64_t bytes, uint64_t* offset) {
  uint64_t start;
  if (add_ovf(*cursor, kAlign - 1, &start)) return false;
  start &= ~(kAlign - 1);
  *offset = start;
  return !add_ovf(start, bytes, cursor);
}

[[noreturn]] void bad(const std::string& what) {
  throw std::invalid_argument("invalid packed weight: " + what);
}

uint32_t index_bytes_for(uint64_t k) { return k <= 65536 ? 2 : 4; }

uint64_t col_at(const void* col_idx, uint32_t index_bytes, uint64_t i) {
  return index_bytes == 2 ? static_cast<const uint16_t*>(col_idx)[i]
                          : static_cast<const uint32_t*>(col_idx)[i];
}

void check_dims(uint64_t n, uint64_t k, DType dtype) {
  if (n >= kMaxDim || k >= kMaxDim) throw std::invalid_argument("weight dimensions must be below 2**31");
  if (dtype == DType::int8 && k > kMaxK_int8)
    throw std::invalid_argument("int8 weights need K <= 65535 (exact int32 accumulation); got K = " +
                                std::to_string(k));
}

void check_finite(const float* w, uint64_t count) {
  for (uint64_t i = 0; i < count; ++i) {
    if (!std::isfinite(w[i])) throw std::invalid_argument("weight contains NaN or Inf");
  }
}

void check_threshold(float t, DType dtype) {
  if (!(std::isfinite(t) && t >= 0.0f))
    throw std::invalid_argument("outlier_threshold must be finite and >= 0 (0 = off)");
  if (t > 0.0f && dtype != DType::int8) throw std::invalid_argument("outlier_threshold applies to int8 weights only");
}

// Per-channel symmetric scales (int8); the smallest normal float at least, so that w / scale
// stays finite for channels of denormal magnitude (whose values then quantize to zero).
std::vector<float> channel_scales(const float* w, uint64_t n, uint64_t k, uint64_t padded) {
  std::vector<float> scale(padded, 1.0f);
  for (uint64_t c = 0; c < n; ++c) {
    float amax = 0;
    for (uint64_t kk = 0; kk < k; ++kk) amax = std::max(amax, std::fabs(w[c * k + kk]));
    if (amax > 0) scale[c] = std::max(amax / 127.0f, std::numeric_limits<float>::min());
  }
  return scale;
}

float quantize_weight(float x, float scale) { return std::min(127.0f, std::max(-127.0f, std::nearbyint(x / scale))); }

Header make_header(Format format, DType dtype, uint64_t n, uint64_t k, float outlier_threshold) {
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = kFormatVersion;
  h.format = static_cast<uint32_t>(format);
  h.dtype = static_cast<uint32_t>(dtype);
  h.n = n;
  h.k = k;
  h.outlier_threshold = outlier_threshold;
  return h;
}

// Offset of channel c, input column kk in the dense panels.
uint64_t dense_at(uint64_t kq, uint64_t c, uint64_t kk) {
  return ((c / kDensePanel) * kq + kk / kDenseQuad) * (kDensePanel * kDenseQuad) + (c % kDensePanel) * kDenseQuad +
         kk % kDenseQuad;
}

}  // namespace

const char* dtype_name(DType d) { return d == DType::int8 ? "int8" : "fp32"; }
const char* format_name(Format f) {
  switch (f) {
    case Format::dense: return "dense";
    case Format::panel: return "panel";
    case Format::bsr: break;
  }
  return "bsr";
}

bool compute_layout(DType dtype, uint64_t n, uint64_t index_bytes, uint64_t nnzb, Layout* out) {
  Layout l;
  l.groups = (n + 3) / 4;
  const uint64_t elem = dtype == DType::int8 ? 1 : 4;
  uint64_t cursor = sizeof(Header), bytes;
  if (mul_ovf(l.groups + 1, 4, &bytes) || !place(&cursor, bytes, &l.row_ptr)) return false;
  if (mul_ovf(nnzb, index_bytes, &bytes) || !place(&cursor, bytes, &l.col_idx)) return false;
  if (mul_ovf(nnzb, 4 * elem, &bytes) || !place(&cursor, bytes, &l.values)) return false;
  if (dtype == DType::int8) {
    if (!place(&cursor, l.groups * 16, &l.w_scale)) return false;
    if (!place(&cursor, l.groups * 16, &l.w_sum)) return false;
  }
  if (add_ovf(cursor, kAlign - 1, &l.total)) return false;
  l.total &= ~(kAlign - 1);
  *out = l;
  return true;
}

bool compute_layout_dense(uint64_t n, uint64_t k, Layout* out) {
  Layout l;
  l.groups = (n + 3) / 4;
  const uint64_t panels = (n + kDensePanel - 1) / kDensePanel, kq = (k + kDenseQuad - 1) / kDenseQuad;
  uint64_t cursor = sizeof(Header), bytes;
  if (mul_ovf(panels * kq, kDensePanel * kDenseQuad, &bytes) || !place(&cursor, bytes, &l.values)) return false;
  if (!place(&cursor, panels * kDensePanel * 4, &l.w_scale)) return false;
  if (!place(&cursor, panels * kDensePanel * 4, &l.w_sum)) return false;
  if (add_ovf(cursor, kAlign - 1, &l.total)) return false;
  l.total &= ~(kAlign - 1);
  *out = l;
  return true;
}

bool compute_layout_panel(uint64_t n, uint64_t nnzb, Layout* out) {
  Layout l;
  l.groups = (n + 3) / 4;
  const uint64_t panels = (n + kDensePanel - 1) / kDensePanel;
  uint64_t cursor = sizeof(Header), bytes;
  if (mul_ovf(panels + 1, 4, &bytes) || !place(&cursor, bytes, &l.row_ptr)) return false;
  if (mul_ovf(nnzb, 2, &bytes) || !place(&cursor, bytes, &l.col_idx)) return false;
  if (mul_ovf(nnzb, kDensePanel, &bytes) || !place(&cursor, bytes, &l.values)) return false;
  if (!place(&cursor, panels * kDensePanel * 4, &l.w_scale)) return false;
  if (!place(&cursor, panels * kDensePanel * 4, &l.w_sum)) return false;
  if (add_ovf(cursor, kAlign - 1, &l.total)) return false;
  l.total &= ~(kAlign - 1);
  *out = l;
  return true;
}

std::vector<uint8_t> pack_bsr(const float* w, uint64_t n, uint64_t k, DType dtype, float outlier_threshold) {
  check_dims(n, k, dtype);
  check_threshold(outlier_threshold, dtype);
  check_finite(w, n * k);
  const uint64_t groups = (n + 3) / 4;
  auto wat = [&](uint64_t c, uint64_t kk) { return c < n ? w[c * k + kk] : 0.0f; };
  const std::vector<float> scale =
      dtype == DType::int8 ? channel_scales(w, n, k, groups * 4) : std::vector<float>(groups * 4, 1.0f);
  // The value a kernel will see: int8 after quantization, so a block whose values all round to
  // zero is pruned here rather than stored as a block of zeros.
  auto quantized = [&](uint64_t c, uint64_t kk) {
    const float x = wat(c, kk);
    if (dtype != DType::int8) return x;
    return quantize_weight(x, scale[c]);
  };

  // Kept columns per group; lists padded to a multiple of 4.
  std::vector<uint32_t> row_ptr(groups + 1, 0);
  std::vector<uint32_t> cols;
  uint64_t kept = 0;
  for (uint64_t g = 0; g < groups; ++g) {
    uint64_t start = cols.size();
    for (uint64_t kk = 0; kk < k; ++kk) {
      bool nz = false;
      for (uint64_t c = 4 * g; c < 4 * g + 4; ++c) nz |= quantized(c, kk) != 0.0f;
      if (nz) cols.push_back(static_cast<uint32_t>(kk));
    }
    kept += cols.size() - start;
    while ((cols.size() - start) % 4) cols.push_back(cols.back());
    if (cols.size() > UINT32_MAX) throw std::invalid_argument("too many blocks for the format");
    row_ptr[g + 1] = static_cast<uint32_t>(cols.size());
  }
  const uint64_t nnzb = cols.size();
  const uint32_t ib = index_bytes_for(k);
  Layout l;
  if (!compute_layout(dtype, n, ib, nnzb, &l)) throw std::invalid_argument("weight too large to pack");

  std::vector<uint8_t> buf(l.total, 0);
  Header h = make_header(Format::bsr, dtype, n, k, outlier_threshold);
  h.block_n = 4;
  h.block_k = 1;
  h.index_bytes = ib;
  h.nnzb = nnzb;
  h.kept_blocks = kept;
  h.total_bytes = l.total;
  std::memcpy(buf.data(), &h, sizeof(h));
  std::memcpy(buf.data() + l.row_ptr, row_ptr.data(), row_ptr.size() * 4);
  for (uint64_t i = 0; i < nnzb; ++i) {
    if (ib == 2) {
      uint16_t c16 = static_cast<uint16_t>(cols[i]);
      std::memcpy(buf.data() + l.col_idx + 2 * i, &c16, 2);
    } else {
      std::memcpy(buf.data() + l.col_idx + 4 * i, &cols[i], 4);
    }
  }
  int8_t* v8 = reinterpret_cast<int8_t*>(buf.data() + l.values);
  float* v32 = reinterpret_cast<float*>(buf.data() + l.values);
  std::vector<int32_t> wsum(groups * 4, 0);
  for (uint64_t g = 0; g < groups; ++g) {
    for (uint64_t b = row_ptr[g]; b < row_ptr[g + 1]; ++b) {
      const bool padding = b >= row_ptr[g] + 1 && cols[b] == cols[b - 1];
      for (uint64_t c = 0; c < 4; ++c) {
        const uint64_t at = (b / 4) * 16 + c * 4 + (b % 4);
        const float x = padding ? 0.0f : quantized(4 * g + c, cols[b]);
        if (dtype == DType::int8) {
          v8[at] = static_cast<int8_t>(x);
          wsum[4 * g + c] += v8[at];
        } else {
          v32[at] = x;
        }
      }
    }
  }
  // N = 0 leaves these vectors empty, and memcpy from their null data() is undefined even for 0 bytes.
  if (dtype == DType::int8 && groups > 0) {
    std::memcpy(buf.data() + l.w_scale, scale.data(), groups * 16);
    std::memcpy(buf.data() + l.w_sum, wsum.data(), groups * 16);
  }
  return buf;
}

std::vector<uint8_t> pack_dense(const float* w, uint64_t n, uint64_t k, float outlier_threshold) {
  check_dims(n, k, DType::int8);
  check_threshold(outlier_threshold, DType::int8);
  check_finite(w, n * k);
  Layout l;
  if (!compute_layout_dense(n, k, &l)) throw std::invalid_argument("weight too large to pack");
  const uint64_t panels = (n + kDensePanel - 1) / kDensePanel, kq = (k + kDenseQuad - 1) / kDenseQuad;
  const std::vector<float> scale = channel_scales(w, n, k, panels * kDensePanel);
  std::vector<uint8_t> buf(l.total, 0);
  int8_t* vals = reinterpret_cast<int8_t*>(buf.data() + l.values);
  std::vector<int32_t> wsum(panels * kDensePanel, 0);
  std::vector<uint8_t> block_nz(((n + 3) / 4) * k, 0);
  for (uint64_t c = 0; c < n; ++c) {
    for (uint64_t kk = 0; kk < k; ++kk) {
      const int8_t q = static_cast<int8_t>(quantize_weight(w[c * k + kk], scale[c]));
      vals[dense_at(kq, c, kk)] = q;
      wsum[c] += q;
      block_nz[(c / 4) * k + kk] |= q != 0;
    }
  }
  Header h = make_header(Format::dense, DType::int8, n, k, outlier_threshold);
  h.block_n = 1;
  h.block_k = 1;
  for (uint8_t nz : block_nz) h.kept_blocks += nz;
  h.total_bytes = l.total;
  std::memcpy(buf.data(), &h, sizeof(h));
  if (panels > 0) {
    std::memcpy(buf.data() + l.w_scale, scale.data(), panels * kDensePanel * 4);
    std::memcpy(buf.data() + l.w_sum, wsum.data(), panels * kDensePanel * 4);
  }
  return buf;
}

std::vector<uint8_t> pack_panel(const float* w, uint64_t n, uint64_t k, float outlier_threshold) {
  check_dims(n, k, DType::int8);
  check_threshold(outlier_threshold, DType::int8);
  check_finite(w, n * k);
  const uint64_t panels = (n + kDensePanel - 1) / kDensePanel;
  const std::vector<float> scale = channel_scales(w, n, k, panels * kDensePanel);
  // Quantized once: a column is kept by a panel if any of its channels holds a nonzero int8 value.
  std::vector<int8_t> q(n * k);
  for (uint64_t c = 0; c < n; ++c) {
    for (uint64_t kk = 0; kk < k; ++kk) q[c * k + kk] = static_cast<int8_t>(quantize_weight(w[c * k + kk], scale[c]));
  }
  std::vector<uint32_t> col_ptr(panels + 1, 0);
  std::vector<uint16_t> cols;
  for (uint64_t p = 0; p < panels; ++p) {
    const uint64_t start = cols.size();
    for (uint64_t kk = 0; kk < k; ++kk) {
      bool nz = false;
      for (uint64_t c = p * kDensePanel; c < std::min(n, (p + 1) * kDensePanel); ++c) nz |= q[c * k + kk] != 0;
      if (nz) cols.push_back(static_cast<uint16_t>(kk));
    }
    while ((cols.size() - start) % kPanelStep) cols.push_back(cols.back());
    if (cols.size() > UINT32_MAX) throw std::invalid_argument("too many columns for the format");
    col_ptr[p + 1] = static_cast<uint32_t>(cols.size());
  }
  const uint64_t nnzb = cols.size();
  Layout l;
  if (!compute_layout_panel(n, nnzb, &l)) throw std::invalid_argument("weight too large to pack");
  std::vector<uint8_t> buf(l.total, 0);
  int8_t* vals = reinterpret_cast<int8_t*>(buf.data() + l.values);
  std::vector<int32_t> wsum(panels * kDensePanel, 0);
  for (uint64_t p = 0; p < panels; ++p) {
    for (uint64_t b = col_ptr[p]; b < col_ptr[p + 1]; ++b) {
      if (b > col_ptr[p] && cols[b] == cols[b - 1]) break;  // padding from here on: zeros
      for (uint64_t c = p * kDensePanel; c < std::min(n, (p + 1) * kDensePanel); ++c) {
        const int8_t v = q[c * k + cols[b]];
        vals[(b / 4) * 64 + (c % kDensePanel) * 4 + b % 4] = v;
        wsum[c] += v;
      }
    }
  }
  Header h = make_header(Format::panel, DType::int8, n, k, outlier_threshold);
  h.block_n = static_cast<uint32_t>(kDensePanel);
  h.block_k = 1;
  h.index_bytes = 2;
  h.nnzb = nnzb;
  for (uint64_t g = 0; g < (n + 3) / 4; ++g) {
    for (uint64_t kk = 0; kk < k; ++kk) {
      bool nz = false;
      for (uint64_t c = 4 * g; c < std::min(n, 4 * g + 4); ++c) nz |= q[c * k + kk] != 0;
      h.kept_blocks += nz;
    }
  }
  h.total_bytes = l.total;
  std::memcpy(buf.data(), &h, sizeof(h));
  std::memcpy(buf.data() + l.row_ptr, col_ptr.data(), col_ptr.size() * 4);
  if (nnzb) std::memcpy(buf.data() + l.col_idx, cols.data(), nnzb * 2);
  if (panels > 0) {
    std::memcpy(buf.data() + l.w_scale, scale.data(), panels * kDensePanel * 4);
    std::memcpy(buf.data() + l.w_sum, wsum.data(), panels * kDensePanel * 4);
  }
  return buf;
}

std::vector<uint8_t> stack_rows(const std::vector<PackedView>& parts) {
  if (parts.empty()) throw std::invalid_argument("stack_rows needs at least one weight");
  const PackedView& first = parts[0];
  const Format format = first.format;
  const uint64_t tile = format == Format::bsr ? 4 : kDensePanel;
  uint64_t n = 0, nnzb = 0, kept = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const PackedView& p = parts[i];
    if (p.format != format || p.dtype != first.dtype || p.k != first.k || p.outlier_threshold != first.outlier_threshold)
      throw std::invalid_argument("weights stacked must share format, dtype, K and outlier threshold");
    if (i + 1 < parts.size() && p.n % tile)
      throw std::invalid_argument("every stacked weight but the last needs N a multiple of " + std::to_string(tile) +
                                  " in the " + format_name(format) + " format, got N = " + std::to_string(p.n));
    n += p.n;  // each below 2**31: no overflow for any count of parts a Python list holds
    nnzb += p.nnzb;
    kept += p.kept_blocks;
  }
  check_dims(n, first.k, first.dtype);
  if (nnzb > UINT32_MAX) throw std::invalid_argument("too many blocks for the format");
  Layout l;
  const bool ok = format == Format::dense   ? compute_layout_dense(n, first.k, &l)
                  : format == Format::panel ? compute_layout_panel(n, nnzb, &l)
                                            : compute_layout(first.dtype, n, first.index_bytes, nnzb, &l);
  if (!ok) throw std::invalid_argument("weight too large to pack");
  std::vector<uint8_t> buf(l.total, 0);
  Header h = make_header(format, first.dtype, n, first.k, first.outlier_threshold);
  h.block_n = format == Format::bsr ? 4 : format == Format::panel ? static_cast<uint32_t>(kDensePanel) : 1;
  h.block_k = 1;
  h.index_bytes = format == Format::dense ? 0 : first.index_bytes;
  h.nnzb = nnzb;
  h.kept_blocks = kept;
  h.total_bytes = l.total;
  std::memcpy(buf.data(), &h, sizeof(h));
  // Per part: its channel tiles (groups or panels), its stored blocks (bsr) or columns (panel), whose
  // offsets move by the blocks before it, and its values and per-channel scales and sums, appended.
  const uint64_t value_bytes = format == Format::bsr ? 4 * (first.dtype == DType::int8 ? 1 : 4) : kDensePanel;
  const bool int8 = first.dtype == DType::int8;
  uint64_t tiles_before = 0, blocks_before = 0;
  for (const PackedView& p : parts) {
    const uint64_t tiles = format == Format::bsr ? p.groups : p.panels;
    if (format == Format::dense) {
      const uint64_t panel_bytes = p.kq * kDensePanel * kDenseQuad;
      std::memcpy(buf.data() + l.values + tiles_before * panel_bytes, p.values, tiles * panel_bytes);
    } else {
      uint32_t* ptr = reinterpret_cast<uint32_t*>(buf.data() + l.row_ptr) + tiles_before;
      for (uint64_t t = 0; t <= tiles; ++t) ptr[t] = static_cast<uint32_t>(p.row_ptr[t] + blocks_before);
      std::memcpy(buf.data() + l.col_idx + blocks_before * first.index_bytes, p.col_idx, p.nnzb * first.index_bytes);
      std::memcpy(buf.data() + l.values + blocks_before * value_bytes, p.values, p.nnzb * value_bytes);
    }
    if (int8) {
      const uint64_t channels = tiles * tile;
      std::memcpy(buf.data() + l.w_scale + tiles_before * tile * 4, p.w_scale, channels * 4);
      std::memcpy(buf.data() + l.w_sum + tiles_before * tile * 4, p.w_sum, channels * 4);
    }
    tiles_before += tiles;
    blocks_before += p.nnzb;
  }
  return buf;
}

PackedView view_trusted(const uint8_t* data, size_t size) {
  if (size < sizeof(Header)) bad("buffer of " + std::to_string(size) + " bytes is shorter than the header");
  if (reinterpret_cast<uintptr_t>(data) % alignof(uint64_t)) bad("buffer is not 8-byte aligned");
  Header h;
  std::memcpy(&h, data, sizeof(h));
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0) bad("bad magic (not a sparsecpu packed weight)");
  if (h.version != kFormatVersion && h.version != 1)
    bad("format version " + std::to_string(h.version) + " is not supported (expected 1 or " +
        std::to_string(kFormatVersion) + ")");
  if (h.version == 1) {
    // The 72-byte header of version 1 ends before these fields (the bytes are section padding).
    h.outlier_threshold = 0.0f;
    h.reserved = 0;
  }
  const bool dense = h.format == static_cast<uint32_t>(Format::dense);
  const bool panel = h.format == static_cast<uint32_t>(Format::panel);
  if (h.format != static_cast<uint32_t>(Format::bsr) && !((dense || panel) && h.version >= 2))
    bad("unknown format code " + std::to_string(h.format));
  if (h.dtype != static_cast<uint32_t>(DType::int8) && h.dtype != static_cast<uint32_t>(DType::fp32))
    bad("unknown dtype code " + std::to_string(h.dtype));
  const DType dtype = static_cast<DType>(h.dtype);
  if (dense && dtype != DType::int8) bad("dense format with dtype fp32 (dense weights are int8)");
  if (panel && dtype != DType::int8) bad("panel format with dtype fp32 (panel weights are int8)");
  const uint32_t bn = dense ? 1 : panel ? static_cast<uint32_t>(kDensePanel) : 4;
  if (h.block_n != bn || h.block_k != 1)
    bad("block " + std::to_string(h.block_n) + "x" + std::to_string(h.block_k) + " is not supported (" +
        std::to_string(bn) + "x1)");
  if (h.n >= kMaxDim || h.k >= kMaxDim) bad("N or K is 2**31 or more");
  if (dtype == DType::int8 && h.k > kMaxK_int8) bad("int8 weight with K > 65535");
  if (!(std::isfinite(h.outlier_threshold) && h.outlier_threshold >= 0.0f))
    bad("outlier threshold is not finite and >= 0");
  if (h.outlier_threshold > 0.0f && dtype != DType::int8) bad("outlier threshold on an fp32 weight");
  if (h.reserved != 0) bad("reserved header field is not 0");
  Layout l;
  uint64_t groups = (h.n + 3) / 4;
  if (dense) {
    if (h.index_bytes != 0 || h.nnzb != 0) bad("dense format with a block index");
    if (h.kept_blocks > groups * h.k) bad("kept block count exceeds the number of blocks");
    if (!compute_layout_dense(h.n, h.k, &l)) bad("section sizes overflow");
  } else if (panel) {
    if (h.index_bytes != 2) bad("index width " + std::to_string(h.index_bytes) + " of a panel weight (expected 2)");
    if (h.nnzb % kPanelStep) bad("column count " + std::to_string(h.nnzb) + " is not a multiple of 64");
    if (h.kept_blocks > groups * h.k) bad("kept block count exceeds the number of blocks");
    if (!compute_layout_panel(h.n, h.nnzb, &l)) bad("section sizes overflow");
  } else {
    if (h.index_bytes != index_bytes_for(h.k))
      bad("index width " + std::to_string(h.index_bytes) + " does not match K = " + std::to_string(h.k));
    if (h.nnzb % 4) bad("block count " + std::to_string(h.nnzb) + " is not a multiple of 4");
    if (h.kept_blocks > h.nnzb) bad("kept block count exceeds the stored block count");
    if (!compute_layout(dtype, h.n, h.index_bytes, h.nnzb, &l)) bad("section sizes overflow");
  }
  if (h.total_bytes != l.total || size != l.total)
    bad("length is " + std::to_string(size) + " bytes, the header implies " + std::to_string(l.total) +
        " (header says " + std::to_string(h.total_bytes) + ")");
  PackedView v;
  v.dtype = dtype;
  v.format = dense ? Format::dense : panel ? Format::panel : Format::bsr;
  v.outlier_threshold = h.outlier_threshold;
  v.n = h.n;
  v.k = h.k;
  v.groups = groups;
  v.nnzb = h.nnzb;
  v.kept_blocks = h.kept_blocks;
  v.index_bytes = h.index_bytes;
  v.row_ptr = dense ? nullptr : reinterpret_cast<const uint32_t*>(data + l.row_ptr);
  v.col_idx = dense ? nullptr : data + l.col_idx;
  v.values = data + l.values;
  v.w_scale = dtype == DType::int8 ? reinterpret_cast<const float*>(data + l.w_scale) : nullptr;
  v.w_sum = dtype == DType::int8 ? reinterpret_cast<const int32_t*>(data + l.w_sum) : nullptr;
  if (dense) {
    v.panels = (h.n + kDensePanel - 1) / kDensePanel;
    v.kq = (h.k + kDenseQuad - 1) / kDenseQuad;
  }
  if (panel) v.panels = (h.n + kDensePanel - 1) / kDensePanel;
  return v;
}

namespace {

// Dense buffers: padding values zero, scales positive, sums and the kept-block count matching.
void validate_dense(const PackedView& v) {
  const int8_t* vals = static_cast<const int8_t*>(v.values);
  uint64_t kept = 0;
  std::vector<uint8_t> nz(v.k);
  for (uint64_t p = 0; p < v.panels; ++p) {
    for (uint64_t c = p * kDensePanel; c < (p + 1) * kDensePanel; ++c) {
      const float s = v.w_scale[c];
      if (!(std::isfinite(s) && s > 0)) bad("channel " + std::to_string(c) + " has a scale that is not finite and > 0");
      int64_t sum = 0;
      for (uint64_t kk = 0; kk < v.kq * kDenseQuad; ++kk) {
        const int8_t q = vals[dense_at(v.kq, c, kk)];
        if (q != 0 && (c >= v.n || kk >= v.k))
          bad("nonzero padding value at channel " + std::to_string(c) + ", column " + std::to_string(kk));
        sum += q;
      }
      if (sum != v.w_sum[c]) bad("weight sum of channel " + std::to_string(c) + " does not match its values");
    }
  }
  for (uint64_t g = 0; g < v.groups; ++g) {
    std::fill(nz.begin(), nz.end(), 0);
    for (uint64_t c = 4 * g; c < std::min<uint64_t>(4 * g + 4, v.n); ++c) {
      for (uint64_t kk = 0; kk < v.k; ++kk) nz[kk] |= vals[dense_at(v.kq, c, kk)] != 0;
    }
    for (uint8_t b : nz) kept += b;
  }
  if (kept != v.kept_blocks)
    bad("header counts " + std::to_string(v.kept_blocks) + " kept blocks, the data holds " + std::to_string(kept));
}

// Offset of stored column b (position in col_idx), channel c % 16 of its panel, in the panel values.
uint64_t panel_at(uint64_t b, uint64_t c) { return (b / 4) * 64 + (c % kDensePanel) * 4 + b % 4; }

// Panel buffers: column offsets, the order and range of every panel's columns, padding columns and
// channels zero, scales positive, sums and the kept-block count matching.
void validate_panel(const PackedView& v) {
  const int8_t* vals = static_cast<const int8_t*>(v.values);
  const uint16_t* cols = static_cast<const uint16_t*>(v.col_idx);
  const uint32_t* ptr = v.row_ptr;
  if (ptr[0] != 0) bad("col_ptr[0] is " + std::to_string(ptr[0]) + ", expected 0");
  for (uint64_t p = 0; p < v.panels; ++p) {
    if (ptr[p + 1] < ptr[p] || ptr[p + 1] > v.nnzb)
      bad("col_ptr of panel " + std::to_string(p) + " is out of range or decreasing");
    if ((ptr[p + 1] - ptr[p]) % kPanelStep)
      bad("panel " + std::to_string(p) + " holds a column count that is not a multiple of 64");
  }
  if (ptr[v.panels] != v.nnzb) bad("col_ptr does not end at the column count");
  std::vector<int64_t> sum(v.panels * kDensePanel, 0);
  std::vector<uint8_t> nz;
  uint64_t kept = 0;
  for (uint64_t p = 0; p < v.panels; ++p) {
    const uint64_t b0 = ptr[p], b1 = ptr[p + 1];
    uint64_t real = b1 - b0;  // columns before the padding
    for (uint64_t b = b0; b < b1; ++b) {
      const uint64_t c = cols[b];
      if (c >= v.k) bad("column index " + std::to_string(c) + " out of range (K = " + std::to_string(v.k) + ")");
      if (b == b0) continue;
      const uint64_t prev = cols[b - 1];
      if (real == b1 - b0) {
        if (c < prev) bad("column indices of panel " + std::to_string(p) + " are not sorted");
        if (c == prev) real = b - b0;
      } else if (c != prev) {
        bad("padding column of panel " + std::to_string(p) + " does not repeat its last column");
      }
    }
    if (b1 - b0 - real >= kPanelStep) bad("panel " + std::to_string(p) + " holds 64 or more padding columns");
    for (uint64_t b = b0; b < b1; ++b) {
      const bool padding = b - b0 >= real;
      nz.assign(kDensePanel / 4, 0);
      for (uint64_t c = 0; c < kDensePanel; ++c) {
        const int8_t q = vals[panel_at(b, c)];
        const uint64_t ch = p * kDensePanel + c;
        if (q != 0 && (padding || ch >= v.n))
          bad("nonzero padding value at channel " + std::to_string(ch) + ", stored column " + std::to_string(b));
        sum[ch] += q;
        nz[c / 4] |= q != 0;
      }
      for (uint8_t x : nz) kept += x;
    }
  }
  for (uint64_t c = 0; c < v.panels * kDensePanel; ++c) {
    const float s = v.w_scale[c];
    if (!(std::isfinite(s) && s > 0)) bad("channel " + std::to_string(c) + " has a scale that is not finite and > 0");
    if (sum[c] != v.w_sum[c]) bad("weight sum of channel " + std::to_string(c) + " does not match its values");
  }
  if (kept != v.kept_blocks)
    bad("header counts " + std::to_string(v.kept_blocks) + " kept blocks, the data holds " + std::to_string(kept));
}

}  // namespace

PackedView validate(const uint8_t* data, size_t size) {
  PackedView v = view_trusted(data, size);
  if (v.format == Format::dense) {
    validate_dense(v);
    return v;
  }
  if (v.format == Format::panel) {
    validate_panel(v);
    return v;
  }
  if (v.row_ptr[0] != 0) bad("row_ptr[0] is " + std::to_string(v.row_ptr[0]) + ", expected 0");
  uint64_t kept = 0;
  for (uint64_t g = 0; g < v.groups; ++g) {
    const uint64_t b0 = v.row_ptr[g], b1 = v.row_ptr[g + 1];
    if (b1 < b0 || b1 > v.nnzb)
      bad("row_ptr of group " + std::to_string(g) + " is out of range or decreasing");
    if ((b1 - b0) % 4) bad("group " + std::to_string(g) + " holds a block count that is not a multiple of 4");
    for (uint64_t b = b0; b < b1; ++b) {
      const uint64_t c = col_at(v.col_idx, v.index_bytes, b);
      if (c >= v.k) bad("column index " + std::to_string(c) + " out of range (K = " + std::to_string(v.k) + ")");
      if (b > b0 && c < col_at(v.col_idx, v.index_bytes, b - 1))
        bad("column indices of group " + std::to_string(g) + " are not sorted");
      bool nz = false;
      for (uint64_t ch = 0; ch < 4; ++ch) {
        const uint64_t at = (b / 4) * 16 + ch * 4 + (b % 4);
        nz |= v.dtype == DType::int8 ? static_cast<const int8_t*>(v.values)[at] != 0
                                     : static_cast<const float*>(v.values)[at] != 0.0f;
        if (v.dtype == DType::fp32 && !std::isfinite(static_cast<const float*>(v.values)[at]))
          bad("non-finite weight value");
      }
      kept += nz;
    }
  }
  if (v.row_ptr[v.groups] != v.nnzb) bad("row_ptr does not end at the block count");
  if (kept != v.kept_blocks)
    bad("header counts " + std::to_string(v.kept_blocks) + " kept blocks, the data holds " + std::to_string(kept));
  if (v.dtype == DType::int8) {
    for (uint64_t c = 0; c < 4 * v.groups; ++c) {
      const float s = v.w_scale[c];
      if (!(std::isfinite(s) && s > 0)) bad("channel " + std::to_string(c) + " has a scale that is not finite and > 0");
      int64_t sum = 0;
      const uint64_t g = c / 4, ch = c % 4;
      for (uint64_t b = v.row_ptr[g]; b < v.row_ptr[g + 1]; ++b)
        sum += static_cast<const int8_t*>(v.values)[(b / 4) * 16 + ch * 4 + (b % 4)];
      if (sum != v.w_sum[c]) bad("weight sum of channel " + std::to_string(c) + " does not match its values");
    }
  }
  return v;
}

void unpack_dense(const PackedView& v, float* out) {
  std::fill(out, out + v.n * v.k, 0.0f);
  if (v.format == Format::dense) {
    const int8_t* vals = static_cast<const int8_t*>(v.values);
    for (uint64_t c = 0; c < v.n; ++c) {
      for (uint64_t kk = 0; kk < v.k; ++kk) out[c * v.k + kk] = vals[dense_at(v.kq, c, kk)] * v.w_scale[c];
    }
    return;
  }
  if (v.format == Format::panel) {
    // Padding columns repeat a kept one with zero weights: adding them changes nothing.
    const int8_t* vals = static_cast<const int8_t*>(v.values);
    const uint16_t* cols = static_cast<const uint16_t*>(v.col_idx);
    for (uint64_t p = 0; p < v.panels; ++p) {
      for (uint64_t b = v.row_ptr[p]; b < v.row_ptr[p + 1]; ++b) {
        for (uint64_t c = p * kDensePanel; c < std::min(v.n, (p + 1) * kDensePanel); ++c)
          out[c * v.k + cols[b]] += vals[panel_at(b, c)] * v.w_scale[c];
      }
    }
    return;
  }
  for (uint64_t g = 0; g < v.groups; ++g) {
    for (uint64_t b = v.row_ptr[g]; b < v.row_ptr[g + 1]; ++b) {
      const uint64_t kk = col_at(v.col_idx, v.index_bytes, b);
      for (uint64_t ch = 0; ch < 4; ++ch) {
        const uint64_t c = 4 * g + ch;
        if (c >= v.n) continue;
        const uint64_t at = (b / 4) * 16 + ch * 4 + (b % 4);
        const float val = v.dtype == DType::int8
                              ? static_cast<const int8_t*>(v.values)[at] * v.w_scale[c]
                              : static_cast<const float*>(v.values)[at];
        out[c * v.k + kk] += val;
      }
    }
  }
}

void weight_column(const PackedView& v, uint64_t k, float* out) {
  std::fill(out, out + v.n, 0.0f);
  if (v.format == Format::dense) {
    const int8_t* vals = static_cast<const int8_t*>(v.values);
    for (uint64_t c = 0; c < v.n; ++c) out[c] = vals[dense_at(v.kq, c, k)] * v.w_scale[c];
    return;
  }
  if (v.format == Format::panel) {
    const int8_t* vals = static_cast<const int8_t*>(v.values);
    const uint16_t* cols = static_cast<const uint16_t*>(v.col_idx);
    for (uint64_t p = 0; p < v.panels; ++p) {
      // Sorted columns: the first stored at k, if any (later repeats are padding, zero).
      const uint16_t* lo = std::lower_bound(cols + v.row_ptr[p], cols + v.row_ptr[p + 1], k);
      if (lo == cols + v.row_ptr[p + 1] || *lo != k) continue;
      const uint64_t b = static_cast<uint64_t>(lo - cols);
      for (uint64_t c = p * kDensePanel; c < std::min(v.n, (p + 1) * kDensePanel); ++c)
        out[c] = vals[panel_at(b, c)] * v.w_scale[c];
    }
    return;
  }
  for (uint64_t g = 0; g < v.groups; ++g) {
    // Sorted columns: binary search for the first block at k (padding repeats hold zeros).
    uint64_t lo = v.row_ptr[g], hi = v.row_ptr[g + 1];
    while (lo < hi) {
      const uint64_t mid = (lo + hi) / 2;
      if (col_at(v.col_idx, v.index_bytes, mid) < k) lo = mid + 1;
      else hi = mid;
    }
    for (uint64_t b = lo; b < v.row_ptr[g + 1] && col_at(v.col_idx, v.index_bytes, b) == k; ++b) {
      for (uint64_t ch = 0; ch < 4 && 4 * g + ch < v.n; ++ch) {
        const uint64_t c = 4 * g + ch, at = (b / 4) * 16 + ch * 4 + (b % 4);
        out[c] += v.dtype == DType::int8 ? static_cast<const int8_t*>(v.values)[at] * v.w_scale[c]
                                         : static_cast<const float*>(v.values)[at];
      }
    }
  }
}

}  // namespace sparsecpu
