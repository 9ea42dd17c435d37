// Our own kernels writing CUTLASS's sm90 compressed 2:4 operand (bf16, tile K
// 128; LAYOUT.md, sm90_layout.cuh): host + device code. Each kernel is a
// struct of phases (kPhases, Phase(p, ...)) that a __global__ wrapper runs
// block by block with a barrier between phases, and that OwnEmulate runs on
// the host thread by thread with the same index arithmetic (the CPU tests'
// view of the kernels, as the cuSPARSELt library does in compress_kernels.cuh).
//
//   OwnProject: the float32 master W (N, K) and the boolean 2:4 (transposable)
//     mask -> W_s = where(mask, W, +0) rounded to bf16, written as CUTLASS's
//     compressed W_s (2:4 along K) and W_s^T (2:4 along N) in one pass.
//   OwnMvueBlock: dZ (M, N) bf16 row-major -> MVUE 2:4 of A = dZ^T (N, M) along M,
//     in CUTLASS's format, with the cuSPARSELt MVUE kernel's randomness
//     (MvueTransposed::PruneGroup: same seed, same kept entries, same bits).
//   (own_act_grad.cuh adds OwnSwigluGradMvue: SwiGLU's backward fused with
//   OwnMvueBlock.)
//
// Both are streams over memory, built as the cuSPARSELt library's fast
// kernels are (project.cu, MvueTransposed): every global load of a thread
// issued before the first use, value pairs leaving as 16-byte (or whole-row)
// stores, and the metadata leaving in CUTLASS's byte order as 8 contiguous
// bytes per thread (OwnMetaChunk), so that a warp writes 256 contiguous bytes.
// The per-group code rule is CUTLASS's (sm90_layout.cuh): the bytes equal
// CUTLASS's own compressor's for the same dense pruned matrix.
//
// Metadata atoms: 64 rows x 128 columns (32 groups) of an operand, 1024
// contiguous bytes (LAYOUT.md). A block holds each atom it touches whole in
// shared memory as one code byte per group ([row][group]), and zeros for the
// columns past the operand's 2:4 axis (an axis that is an odd multiple of 64
// ends in half an atom: CUTLASS's compressor leaves code 0 there). Every
// metadata byte is written (the handler clears nothing).

#pragma once

#include <cstdint>
#include <memory>

#include "compress_kernels.cuh"  // kernels/cusparselt/csrc: group math, MvueTransposed
#include "sm90_layout.cuh"

namespace s24c {


constexpr int kOwnThreads = 256;  // threads per block
constexpr int kOwnAtomRows = 64;  // metadata atom: 64 rows x 32 groups (128 columns)
constexpr int kOwnAtomGroups = 32;

// CUTLASS's code of a group by its non-zero mask m (bit i: element i non-zero;
// at most two bits set): two at i < j -> i | j << 2; one at i < 3 -> i | 3 << 2;
// one at 3 -> 0 | 3 << 2; none -> 0 (sm90_layout.cuh: GroupCode). Nibble m of
// the constant; masks with three or four bits never look it up.
__host__ __device__ constexpr uint64_t OwnCodeTable() {
  uint64_t t = 0;
  for (int m = 0; m < 16; ++m) {
    int idx[2] = {0, 0}, n = 0;
    for (int i = 0; i < 4; ++i) {
      if ((m >> i) & 1) {
        if (n < 2) idx[n] = i;
        ++n;
      }
    }
    uint64_t code = 0;
    if (n == 2) code = static_cast<uint64_t>(idx[0] | (idx[1] << 2));
    if (n == 1) code = idx[0] == 3 ? 0xCu : static_cast<uint64_t>(idx[0] | (3 << 2));
    t |= code << (4 * m);
  }
  return t;
}
constexpr uint64_t kOwnCodes = OwnCodeTable();

// One group of bf16 bits packed as w01 = x0 | x1 << 16 and w23 (more than two
// non-zeros: KeepTop2's two largest, as cuSPARSELt's projection keeps) ->
// CUTLASS's code in *code and its stored pair as one word (first value low).
// -0 counts as zero and is stored as +0; with the zeros cleared, CUTLASS's
// pair is exactly the elements at the code's two positions (a lone value's
// partner is the +0 at position 3, or at 0 for a lone value at 3; an empty
// group stores element 0 twice). w01 and w23 return cleaned (and top-2), the
// group as it is stored. ~20 instructions (no branch but the rare top-2).
__host__ __device__ inline uint32_t OwnGroup(uint32_t& w01, uint32_t& w23, uint32_t* code) {
  uint32_t m = s24::NonzeroMask(w01, w23);
  if (s24::Popc(m) > 2) {
    const uint32_t x[4] = {w01 & 0xFFFFu, w01 >> 16, w23 & 0xFFFFu, w23 >> 16};
    uint32_t y[4];
    s24::KeepTop2<0x7FFFu>(x, y);
    w01 = y[0] | (y[1] << 16);
    w23 = y[2] | (y[3] << 16);
    m = s24::NonzeroMask(w01, w23);
  }
  // a zero-magnitude half (+0 or -0) becomes +0: keep its sign bit only when non-zero
  w01 &= 0x7FFF7FFFu | (((w01 & 0x7FFF7FFFu) + 0x7FFF7FFFu) & 0x80008000u);
  w23 &= 0x7FFF7FFFu | (((w23 & 0x7FFF7FFFu) + 0x7FFF7FFFu) & 0x80008000u);
  const uint32_t c = static_cast<uint32_t>(kOwnCodes >> (4 * m)) & 0xFu;
  const uint32_t i0 = c & 3u, i1 = c >> 2;
  *code = c;
  return s24::Prmt(w01, w23, (2 * i0) | ((2 * i0 + 1) << 4) | ((2 * i1) << 8) | ((2 * i1 + 1) << 12));
}

// MVUE of one group (x[0..3]: its four bf16 values in the `half` 16 bits of each
// word, as MvueTransposed::PruneGroupDraw takes them) with the cuSPARSELt MVUE
// kernel's draw for `counter` (A row * M/4 + group) -> CUTLASS's code and stored
// pair: the draw's own when both kept values are non-zero; a kept zero (rare)
// goes through OwnGroup, CUTLASS's rule on the dense kept group. Shared by
// OwnMvueBlock and the fused input-gradient epilogue (gemm_epilogue.cuh
// Sm90MvueStore): the same bytes from either.
__host__ __device__ inline void OwnMvueGroup(const s24::MvueKeys& keys, uint32_t counter, const uint32_t x[4],
                                             int half, uint32_t* pair, uint32_t* code) {
  if (!s24::MvueTransposed<s24::kBF16>::PruneGroupDraw(keys, counter, x, half, pair, code)) {
    // a kept value is zero: CUTLASS's code and pair of the dense kept group
    const uint64_t y = (static_cast<uint64_t>(*pair & 0xFFFFu) << (16 * (*code & 3u))) |
                       (static_cast<uint64_t>(*pair >> 16) << (16 * (*code >> 2)));  // w01 | w23 << 32
    uint32_t w01 = static_cast<uint32_t>(y), w23 = static_cast<uint32_t>(y >> 32);
    *pair = OwnGroup(w01, w23, code);
  }  // end OwnMvueZeroKept
}

// Four code bytes (one group each, < 16) -> their two metadata bytes
// (groups 0, 1 in the first, 2, 3 in the second; lower group in the low nibble).
__host__ __device__ inline uint32_t OwnSquash(uint32_t w) {
  const uint32_t t = (w | (w >> 4)) & 0x00FF00FFu;
  return (t & 0xFFu) | ((t >> 8) & 0xFF00u);
}

// Bytes 8t .. 8t+7 (t = 0 .. 127) of one metadata atom from its codes,
// code[r * pitch + g] for atom row r (0..63) and group g (0..31); pitch a
// multiple of 4. Inverting LAYOUT.md's offset (nk = 4): byte 8t + j holds row
// R = 16 (t / 32) + 8 ((j / 2) % 2) + (t / 2) % 8, byte column
// B = j % 2 + 2 ((t / 16) % 2) + 4 (j / 4) + 8 (t % 2), i.e. groups 2B, 2B+1:
// rows R0 and R0 + 8 of groups g0 .. g0+3 and g0+8 .. g0+11, four 32-bit
// shared loads. t % 2 picks the atom's column half (groups 16 (t % 2) ..);
// half_atom: `code` holds only that half's 16 groups (g counted from it).
__host__ __device__ inline uint2 OwnMetaChunk(const uint8_t* code, int pitch, int t, bool half_atom = false) {
  const int r0 = 16 * (t >> 5) + ((t >> 1) & 7);
  const int g0 = 4 * ((t >> 4) & 1) + (half_atom ? 0 : 16 * (t & 1));
  const uint8_t* a = code + r0 * pitch + g0;
  const uint8_t* b = a + 8 * pitch;
  const uint32_t a0 = *reinterpret_cast<const uint32_t*>(a), a1 = *reinterpret_cast<const uint32_t*>(a + 8);
  const uint32_t b0 = *reinterpret_cast<const uint32_t*>(b), b1 = *reinterpret_cast<const uint32_t*>(b + 8);
  return make_uint2(OwnSquash(a0) | (OwnSquash(b0) << 16), OwnSquash(a1) | (OwnSquash(b1) << 16));
}

// Byte of the metadata holding groups g & ~1 (low nibble) and g | 1 of row r of an
// operand whose metadata has meta_rows rows (MetaRows: m rounded up to 64):
// sm90_layout.cuh's MetaByteOffset (nk = 4) in 32-bit shifts and masks, for the
// epilogue's per-group stores (the caller keeps the buffer under 4 GB).
__host__ __device__ inline uint32_t OwnMetaByte(uint32_t r, uint32_t g, uint32_t meta_rows) {
  const uint32_t kb = g >> 1, b = kb & 15u, rr = r & 63u;
  return (kb >> 4) * meta_rows * 16u + (r >> 6) * 1024u + (b & 1u) + ((rr >> 3) & 1u) * 2u +
         (b >> 2) * 4u + (rr & 7u) * 16u + ((b >> 1) & 1u) * 128u + (rr >> 4) * 256u;
}

// First byte of metadata atom (row block ma, column block ka) of an operand of m rows.
__host__ __device__ inline int64_t OwnAtomOffset(int64_t ma, int64_t ka, int64_t m) {
  return ka * s24cutlass::MetaRows(m) * (kOwnAtomGroups / 2) + ma * (kOwnAtomRows * kOwnAtomGroups / 2);
}

__host__ __device__ inline void OwnStore8(uint8_t* dst, uint2 v) {
  *reinterpret_cast<uint2*>(dst) = v;
}

// ---------------------------------------------------------------------------
// Weight projection: W (N, K) f32 + mask -> CUTLASS's W_s and W_s^T (bf16)
// ---------------------------------------------------------------------------
//
// Block (bx, by): W rows 64 by .. +63 (N: one W_s atom row), columns 128 bx ..
// +127 (K: one W_s atom column, two W_s^T atom rows).
// Phase 0: warp w reads rows w + 8i (i = 0..7), lane l the float4 l of the
//   row (512 contiguous bytes of W, 128 of the mask), all 8 loads issued
//   first. Each float4 is one W_s group: masked, rounded to bf16, OwnGroup ->
//   its pair straight to W_s's values (128 contiguous bytes per warp), its
//   code to shared memory, the stored group into the tile [n][k].
// Phase 1: W_s^T's groups along N: thread (p, j) reads the tile's word p
//   (columns 2p, 2p+1) of rows 4j .. 4j+3 (a warp reads 32 consecutive words
//   of a row: no bank conflict) and compresses the two groups; pairs and
//   codes to shared memory.
// Phase 2: W_s^T's values leave as 16-byte stores (64 bytes per row), and
//   both metadata: W_s's whole atom (threads 0..127), W_s^T's half atoms
//   (the block's 64 columns of N; threads 128..255), zeros for the other half
//   where N ends in half an atom.
struct OwnProject {
  static constexpr int kPhases = 3;
  static constexpr int kRows = 64;     // N
  static constexpr int kCols = 128;    // K
  static constexpr int kGroupsK = kCols / 4;  // W_s groups per tile row: 32
  static constexpr int kGroupsN = kRows / 4;  // W_s^T groups per tile column: 16

  struct alignas(16) Smem {
    uint32_t tile[kRows][kCols / 2];          // W_s as stored, [n][k] bf16 pairs
    uint32_t vals_t[kCols][kGroupsN + 1];     // W_s^T pairs [k][group along n] (odd pitch)
    alignas(16) uint8_t code[kRows][kGroupsK + 4];   // W_s codes [n][group along k]
    alignas(16) uint8_t code_t[kCols][kGroupsN + 4];  // W_s^T codes [k][group along n]
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

  static __host__ __device__ inline void Phase(int p, const Args& a, Smem& sm, int bx, int by, int tid) {
    const int64_t n0 = static_cast<int64_t>(by) * kRows, k0 = static_cast<int64_t>(bx) * kCols;
    if (p == 0) {
      const int lane = tid & 31, warp = tid >> 5;
      const int64_t gc = k0 + 4 * lane;
      const bool in = gc < a.k;  // a.k is a multiple of 64: the tile's last 16 groups may be past it
      float4 v[8];
      uint32_t mk[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t off = (n0 + warp + 8 * i) * a.k + gc;
        v[i] = in ? *reinterpret_cast<const float4*>(a.w + off) : make_float4(0.f, 0.f, 0.f, 0.f);
        mk[i] = in ? *reinterpret_cast<const uint32_t*>(a.mask + off) : 0u;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int r = warp + 8 * i;
        const float f[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
        uint32_t b[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          b[e] = ((mk[i] >> (8 * e)) & 0xFFu) ? s24::DTraits<s24::kBF16>::FromFloat(f[e]) : 0u;
        }
        uint32_t w01 = b[0] | (b[1] << 16), w23 = b[2] | (b[3] << 16), code;
        const uint32_t pair = OwnGroup(w01, w23, &code);
        if (in) a.values[(n0 + r) * (a.k / 4) + gc / 4] = pair;
        sm.code[r][lane] = static_cast<uint8_t>(code);
        *reinterpret_cast<uint2*>(&sm.tile[r][2 * lane]) = make_uint2(w01, w23);
      }
    } else if (p == 1) {
      const int pw = (tid & 31) + 32 * ((tid >> 5) & 1);  // word: columns 2pw, 2pw + 1
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int j = (tid >> 6) + 4 * i;  // group along n: rows 4j .. 4j+3
        const uint32_t x0 = sm.tile[4 * j][pw], x1 = sm.tile[4 * j + 1][pw];
        const uint32_t x2 = sm.tile[4 * j + 2][pw], x3 = sm.tile[4 * j + 3][pw];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t sel = h ? 0x7632u : 0x5410u;  // high or low halves: column 2pw + h
          uint32_t w01 = s24::Prmt(x0, x1, sel), w23 = s24::Prmt(x2, x3, sel), code;
          sm.vals_t[2 * pw + h][j] = OwnGroup(w01, w23, &code);
          sm.code_t[2 * pw + h][j] = static_cast<uint8_t>(code);
        }
      }
    } else {
      // W_s^T values: rows k0 + kr (< K), groups n0/4 .. +15: four 16-byte stores per row
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int idx = tid + kOwnThreads * i, kr = idx >> 2, q = 4 * (idx & 3);
        if (k0 + kr < a.k) {
          const uint32_t* s = &sm.vals_t[kr][q];
          *reinterpret_cast<uint4*>(a.values_t + (k0 + kr) * (a.m / 4) + n0 / 4 + q) =
              make_uint4(s[0], s[1], s[2], s[3]);
        }
      }
      const int t = tid & 127;
      if (tid < 128) {
        // W_s: atom (n0 / 64, k0 / 128), whole (columns past K hold code 0)
        OwnStore8(a.meta + OwnAtomOffset(n0 / kOwnAtomRows, k0 / kCols, a.m) + 8 * t,
                  OwnMetaChunk(&sm.code[0][0], kGroupsK + 4, t));
      } else {
        // W_s^T: atom rows k0/64 and +1 (those inside K), columns n0 .. n0+63: the
        // atom's half h = (n0 / 64) % 2, i.e. the chunks with t % 2 == h; the
        // other half too (zeros) when this is the last half atom of N
        const int mb = t >> 6, h = static_cast<int>((n0 / kRows) & 1);
        const int64_t kr0 = k0 + kOwnAtomRows * mb;
        const bool last_half = h == 0 && n0 + kRows >= a.m;
        if (kr0 < a.k) {
          const int64_t base = OwnAtomOffset(kr0 / kOwnAtomRows, n0 / (2 * kRows), a.k);
          const int c = t & 63;
          OwnStore8(a.meta_t + base + 8 * (2 * c + h),
                    OwnMetaChunk(&sm.code_t[kOwnAtomRows * mb][0], kGroupsN + 4, 2 * c + h, true));
          if (last_half) OwnStore8(a.meta_t + base + 8 * (2 * c + 1), make_uint2(0u, 0u));
        }
      }
    }
  }

  static dim3 Grid(int64_t m, int64_t k) {
    return dim3(static_cast<unsigned>((k + kCols - 1) / kCols), static_cast<unsigned>(m / kRows));
  }
};

// ---------------------------------------------------------------------------
// MVUE of dZ^T: dZ (M tokens, N features) bf16 -> CUTLASS's S(dZ^T) (N, M)
// ---------------------------------------------------------------------------
//
// Block (bx, by): A = dZ^T rows 64 by .. +63 (features: one atom row), groups
// G bx .. +G-1 (tokens 4 G bx ..: G / 32 atom columns). G = 64 is how the
// cuSPARSELt library's MvueTransposed (compress_kernels.cuh) blocks it. G = 32
// (the default, kOwnMvueBlockGroups) halves a block: half the loads per thread,
// 40 registers instead of 57, so 6 blocks per SM instead of 4 and twice the
// blocks. On an H200 it is 9% faster on 774M's dZ1 (16384 x 5120) and 22% on
// its dY (16384 x 1280: 1280 blocks of 64, 2.4 waves, whose tail and lock-step
// waves ran it at half dZ1's bandwidth); docs/BENCHMARKS.md section 12.
// Phase 0: warp w, lane l reads the word l of the block's feature pairs
//   (features 2l, 2l+1) at the four tokens of groups w + 8i (i < G / 8; all
//   loads issued first; 128 contiguous bytes per warp load), MVUE-prunes the
//   two groups with PruneGroupDraw (the cuSPARSELt kernel's own draw: counter
//   = A row * M/4 + group, the same uniforms and bits). Its pair and code are
//   CUTLASS's when both kept values are non-zero; a kept zero (rare) goes
//   through OwnGroup, CUTLASS's rule on the dense group. Into shared memory.
// Phase 1: values as G / 16 16-byte stores per thread (a row's G / 4 groups),
//   each atom's metadata as one 8-byte chunk per thread of 128.
// The same bytes for either G: a group's draw depends on its counter only.
struct OwnMvueArgs {
  const uint32_t* src;   // dZ (M, N) as words: two features per word
  const uint32_t* seed;  // uint32[2]
  uint32_t* values;      // (N, M/2) bf16
  uint8_t* meta;
  int64_t m, k;          // m = N (A's rows: features), k = M (tokens, 2:4 axis)
};

template <int G>
struct OwnMvueBlock {
  static_assert(G == 32 || G == 64, "a block holds one or two metadata atom columns");
  static constexpr int kPhases = 2;
  static constexpr int kRows = 64, kGroups = G, kRounds = G / 8;
  using Mv = s24::MvueTransposed<s24::kBF16>;

  struct alignas(16) Smem {
    uint32_t vals[kRows][kGroups + 4];  // +4 words keeps rows 16-byte aligned
    alignas(16) uint8_t code[kRows][kGroups + 4];
  };

  using Args = OwnMvueArgs;

  static __host__ __device__ inline void Phase(int p, const Args& a, Smem& sm, int bx, int by, int tid) {
    const int64_t r0 = static_cast<int64_t>(by) * kRows, g0 = static_cast<int64_t>(bx) * kGroups;
    const int64_t kg = a.k / 4;
    if (p == 0) {
      const int lane = tid & 31, warp = tid >> 5;
      const int64_t words = a.m / 2, gf = g0 + warp;  // gf: the thread's first group
      const s24::MvueKeys keys = s24::MakeMvueKeys(a.seed);
      uint32_t x[kRounds][4];
      Mv::LoadGroups(a.src + 4 * gf * words + r0 / 2 + lane, words, gf, kg, x);
      // counter of group gf + 8 i, A row r0 + 2 lane + half: c + half * kg + 8 i. s24::Opaque:
      // kept in registers, not recomputed from r0, lane, kg and gf for every group
      const uint32_t c = s24::Opaque(static_cast<uint32_t>((r0 + 2 * lane) * kg + gf));
      const uint32_t c_hi = s24::Opaque(c + static_cast<uint32_t>(kg));
      const int groups_in = static_cast<int>(kg - gf < kGroups ? kg - gf : kGroups);  // groups gf + 8 i < kg
      uint32_t* vals = &sm.vals[2 * lane][warp];
      uint8_t* codes = &sm.code[2 * lane][warp];
#pragma unroll
      for (int i = 0; i < kRounds; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          // groups past the tokens (the last block column) run on LoadGroups' stand-in words,
          // without a branch: their values are never stored, and their code is CUTLASS's padding, 0
          uint32_t pair, code;
          OwnMvueGroup(keys, (half ? c_hi : c) + 8 * i, x[i], half, &pair, &code);
          vals[half * (kGroups + 4) + 8 * i] = pair;
          codes[half * (kGroups + 4) + 8 * i] = static_cast<uint8_t>(8 * i < groups_in ? code : 0u);
        }
      }
    } else {
      StoreTile(sm, a.values, a.meta, a.m, a.k, r0, g0, tid);
    }
  }

  // The store phase of one 64-row tile (rows r0.., groups g0..) of an operand of m rows and
  // k columns: values as G / 16 16-byte stores per thread (row tid / 4, groups (G / 4)
  // (tid % 4) .. + G/4 - 1; kg is a multiple of 16), each metadata atom column g0/32 +
  // (tid / 128) that the block has and the operand's metadata does as one 8-byte chunk per
  // thread of 128.
  static __host__ __device__ inline void StoreTile(const Smem& sm, uint32_t* values, uint8_t* meta,
                                                   int64_t m, int64_t k, int64_t r0, int64_t g0, int tid) {
    const int64_t kg = k / 4;
    constexpr int kChunk = kGroups / 4;
    const int rl = tid >> 2, q = (tid & 3) * kChunk;
    if (g0 + q < kg) {
      uint4* dst = reinterpret_cast<uint4*>(values + (r0 + rl) * kg + g0 + q);
      const uint4* src = reinterpret_cast<const uint4*>(&sm.vals[rl][q]);
#pragma unroll
      for (int j = 0; j < kChunk / 4; ++j) dst[j] = src[j];
    }
    const int half = tid >> 7, t = tid & 127;
    const int64_t ka = g0 / kOwnAtomGroups + half;
    if (half < kGroups / kOwnAtomGroups &&
        ka * kOwnAtomGroups < s24cutlass::MetaCols(k, s24cutlass::kDefaultTileK) / 4) {
      OwnStore8(meta + OwnAtomOffset(r0 / kOwnAtomRows, ka, m) + 8 * t,
                OwnMetaChunk(&sm.code[0][kOwnAtomGroups * half], kGroups + 4, t));
    }
  }

  static dim3 Grid(int64_t m, int64_t k) {
    return dim3(static_cast<unsigned>((k / 4 + kGroups - 1) / kGroups), static_cast<unsigned>(m / kRows));
  }
};

// The host emulation: every block in turn, each phase thread by thread.
template <typename K>
void OwnEmulate(const typename K::Args& a) {
  const dim3 grid = K::Grid(a.m, a.k);
  std::unique_ptr<typename K::Smem> sm(new typename K::Smem());
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      for (int p = 0; p < K::kPhases; ++p) {
        for (int t = 0; t < kOwnThreads; ++t) K::Phase(p, a, *sm, bx, by, t);
      }
    }
  }
}

template <typename K>
__global__ void __launch_bounds__(kOwnThreads) OwnKernel(typename K::Args args) {
  __shared__ typename K::Smem sm;
#pragma unroll
  for (int p = 0; p < K::kPhases; ++p) {
    if (p) __syncthreads();
    K::Phase(p, args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
  }
}

}  // namespace s24c
