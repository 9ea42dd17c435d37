// CUTLASS's sm90 compressed 2:4 operand format (K-major A), host + device:
// the twin of kernels/cutlass/layout.py (see LAYOUT.md). Where a group's two
// values and its 4-bit metadata code go, and which code and values CUTLASS's
// compressor writes for a group, so that our own kernels write CUTLASS's bytes.
// No CUTLASS header needed. Tested on the host against layout.py
// (tests/test_cutlass_layout.py, tests/cutlass_src/sm90_layout_host.cpp).
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define S24C_HD __host__ __device__ __forceinline__
#else
#define S24C_HD inline
#endif

namespace s24cutlass {

// tile_k: min(tile K of the GEMM, 128); a multiple of 32 (16-bit) or 64 (8-bit).
constexpr int kDefaultTileK = 128;

// Row pitch (elements) of the values buffer: k aligned to 16 (16-bit) / 32 (8-bit), halved.
S24C_HD int64_t ValuesCols(int64_t k, int es) {
  const int64_t a = es == 2 ? 16 : 32;
  return (k + a - 1) / a * a / 2;
}

S24C_HD int64_t MetaRows(int64_t m) { return (m + 63) / 64 * 64; }
S24C_HD int64_t MetaCols(int64_t k, int tile_k) { return (k + tile_k - 1) / tile_k * tile_k; }
S24C_HD int64_t MetaBytes(int64_t m, int64_t k, int tile_k) { return MetaRows(m) * MetaCols(k, tile_k) / 8; }

// Byte of the metadata buffer holding row r, byte column kb (groups 2kb in the
// low nibble, 2kb+1 in the high nibble), for an operand of m rows.
S24C_HD int64_t MetaByteOffset(int64_t r, int64_t kb, int64_t m, int es, int tile_k = kDefaultTileK) {
  const int64_t bpr = tile_k / 8;  // bytes per atom row
  const int64_t ka = kb / bpr, b = kb % bpr;
  const int64_t ma = r / 64, R = r % 64;
  const int64_t base = ka * MetaRows(m) * bpr + ma * 64 * bpr;
  if (es == 1) return base + R * bpr + b;
  const int64_t nk = tile_k / 32;
  return base + b % 2 + 2 * ((R / 8) % 2) + 4 * (b / 4) + 4 * nk * (R % 8) + 32 * nk * ((b / 2) % 2) +
         64 * nk * (R / 16);
}

// Bits without the sign bit (for types with -0: bf16, fp16, fp8), all bits for int8.
template <int kEs, bool kNegativeZero>
struct Bits {
  using T = typename std::conditional<kEs == 2, uint16_t, uint8_t>::type;
  static constexpr T kMask = kNegativeZero ? T(kEs == 2 ? 0x7FFF : 0x7F) : T(kEs == 2 ? 0xFFFF : 0xFF);
  S24C_HD static bool NonZero(T x) { return (x & kMask) != 0; }
};

// CUTLASS's code (idx0 | idx1 << 2) and stored values of one group a[0..3]
// (raw bits, at most two non-zeros): two non-zeros i < j -> (i, j), (a_i, a_j);
// one at i < 3 -> (i, 3), (a_i, 0); one at 3 -> (0, 3), (0, a_3); none -> code 0,
// (0, 0). -0 counts as zero and is stored as +0. Returns 0xFF for more than
// two non-zeros (not 2:4).
template <int kEs, bool kNegativeZero = true>
S24C_HD uint8_t GroupCode(const typename Bits<kEs, kNegativeZero>::T a[4],
                          typename Bits<kEs, kNegativeZero>::T& v0, typename Bits<kEs, kNegativeZero>::T& v1) {
  using B = Bits<kEs, kNegativeZero>;
  using T = typename B::T;
  int idx[2] = {0, 0}, n = 0;
  T val[2] = {T(0), T(0)};
  for (int i = 0; i < 4; ++i) {
    if (B::NonZero(a[i])) {
      if (n == 2) return 0xFF;
      idx[n] = i;
      val[n] = a[i];
      ++n;
    }
  }
  if (n == 1) {
    if (idx[0] == 3) {
      val[1] = val[0];
      val[0] = T(0);
      idx[0] = 0;
    } else {
      val[1] = T(0);
    }
    idx[1] = 3;
  }
  v0 = val[0];
  v1 = val[1];
  return uint8_t(idx[0] | (idx[1] << 2));
}

// sparse24_jax.packing's group (code p = p0 | p1 << 2 with p0 < p1, stored a at
// p0 and b at p1) -> CUTLASS's code and values for the same dense group (what
// GroupCode gives for the decompressed group), without forming it.
template <int kEs, bool kNegativeZero = true>
S24C_HD uint8_t PackedToCutlass(uint8_t p, typename Bits<kEs, kNegativeZero>::T a,
                                typename Bits<kEs, kNegativeZero>::T b, typename Bits<kEs, kNegativeZero>::T& v0,
                                typename Bits<kEs, kNegativeZero>::T& v1) {
  using B = Bits<kEs, kNegativeZero>;
  using T = typename B::T;
  const int p0 = p & 3, p1 = (p >> 2) & 3;
  const bool na = B::NonZero(a), nb = B::NonZero(b);
  if (na && nb) { v0 = a; v1 = b; return p; }
  if (na) { v0 = a; v1 = T(0); return uint8_t(p0 | (3 << 2)); }
  if (nb) {
    if (p1 == 3) { v0 = T(0); v1 = b; return uint8_t(0 | (3 << 2)); }
    v0 = b; v1 = T(0); return uint8_t(p1 | (3 << 2));
  }
  v0 = T(0); v1 = T(0);
  return 0;
}

}  // namespace s24cutlass

#undef S24C_HD
