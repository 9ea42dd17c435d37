// Our own kernels writing CUTLASS's sm90 compressed 2:4 operand (bf16, tile K
// 128; LAYOUT.md, sm90_layout.cuh): host + device code. Each kernel is a
// struct of phase functions that a __global__ wrapper runs block by block and
// that Emulate runs on the host thread by thread with the same index
// arithmetic (the CPU tests' view of the kernels, as the cuSPARSELt library
// does in compress_kernels.cuh).
//
//   OwnProject: the float32 master W (N, K) and the boolean 2:4 (transposable)
//     mask -> W_s = where(mask, W, +0) rounded to bf16, written as CUTLASS's
//     compressed W_s (2:4 along K) and W_s^T (2:4 along N) in one pass.
//   OwnMvue: dZ (M, N) bf16 row-major -> MVUE 2:4 of A = dZ^T (N, M) along M,
//     in CUTLASS's format, with the cuSPARSELt MVUE kernel's randomness
//     (MvueTransposed::PruneGroup: same seed, same kept entries, same bits).
//
// The per-group math is the cuSPARSELt library's (group.cuh: KeepTop2,
// MVUE; compress_kernels.cuh: MvueTransposed::PruneGroup), included from
// kernels/cusparselt/csrc; the code and value rules are CUTLASS's
// (sm90_layout.cuh: GroupCode, PackedToCutlass), so the bytes equal CUTLASS's
// own compressor's for the same dense pruned matrix.
//
// A block owns a 128 x 128 tile of the sparse operand's dense matrix in
// shared memory (bf16 bits). Phase 2 runs over 32-bit metadata words: word
// (rows R, R+8 of a 64-row block; columns 32j + 16h .. +15 of a 128-column
// K tile) holds row R's 4 codes in its low half-word and row R+8's in the high
// one (LAYOUT.md); a thread builds one word from the tile, writes it and the
// two rows' 4 value pairs (8 bytes per row). Columns past the operand's 2:4
// axis (its last tile of 64 when that axis is an odd multiple of 64) are
// zeros in the tile and code 0 in the metadata, as CUTLASS's compressor
// leaves them (the handler clears nothing: every metadata byte is written).

#pragma once

#include <cstdint>
#include <memory>

#include "compress_kernels.cuh"  // kernels/cusparselt/csrc: group math, MvueTransposed
#include "sm90_layout.cuh"

namespace s24c {

constexpr int kOwnTile = 128;     // tile rows and columns (sparse operand's dense matrix)
constexpr int kOwnThreads = 256;  // threads per block
constexpr int kOwnAlign = 64;     // both axes multiples of this (whole metadata row blocks)
// metadata words of one 128 x 128 tile: 128 rows / 2 x 128 cols / 16
constexpr int kOwnWords = kOwnTile / 2 * kOwnTile / 16;

// The word's rows and columns: word index u (0 .. kOwnWords-1) in a tile ->
// tile-local row R0 (R0 % 16 < 8; rows R0 and R0 + 8) and first column c0 (a
// multiple of 16). Consecutive u walk the 16 column halves first, so a warp
// writes 8 bytes of each of its rows' values at 64 consecutive columns.
__host__ __device__ inline void OwnWordPlace(int u, int* r0, int* c0) {
  const int cw = u & 7;            // 16-column chunk of the tile's 128 columns
  const int pair = u >> 3;         // row pair 0 .. 63
  *r0 = 16 * (pair >> 3) + (pair & 7);
  *c0 = 16 * cw;
}

// Byte offset of the metadata word holding (rows r, r + 8; columns c .. c+15)
// of an m-row operand, r % 16 < 8, c % 16 == 0 (MetaByteOffset at byte column
// c / 8 is a multiple of 4 there).
__host__ __device__ inline int64_t OwnWordOffset(int64_t r, int64_t c, int64_t m) {
  return s24cutlass::MetaByteOffset(r, c / 8, m, 2, s24cutlass::kDefaultTileK);
}

// One row's 4 groups (columns c0 .. c0+15 of tile row `row`) -> CUTLASS's 4
// codes (nibbles, column order) and 4 value pairs (lo | hi << 16); `cs`: the
// element stride between columns (1, or the pitch when reading a tile transposed).
__host__ __device__ inline uint32_t OwnRowCodes(const uint16_t* row, int cs, uint32_t pairs[4]) {
  uint32_t codes = 0;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    // KeepTop2 first: a group with more than two non-zeros (a W_s^T group of a
    // mask that is not transposable) keeps its two largest, as cuSPARSELt's
    // projection does; a 2:4 group passes unchanged
    uint32_t x[4], y[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = row[(4 * q + i) * cs];
    s24::KeepTop2<0x7FFFu>(x, y);
    uint16_t a[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = static_cast<uint16_t>(y[i]);
    uint16_t v0 = 0, v1 = 0;
    const uint8_t code = s24cutlass::GroupCode<2, true>(a, v0, v1);
    codes |= static_cast<uint32_t>(code & 0xFu) << (4 * q);
    pairs[q] = static_cast<uint32_t>(v0) | (static_cast<uint32_t>(v1) << 16);
  }
  return codes;
}

// Writes one metadata word and the value pairs of its two rows. `tile`: the
// operand's dense 128 x 128 tile, element (r, c) at tile[r * rs + c * cs]
// (a [n][k] tile read as is, or read transposed for W_s^T), starting at
// operand row r_base and column c_base; values: (m, k/2) bf16 as 32-bit words
// (k / 4 per row), meta: the operand's metadata buffer.
__host__ __device__ inline void OwnEmitWord(const uint16_t* tile, int rs, int cs, int u, int64_t r_base,
                                            int64_t c_base, int64_t m, int64_t k,
                                            uint32_t* values, uint8_t* meta) {
  int r0, c0;
  OwnWordPlace(u, &r0, &c0);
  const int64_t gr = r_base + r0, gc = c_base + c0;
  if (gr >= m || gc >= s24cutlass::MetaCols(k, s24cutlass::kDefaultTileK)) return;
  uint32_t p_lo[4], p_hi[4];
  const uint32_t lo = OwnRowCodes(tile + r0 * rs + c0 * cs, cs, p_lo);
  const uint32_t hi = OwnRowCodes(tile + (r0 + 8) * rs + c0 * cs, cs, p_hi);
  *reinterpret_cast<uint32_t*>(meta + OwnWordOffset(gr, gc, m)) = lo | (hi << 16);
  if (gc < k) {  // k is a multiple of 64: the 16 columns are all in or all out
    const int64_t kg = k / 4;
    uint32_t* d0 = values + gr * kg + gc / 4;
    uint32_t* d1 = values + (gr + 8) * kg + gc / 4;
#ifdef __CUDA_ARCH__
    *reinterpret_cast<uint4*>(d0) = make_uint4(p_lo[0], p_lo[1], p_lo[2], p_lo[3]);
    *reinterpret_cast<uint4*>(d1) = make_uint4(p_hi[0], p_hi[1], p_hi[2], p_hi[3]);
#else
    for (int q = 0; q < 4; ++q) {
      d0[q] = p_lo[q];
      d1[q] = p_hi[q];
    }
#endif
  }
}

// ---------------------------------------------------------------------------
// Weight projection: W (N, K) f32 + mask -> CUTLASS's W_s and W_s^T (bf16)
// ---------------------------------------------------------------------------
//
// Block (bx, by): W rows 128 by .. +127 (N), columns 128 bx .. +127 (K).
// Phase 1: the projected tile, where(mask, W, +0) rounded to bf16 (KeepTop2
//   along K first: a mask keeping more than two of a group keeps the two
//   largest, as the cuSPARSELt projection does), into `tile` [n][k]:
//   coalesced float4 reads of W and 4-byte reads of the mask.
// Phase 2: threads 0..127 emit W_s's words (4 each), 128..255 W_s^T's (the
//   same tile read transposed). 33 KB of shared memory.
struct OwnProject {
  static constexpr int kPitch = kOwnTile + 2;  // odd word count: transposed writes spread banks

  struct alignas(16) Smem {
    uint16_t tile[kOwnTile][kPitch];  // W_s [n][k]
  };

  struct Args {
    const float* w;        // (n, k) row-major
    const uint8_t* mask;   // (n, k) bytes, non-zero keeps
    uint32_t* values;      // W_s values (n, k/2) bf16
    uint8_t* meta;         // W_s metadata
    uint32_t* values_t;    // W_s^T values (k, n/2) bf16
    uint8_t* meta_t;       // W_s^T metadata
    int64_t m, k;          // m = N (rows of W), k = K
  };

  static __host__ __device__ inline void Phase1(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int64_t n0 = static_cast<int64_t>(by) * kOwnTile, k0 = static_cast<int64_t>(bx) * kOwnTile;
    // 128 rows x 32 groups of 4 columns: 16 groups per thread
    for (int idx = tid; idx < kOwnTile * (kOwnTile / 4); idx += kOwnThreads) {
      const int r = idx / (kOwnTile / 4), g = idx % (kOwnTile / 4);
      const int64_t gr = n0 + r, gc = k0 + 4 * g;
      uint32_t x[4] = {0u, 0u, 0u, 0u};
      if (gr < a.m && gc < a.k) {
        const float4 v = *reinterpret_cast<const float4*>(a.w + gr * a.k + gc);
        const uint32_t mk = *reinterpret_cast<const uint32_t*>(a.mask + gr * a.k + gc);
        const float f[4] = {v.x, v.y, v.z, v.w};
        uint32_t y[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const bool keep = ((mk >> (8 * i)) & 0xFFu) != 0u;
          y[i] = keep ? s24::DTraits<s24::kBF16>::FromFloat(f[i]) : 0u;
        }
        s24::KeepTop2<0x7FFFu>(y, x);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        sm.tile[r][4 * g + i] = static_cast<uint16_t>(x[i]);
      }
    }
  }

  static __host__ __device__ inline void Phase2(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int64_t n0 = static_cast<int64_t>(by) * kOwnTile, k0 = static_cast<int64_t>(bx) * kOwnTile;
    const int t = tid & 127;
    for (int u = t; u < kOwnWords; u += 128) {
      if (tid < 128) {  // W_s: rows n, 2:4 along k
        OwnEmitWord(&sm.tile[0][0], kPitch, 1, u, n0, k0, a.m, a.k, a.values, a.meta);
      } else {          // W_s^T: rows k, 2:4 along n
        OwnEmitWord(&sm.tile[0][0], 1, kPitch, u, k0, n0, a.k, a.m, a.values_t, a.meta_t);
      }
    }
  }

  static dim3 Grid(int64_t m, int64_t k) {
    return dim3(static_cast<unsigned>((k + kOwnTile - 1) / kOwnTile),
                static_cast<unsigned>((m + kOwnTile - 1) / kOwnTile));
  }

  static void Emulate(const Args& a) { EmulateTwo<OwnProject>(a); }

  template <typename K>
  static void EmulateTwo(const typename K::Args& a) {
    const dim3 grid = K::Grid(a.m, a.k);
    std::unique_ptr<typename K::Smem> sm(new typename K::Smem());
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        for (int t = 0; t < kOwnThreads; ++t) K::Phase1(a, *sm, bx, by, t);
        for (int t = 0; t < kOwnThreads; ++t) K::Phase2(a, *sm, bx, by, t);
      }
    }
  }
};

// ---------------------------------------------------------------------------
// MVUE of dZ^T: dZ (M tokens, N features) bf16 -> CUTLASS's S(dZ^T) (N, M)
// ---------------------------------------------------------------------------
//
// Block (bx, by): A = dZ^T rows 128 by .. +127 (features), columns 128 bx ..
// +127 (tokens). Phase 1: dZ's 128 x 128 block read as 32-bit words (two
// features each, coalesced along features), each thread MVUE-pruning groups
// of 4 tokens of a feature pair with MvueTransposed<kBF16>::PruneGroup (the
// cuSPARSELt kernel's function: counter = A row * M/4 + group, the same
// uniforms and kept bits), the kept pair placed back into the dense tile
// [feature][token] (the others +0). Phase 2: every thread emits 2 words.
struct OwnMvue {
  static constexpr int kPitch = kOwnTile + 2;
  using Mv = s24::MvueTransposed<s24::kBF16>;

  struct alignas(16) Smem {
    uint16_t tile[kOwnTile][kPitch];  // S(dZ^T) [feature][token]
  };

  struct Args {
    const uint32_t* src;   // dZ (M, N) as words: two features per word
    const uint32_t* seed;  // uint32[2]
    uint32_t* values;      // (N, M/2) bf16
    uint8_t* meta;
    int64_t m, k;          // m = N (A's rows: features), k = M (tokens, 2:4 axis)
  };

  static __host__ __device__ inline void Phase1(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int64_t f0 = static_cast<int64_t>(by) * kOwnTile, t0 = static_cast<int64_t>(bx) * kOwnTile;
    const int64_t words = a.m / 2, kg = a.k / 4;
    const s24::MvueKeys keys = s24::MakeMvueKeys(a.seed);
    // 64 feature pairs x 32 token groups: 8 per thread; lanes walk feature pairs
    for (int idx = tid; idx < (kOwnTile / 2) * (kOwnTile / 4); idx += kOwnThreads) {
      const int p = idx % (kOwnTile / 2), g = idx / (kOwnTile / 2);
      const int64_t gf = f0 + 2 * p, gt = t0 + 4 * g;
      uint32_t pair[2] = {0u, 0u};
      uint8_t nib[2] = {0, 0};
      if (gf < a.m && gt < a.k) {
        uint32_t x[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) x[t] = a.src[(gt + t) * words + gf / 2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const uint32_t counter = static_cast<uint32_t>((gf + half) * kg + gt / 4);
          Mv::PruneGroup(keys, counter, x, half, &pair[half], &nib[half]);
        }
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        // cuSPARSELt's kept pair (code p0 | p1 << 2) back to the dense group
        const int p0 = nib[half] & 3, p1 = (nib[half] >> 2) & 3;
        uint16_t* row = &sm.tile[2 * p + half][4 * g];
#pragma unroll
        for (int i = 0; i < 4; ++i) row[i] = 0;
        if (gf < a.m && gt < a.k) {
          row[p0] = static_cast<uint16_t>(pair[half] & 0xFFFFu);
          row[p1] = static_cast<uint16_t>(pair[half] >> 16);
        }
      }
    }
  }

  static __host__ __device__ inline void Phase2(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int64_t f0 = static_cast<int64_t>(by) * kOwnTile, t0 = static_cast<int64_t>(bx) * kOwnTile;
    for (int u = tid; u < kOwnWords; u += kOwnThreads) {
      OwnEmitWord(&sm.tile[0][0], kPitch, 1, u, f0, t0, a.m, a.k, a.values, a.meta);
    }
  }

  static dim3 Grid(int64_t m, int64_t k) {
    return dim3(static_cast<unsigned>((k + kOwnTile - 1) / kOwnTile),
                static_cast<unsigned>((m + kOwnTile - 1) / kOwnTile));
  }

  static void Emulate(const Args& a) { OwnProject::EmulateTwo<OwnMvue>(a); }
};

template <typename K>
__global__ void __launch_bounds__(kOwnThreads) OwnKernel(typename K::Args args) {
  __shared__ typename K::Smem sm;
  K::Phase1(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
  __syncthreads();
  K::Phase2(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
}

}  // namespace s24c
