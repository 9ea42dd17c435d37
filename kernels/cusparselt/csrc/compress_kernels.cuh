// The compression kernels (host + device code): Compressor, the generic one
// (any dtype, plain / masked / MVUE, A or its transpose), and MvueTransposed,
// the fast path of MVUE + compression of dZ^T read from dZ. Each is a struct
// of phase functions that a __global__ wrapper runs block by block, and that
// Emulate runs on the host, thread by thread, with the same index arithmetic
// (the CPU tests' view of the kernels). compress.cu instantiates and
// dispatches them; a new kernel family follows the same pattern in a header
// of its own (and may reuse these phases, e.g. MvueTransposed::Phase2).

#pragma once

#include <cstdint>
#include <memory>

#include "compress.h"
#include "group.cuh"
#include "layout.cuh"

namespace s24 {

// ---------------------------------------------------------------------------
// The compression kernel
// ---------------------------------------------------------------------------

// kTileRows (compress.h): rows of A per block (one metadata row block)
constexpr int kTileGroups = 32;   // groups of 4 columns of A per block
constexpr int kTileCols = kTileGroups * 4;
constexpr int kThreads = 256;

// One block compresses a 64 x 128 tile of A. A is the input itself
// (TRANS=false, input (m, k) row-major) or its transpose (TRANS=true, input
// (k, m) row-major, read coalesced along m and transposed through shared
// memory). It writes A's values (row-major (m, k/2)) and the tile's metadata,
// which is one contiguous run of bytes. The three phases are separate
// functions so that a host emulation (s24_emulate_compress, for CPU tests)
// runs exactly the same index arithmetic.
template <int DT, int MODE, bool TRANS>
struct Compressor {
  using Tr = DTraits<DT>;
  using Bits = typename Tr::Bits;
  static constexpr int ES = sizeof(Bits);
  static constexpr int CH = 16 / ES;  // elements per 16-byte chunk
  // Row padding: 16-byte-aligned rows for the vector stores (TRANS=false);
  // an odd number of 32-bit words per row against bank conflicts (TRANS=true).
  static constexpr int PAD = TRANS ? (ES == 2 ? 2 : 4) : CH;

  struct alignas(16) Smem {
    Bits tile[kTileRows][kTileCols + PAD];
    alignas(16) uint8_t nib[kTileRows * kTileGroups];
    MvueKeys keys;  // MVUE: derived once per block (the compiler otherwise
                    // re-derives them, 64-bit multiplies, in the group loop)
  };

  struct Args {
    const Bits* src;
    const uint8_t* mask;
    const uint32_t* seed;
    uint8_t* out;
    int64_t m, k;
  };

  static __host__ __device__ inline void ApplyMask(const uint8_t* mask, int64_t off, uint4* v) {
    uint8_t mk[CH];
    if (CH == 8) {
      *reinterpret_cast<uint2*>(mk) = *reinterpret_cast<const uint2*>(mask + off);
    } else {
      *reinterpret_cast<uint4*>(mk) = *reinterpret_cast<const uint4*>(mask + off);
    }
    Bits* e = reinterpret_cast<Bits*>(v);
#pragma unroll
    for (int j = 0; j < CH; ++j)
      if (!mk[j]) e[j] = 0;
  }

  // Phase 1: the tile into shared memory (zeros outside A).
  static __host__ __device__ inline void Load(const Args& a, Smem& sm, int bx, int by, int tid) {
    if (MODE == kModeMvue && tid == 0) sm.keys = MakeMvueKeys(a.seed);
    const int64_t r0 = static_cast<int64_t>(by) * kTileRows;
    const int64_t c0 = static_cast<int64_t>(bx) * kTileCols;
    if (!TRANS) {
      constexpr int CPR = kTileCols / CH;
      for (int idx = tid; idx < kTileRows * CPR; idx += kThreads) {
        const int r = idx / CPR;
        const int cc = (idx % CPR) * CH;
        const int64_t gr = r0 + r, gc = c0 + cc;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (gr < a.m && gc < a.k) {
          const int64_t off = gr * a.k + gc;
          v = *reinterpret_cast<const uint4*>(a.src + off);
          if (MODE == kModeMask) ApplyMask(a.mask, off, &v);
        }
        *reinterpret_cast<uint4*>(&sm.tile[r][cc]) = v;
      }
    } else {
      constexpr int CPR = kTileRows / CH;  // chunks per input row (along m)
      for (int idx = tid; idx < kTileCols * CPR; idx += kThreads) {
        const int c = idx / CPR;
        const int rr = (idx % CPR) * CH;
        const int64_t gc = c0 + c, gr = r0 + rr;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (gc < a.k && gr < a.m) {
          const int64_t off = gc * a.m + gr;
          v = *reinterpret_cast<const uint4*>(a.src + off);
          if (MODE == kModeMask) ApplyMask(a.mask, off, &v);
        }
        const Bits* e = reinterpret_cast<const Bits*>(&v);
#pragma unroll
        for (int j = 0; j < CH; ++j) sm.tile[rr + j][c] = e[j];
      }
    }
  }

  // Phase 2: choose the kept pair of every group, write the values, and the
  // group's metadata nibble into shared memory.
  static __host__ __device__ inline void Select(const Args& a, Smem& sm, int bx, int by,
                                                int tid) {
    const int64_t r0 = static_cast<int64_t>(by) * kTileRows;
    const int64_t g0 = static_cast<int64_t>(bx) * kTileGroups;
    const int64_t kg = a.k / 4;                 // groups holding values
    const int64_t kgm = MetaCols(a.k, ES) / 4;  // groups covered by metadata
    const int64_t half_k = a.k / 2;
    const int g = tid % kTileGroups;
    const int64_t gg = g0 + g;
    if (gg >= kgm) return;
    const MvueKeys keys = sm.keys;
    for (int r = tid / kTileGroups; r < kTileRows; r += kThreads / kTileGroups) {
      const int64_t gr = r0 + r;
      uint32_t code = 0xEu;  // padding rows / columns
      if (gr < a.m && gg < kg) {
        uint32_t x[4], y[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) x[i] = static_cast<uint32_t>(sm.tile[r][4 * g + i]);
        if (MODE == kModeMvue) {
          // counter: the group's index in A (< 2^32, checked by the handler)
          float u1, u2;
          MvueUniforms(keys, static_cast<uint32_t>(gr * kg + gg), &u1, &u2);
          Mvue4<DT>(x, y, u1, u2);
        } else {
          KeepTop2<Tr::kMag>(x, y);
        }
        int i0, i1;
        CanonicalPair<Tr::kMag>(y, &i0, &i1);
        uint32_t v0 = 0, v1 = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (i == i0) v0 = y[i];
          if (i == i1) v1 = y[i];
        }
        code = static_cast<uint32_t>(i0) | (static_cast<uint32_t>(i1) << 2);
        Bits* vals = reinterpret_cast<Bits*>(a.out) + gr * half_k + 2 * gg;
        if (ES == 2) {
          *reinterpret_cast<uint32_t*>(vals) = v0 | (v1 << 16);
        } else {
          *reinterpret_cast<uint16_t*>(vals) = static_cast<uint16_t>(v0 | (v1 << 8));
        }
      }
      sm.nib[LocalNibble<ES>(r, g)] = static_cast<uint8_t>(code);
    }
  }

  // Phase 3: the tile's metadata, one contiguous run of bytes.
  static __host__ __device__ inline void Store(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int64_t r0 = static_cast<int64_t>(by) * kTileRows;
    const int64_t g0 = static_cast<int64_t>(bx) * kTileGroups;
    const int64_t kc = MetaCols(a.k, ES);
    const int64_t kgm = kc / 4;
    const int64_t groups_here = (kgm - g0) < kTileGroups ? (kgm - g0) : kTileGroups;
    // a multiple of 256 bytes: groups_here is a multiple of 8 (16-bit) or 16 (fp8)
    const int64_t nbytes = groups_here * kTileRows / 2;
    const int64_t base = ValueBytes(a.m, a.k, ES) + (r0 / 64) * 8 * kc +
                         (ES == 2 ? (g0 / 8) * 256 : (g0 / 16) * 512);
    for (int64_t b = tid; b < nbytes / 16; b += kThreads) {
      alignas(16) uint8_t bytes[16];
#pragma unroll
      for (int t = 0; t < 16; ++t) {
        const int q = static_cast<int>(b * 32 + 2 * t);
        bytes[t] = static_cast<uint8_t>(sm.nib[q] | (sm.nib[q + 1] << 4));
      }
      *reinterpret_cast<uint4*>(a.out + base + b * 16) = *reinterpret_cast<const uint4*>(bytes);
    }
  }

  static dim3 Grid(int64_t m, int64_t k) {
    const int64_t kgm = MetaCols(k, ES) / 4;
    return dim3(static_cast<unsigned>((kgm + kTileGroups - 1) / kTileGroups),
                static_cast<unsigned>((m + kTileRows - 1) / kTileRows));
  }

  // The same work as the kernel, block by block and thread by thread.
  static void Emulate(const Args& a) {
    const dim3 grid = Grid(a.m, a.k);
    std::unique_ptr<Smem> sm(new Smem());
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        for (int t = 0; t < kThreads; ++t) Load(a, *sm, bx, by, t);
        for (int t = 0; t < kThreads; ++t) Select(a, *sm, bx, by, t);
        for (int t = 0; t < kThreads; ++t) Store(a, *sm, bx, by, t);
      }
    }
  }
};

// ---------------------------------------------------------------------------
// MVUE + compression of A = dZ^T read from dZ: the kernel of every micro-step
// ---------------------------------------------------------------------------
//
// The generic Compressor moves its tile through shared memory in 2-byte
// pieces and spent ~200 SASS instructions per group of 4: at 16384 tokens it
// ran at 0.5-0.8 TB/s on an H100 (2026-11-23), a third or less of a copy. This
// kernel does the same work for the one call that runs every micro-step: 16-bit
// dZ (k tokens x m features, row-major), A = dZ^T (m x k) 2:4 along the
// tokens, m and k multiples of 64 (the backend pads tokens to 64).
//
// A block owns a tile of 64 rows of A x 64 groups (256 tokens).
// Phase 1: lane l of warp w owns A's rows 2l and 2l+1, i.e. one 32-bit word of
//   every dZ row (a warp reads 128 contiguous bytes per token), and the groups
//   w, w + 8, ..., w + 56 of the tile. It loads all 32 words first (loads in
//   flight), then runs two MVUEs per group on registers and writes the kept
//   pairs and nibbles to shared memory.
// Phase 2: each row's kept pairs leave as 16-byte stores (256 contiguous bytes
//   per row), the tile's metadata (one contiguous run, the documented layout) as
//   8-byte stores, each holding rows r and r + 8 of 8 groups.
constexpr int kMvRows = 64;
constexpr int kMvGroups = 64;

// The host emulation of a kernel of two phases with a barrier between them
// (Phase1, __syncthreads, Phase2; K::Grid, K::Smem): every block in turn, each
// phase thread by thread, so the CPU runs the GPU kernel's own code.
template <typename K>
void EmulateTwoPhases(const typename K::Args& a) {
  const dim3 grid = K::Grid(a.m, a.k);
  std::unique_ptr<typename K::Smem> sm(new typename K::Smem());
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      for (int t = 0; t < kThreads; ++t) K::Phase1(a, *sm, bx, by, t);
      for (int t = 0; t < kThreads; ++t) K::Phase2(a, *sm, bx, by, t);
    }
  }
}

template <int DT>
struct MvueTransposed {
  using Tr = DTraits<DT>;
  static_assert(sizeof(typename Tr::Bits) == 2, "16-bit types only");

  struct alignas(16) Smem {
    uint32_t vals[kMvRows][kMvGroups + 4];  // +4 words keeps rows 16-byte aligned
    uint8_t nib[kMvRows][kMvGroups + 4];
  };

  struct Args {
    const uint32_t* __restrict__ src;  // dZ as words: two features per word
    const uint32_t* seed;
    uint8_t* out;
    int64_t m, k;
  };

  // MVUE of one group of A: its four elements are the low (half = 0) or high
  // halves of the words x[0..3] (four consecutive tokens of a feature pair),
  // `counter` its index in A. Writes the drawn pair as one word (lo | hi << 16)
  // and its code lo | hi << 2, and returns whether both kept values are non-zero:
  // then (almost always) the pair and code are final in both cuSPARSELt's and
  // CUTLASS's formats; otherwise the caller moves the zero to its format's
  // positions (PruneGroup; OwnMvueBlock in kernels/cutlass). The kept bits come out of
  // the packed group with one prmt (bytes 2 lo, 2 lo + 1, 2 hi, 2 hi + 1), and
  // MvueScale recomputes their a_i: the same floats MvuePick uses.
  static __host__ __device__ inline bool PruneGroupDraw(const MvueKeys& keys, uint32_t counter,
                                                        const uint32_t x[4], int half, uint32_t* pair,
                                                        uint32_t* code) {
    const uint32_t sel = half ? 0x7632u : 0x5410u;
    const uint32_t w01 = Prmt(x[0], x[1], sel), w23 = Prmt(x[2], x[3], sel);
    const float a[4] = {MvueA(Tr::ToFloat(w01 & 0xFFFFu)), MvueA(Tr::ToFloat(w01 >> 16)),
                        MvueA(Tr::ToFloat(w23 & 0xFFFFu)), MvueA(Tr::ToFloat(w23 >> 16))};
    float u1, u2;
    MvueUniforms(keys, counter, &u1, &u2);
    const MvueDraw d = MvueSample(a, u1, u2);
    // prmt selector of bytes 2 lo, 2 lo + 1, 2 hi, 2 hi + 1: 0x1010 + 0x22 lo + 0x2200 hi
    const uint32_t kept = Prmt(w01, w23, 0x1010u + 0x22u * d.code + (0x2200u - 0x88u) * (d.code >> 2));
    const uint32_t bl = Tr::FromFloat(MvueScale(Tr::ToFloat(kept & 0xFFFFu), d.s, d.t_lo));
    const uint32_t bh = Tr::FromFloat(MvueScale(Tr::ToFloat(kept >> 16), d.s, d.t_hi));
    *pair = bl | (bh << 16);
    *code = d.code;
    return (bl & Tr::kMag) && (bh & Tr::kMag);
  }

  // PruneGroupDraw in cuSPARSELt's format: a kept zero moves to cuSPARSELt's
  // canonical positions (CanonicalPair). Kernels that compute dZ before pruning
  // it (act_grad) call this too, so that their buffers are this kernel's, byte
  // for byte.
  static __host__ __device__ inline void PruneGroup(const MvueKeys& keys, uint32_t counter,
                                                    const uint32_t x[4], int half, uint32_t* vals,
                                                    uint8_t* nib) {
    uint32_t pair, code;
    if (!PruneGroupDraw(keys, counter, x, half, &pair, &code)) {
      // a kept value is zero (rare: zeros in the input)
      const int lo = static_cast<int>(code & 3u), hi = static_cast<int>(code >> 2);
      uint32_t y[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) y[j] = j == lo ? pair & 0xFFFFu : (j == hi ? pair >> 16 : 0u);
      int c0, c1;
      CanonicalPair<Tr::kMag>(y, &c0, &c1);
      uint32_t bl = 0, bh = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (j == c0) bl = y[j];
        if (j == c1) bh = y[j];
      }
      pair = bl | (bh << 16);
      code = static_cast<uint32_t>(c0) | (static_cast<uint32_t>(c1) << 2);
    }  // end MvueZeroKept
    *vals = pair;
    *nib = static_cast<uint8_t>(code);
  }

  // Phase 1's loads: from p (dZ's word of this thread's feature pair at the first token of
  // group g_first < kg), the four tokens of groups g_first + 8 i (i = 0 .. R-1; R = 8 here,
  // 4 in the CUTLASS-format kernel's small blocks); all 4 R issued before any use. Groups
  // from kg on (the last block column) load group g_first + 8 i_max again, i_max the last
  // in range: stand-in words whose results are never stored, and no load is predicated. A
  // load's token row is 32 i + t rows of `words` words after p's: one IMAD.WIDE each (a
  // 64-bit index product per load cost ~12 instructions).
  template <int R>
  static __host__ __device__ inline void LoadGroups(const uint32_t* p, int64_t words, int64_t g_first,
                                                    int64_t kg, uint32_t (&x)[R][4]) {
    const uint32_t pitch = static_cast<uint32_t>(4 * words);  // bytes per token row
    const char* base = reinterpret_cast<const char*>(p);
    const int64_t left = kg - g_first;  // >= 1
    const uint32_t last = left > 8 * (R - 1) ? 32u * (R - 1)
                                             : static_cast<uint32_t>(32 * ((left - 1) / 8));  // 32 i_max
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const uint32_t row = 32u * i < last ? 32u * i : last;
#pragma unroll
      for (int t = 0; t < 4; ++t)
        x[i][t] = *reinterpret_cast<const uint32_t*>(base + static_cast<uint64_t>(row + t) * pitch);
    }
  }

  static __host__ __device__ inline void Phase1(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int lane = tid & 31, warp = tid >> 5;
    const int64_t r0 = static_cast<int64_t>(by) * kMvRows;
    const int64_t g0 = static_cast<int64_t>(bx) * kMvGroups;
    const int64_t kg = a.k / 4, words = a.m / 2;
    const int64_t gf = g0 + warp;  // the thread's first group
    const MvueKeys keys = MakeMvueKeys(a.seed);
    uint32_t x[8][4];
    LoadGroups(a.src + 4 * gf * words + r0 / 2 + lane, words, gf, kg, x);
    // counter of group gf + 8 i, row r0 + 2 lane + half: c + half * kg + 8 i
    // (Opaque: kept in registers, not recomputed for every group)
    const uint32_t c = Opaque(static_cast<uint32_t>((r0 + 2 * lane) * kg + gf));
    const uint32_t c_hi = Opaque(c + static_cast<uint32_t>(kg));
    uint32_t* vals = &sm.vals[2 * lane][warp];
    uint8_t* nib = &sm.nib[2 * lane][warp];
    // groups past the tokens (the last block column) run on LoadGroups' stand-in words, without
    // a branch: Phase2 stores none of their values and nibbles
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        PruneGroup(keys, (half ? c_hi : c) + 8 * i, x[i], half, &vals[half * (kMvGroups + 4) + 8 * i],
                   &nib[half * (kMvGroups + 4) + 8 * i]);
      }
    }
  }

  static __host__ __device__ inline void Phase2(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int64_t r0 = static_cast<int64_t>(by) * kMvRows;
    const int64_t g0 = static_cast<int64_t>(bx) * kMvGroups;
    const int64_t kg = a.k / 4;
    // a multiple of 16: k is a multiple of 64
    const int groups_here = static_cast<int>((kg - g0) < kMvGroups ? (kg - g0) : kMvGroups);
    // values: row tid / 4, groups 16 * (tid % 4) .. + 15, as four 16-byte stores
    {
      const int rl = tid >> 2, q = (tid & 3) * 16;
      if (q < groups_here) {
        uint4* dst = reinterpret_cast<uint4*>(reinterpret_cast<uint32_t*>(a.out) + (r0 + rl) * kg + g0 + q);
        const uint4* src = reinterpret_cast<const uint4*>(&sm.vals[rl][q]);
#pragma unroll
        for (int j = 0; j < 4; ++j) dst[j] = src[j];
      }
    }
    // metadata: 8 bytes per thread; byte j of chunk t holds group
    // 8 * (t / 32) + j / 2 + 4 * (j % 2) of rows r (low nibble) and r + 8
    // (high), r = 16 * ((t % 32) / 8) + t % 8
    {
      const int octet = tid >> 5;
      if (octet * 8 < groups_here) {
        const int r = 16 * ((tid & 31) >> 3) + (tid & 7);
        alignas(8) uint8_t bytes[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int g = 8 * octet + (j >> 1) + 4 * (j & 1);
          bytes[j] = static_cast<uint8_t>(sm.nib[r][g] | (sm.nib[r + 8][g] << 4));
        }
        const int64_t base = ValueBytes(a.m, a.k, 2) + (r0 / 64) * 8 * a.k + (g0 / 8) * 256;
        *reinterpret_cast<uint2*>(a.out + base + 8 * tid) = *reinterpret_cast<const uint2*>(bytes);
      }
    }
  }

  static bool Takes(int64_t m, int64_t k) { return m % 64 == 0 && k % 64 == 0; }

  static dim3 Grid(int64_t m, int64_t k) {
    return dim3(static_cast<unsigned>((k / 4 + kMvGroups - 1) / kMvGroups),
                static_cast<unsigned>(m / kMvRows));
  }

  static void Emulate(const Args& a) { EmulateTwoPhases<MvueTransposed>(a); }
};

template <int DT>
__global__ void __launch_bounds__(kThreads) MvueTransposedKernel(typename MvueTransposed<DT>::Args args) {
  using K = MvueTransposed<DT>;
  __shared__ typename K::Smem sm;
  K::Phase1(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
  __syncthreads();
  K::Phase2(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
}

template <int DT, int MODE, bool TRANS>
__global__ void __launch_bounds__(kThreads)
    Compress24Kernel(typename Compressor<DT, MODE, TRANS>::Args args) {
  using C = Compressor<DT, MODE, TRANS>;
  __shared__ typename C::Smem sm;
  C::Load(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
  __syncthreads();
  C::Select(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
  __syncthreads();
  C::Store(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
}

}  // namespace s24
