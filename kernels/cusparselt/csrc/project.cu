// The weight side in one pass (project.h): the float32 master weight W (N, K)
// read once, projected (mask, or beta * soft threshold), rounded to bf16 /
// fp16 and written as cuSPARSELt's compressed W_s, plus W_s^T compressed
// (mask) or the dense W_s (soft threshold). Byte for byte what
// Compressor (compress_kernels.cuh) writes for the projected W_s: the same
// per-group code (KeepTop2, CanonicalPair), the same layout (layout.cuh).
//
// A block owns a tile of 128 rows (N) x 64 columns (K) of W, 256 threads:
// Phase 0 (Init): the pair table (SelectPacked) into shared memory.
// Phase 1 (Rows): pass i (8 of them, 16 rows each) has warp w read rows
//   16i + 2w and +1, lane l the float4 (one group of 4 along K) l % 16 of the
//   row l / 16: 512 contiguous bytes of W (and 128 of the mask) per warp load,
//   all 8 passes' loads issued before any use. A float4 is exactly one W_s
//   group, so W_s's kept pair (4 bytes) goes straight to global memory from
//   registers (64 contiguous bytes per row), its nibble to shared memory; for
//   W_s^T the 16-bit W_s goes into a shared tile (XOR-swizzled 16-byte chunks);
//   S-STE writes its dense row (128 contiguous bytes per row).
// Phase 2 (Cols, W_s^T only): thread (p, j) reads columns 2p, 2p+1 of rows
//   16j .. 16j+15 as 16 32-bit words (conflict-free: see SwizzledChunk),
//   compresses the 8 groups along N and writes 16 bytes to each of the two
//   W_s^T rows; lanes 2q, 2q+1 write the two halves of one 32-byte sector.
// Phase 3 (Meta): the nibbles leave as 8-byte words (rows r and r + 8 of 8
//   groups, layout.cuh), one contiguous run per 64-row metadata block.
//
// Per element: reads 4 B of W (+ 1 B of mask), writes 1 B of values and
// 1/8 B of metadata per compressed matrix (+ 2 B of dense W_s for S-STE):
// 7.25 B (mask, with W_s^T) or 7.125 B (soft), where the two-pass path moves
// 13.25 B (XLA's projection + cast 7, each compression 3.125) or 9.125 B.

#include "project.h"

#include <memory>

#include "group.cuh"
#include "layout.cuh"

namespace s24 {

constexpr int kPjRows = 128;            // rows of W (N) per block
constexpr int kPjCols = 64;             // columns of W (K): one metadata row block of W_s^T
constexpr int kPjGroups = kPjCols / 4;  // W_s groups per tile row
constexpr int kPjThreads = 256;
constexpr int kPjPasses = kPjRows * kPjGroups / kPjThreads;  // float4 loads per thread
static_assert(kPjPasses == 8 && kPjRows % 16 == 0, "Rows' mapping: 16 rows per pass");
static_assert(kPjCols == 64, "a tile row is 8 chunks of 16 bytes (SwizzledChunk)");
static_assert(kPjRows * 4 == 512 && kPjThreads == 256, "Cols' and Meta's thread mappings");

// Where chunk c (8 elements, 16 bytes) of tile row n is stored in the row
// (rows are 128 bytes: all 32 banks). Phase 2's warp reads one 32-bit word
// per lane from rows n and n + 16 (lane parity), 16 consecutive words (4
// chunks) of each: flipping chunk bit 2 in every other 16-row band puts the two
// rows' words in the two halves of the banks. Phase 1's 8-byte stores write
// one whole row per half-warp: any permutation of its chunks is conflict-free.
// Rows and Cols write this out for their rows (16-row bands: i & 1, j & 1).
__host__ __device__ inline int SwizzledChunk(int n, int c) {
  return c ^ (((n >> 4) & 1) << 2);
}

// W and the mask are read exactly once: streaming loads (evict first).
template <typename T>
__host__ __device__ inline T LoadOnce(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldcs(p);
#else
  return *p;
#endif
}

// Two floats rounded to nearest even, packed (lo first): one F2FP instruction.
template <int DT>
__host__ __device__ inline uint32_t Pack2(float lo, float hi) {
  uint32_t u;
  if constexpr (DT == kBF16) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    memcpy(&u, &h, sizeof(u));
  } else {
    const __half2 h = __floats2half2_rn(lo, hi);
    memcpy(&u, &h, sizeof(u));
  }
  return u;
}

// One 8-byte metadata word from two rows' nibbles of 8 groups (one byte per
// nibble, groups g .. g+7 as lo0/lo1 and hi0/hi1): byte j holds group
// (j >> 1) + 4 * (j & 1), row r's nibble low and row r + 8's high (layout.cuh).
__host__ __device__ inline uint2 MetaWord(uint32_t lo0, uint32_t lo1, uint32_t hi0, uint32_t hi1) {
  // nibbles are < 16, so the shift never carries into the next byte
  const uint32_t c0 = lo0 | (hi0 << 4), c1 = lo1 | (hi1 << 4);
  return make_uint2(Prmt(c0, c1, 0x5140), Prmt(c0, c1, 0x7362));
}

// What Compressor::Select keeps of one group of 16-bit bits: the pair as a
// word (first kept value low) and the nibble in *code. KeepTop2 first, for
// groups with more than two non-zeros (a mask keeping three or four).
__host__ __device__ inline uint32_t SelectGroup(const uint32_t x[4], uint32_t* code) {
  uint32_t y[4];
  KeepTop2<0x7FFFu>(x, y);
  int i0, i1;
  CanonicalPair<0x7FFFu>(y, &i0, &i1);
  uint32_t v0 = 0, v1 = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (i == i0) v0 = y[i];
    if (i == i1) v1 = y[i];
  }
  *code = static_cast<uint32_t>(i0) | (static_cast<uint32_t>(i1) << 2);
  return v0 | (v1 << 16);
}

// The entry of the pair table for the non-zero mask m (a group with at most
// two non-zeros, where KeepTop2 keeps everything): CanonicalPair's positions
// as a prmt selector of the two kept 16-bit values (bits 0-15) and as the
// metadata nibble (bits 16-19).
__host__ __device__ inline uint32_t PairEntry(int m) {
  uint32_t y[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) y[i] = (m >> i) & 1u;
  int i0, i1;
  CanonicalPair<0x7FFFu>(y, &i0, &i1);
  const uint32_t sel = (2u * i0) | ((2u * i0 + 1) << 4) | ((2u * i1) << 8) | ((2u * i1 + 1) << 12);
  return sel | ((static_cast<uint32_t>(i0) | (static_cast<uint32_t>(i1) << 2)) << 16);
}

// SelectGroup of a group packed as two words, by the pair table (one shared
// load, one prmt): about 16 instructions where SelectGroup's selects and
// compares take ~50. TOP2: the group may hold more than two non-zeros (mask
// mode), which takes SelectGroup (rare: never with a 2:4 mask).
template <bool TOP2>
__host__ __device__ inline uint32_t SelectPacked(uint32_t w01, uint32_t w23, const uint32_t* table,
                                                 uint32_t* code) {
  const uint32_t m = NonzeroMask(w01, w23);
  if (TOP2 && Popc(m) > 2) {
    const uint32_t x[4] = {w01 & 0xFFFFu, w01 >> 16, w23 & 0xFFFFu, w23 >> 16};
    return SelectGroup(x, code);
  }
  const uint32_t e = table[m];
  *code = e >> 16;
  return Prmt(w01, w23, e);
}

template <int DT, int MODE, bool TRANS_TOO>
struct Projector {
  static_assert(DT == kBF16 || DT == kF16, "16-bit outputs only");
  static constexpr bool kSoft = MODE == kProjectSoft;
  static_assert(!(kSoft && TRANS_TOO), "the soft threshold's W_s^T is not 2:4");

  struct alignas(16) Smem {
    uint16_t tile[TRANS_TOO ? kPjRows : 1][kPjCols];  // W_s, chunks at SwizzledChunk
    // nibbles, one byte each, [row][group]. Row strides of 5 and 9 words keep
    // Meta's reads (rows 0-7, 16-23, ...: 32 rows per warp) at most 2-way
    // conflicted, and Cols' byte stores (columns 2p, groups 4j + i) free.
    uint8_t nib[kPjRows][20];                    // W_s: 16 groups along K
    uint8_t nib_t[TRANS_TOO ? kPjCols : 1][36];  // W_s^T: 32 groups along N
    uint32_t pairs[16];                          // PairEntry(m), m = 0 .. 15
  };

  struct Args {
    const float4* w;       // W, one float4 per group of 4 along K
    const uint32_t* mask;  // the mask's bytes, 4 per word (kProjectMask)
    const float* beta;     // one float32 (kProjectSoft)
    uint8_t* out;          // W_s compressed
    uint8_t* out_t;        // W_s^T compressed (TRANS_TOO)
    uint2* dense;          // W_s dense, 4 elements per uint2 (kProjectSoft)
    int64_t n, k;
  };

  // Rows of W in block row by: 128, or 64 in the last one (N a multiple of 64).
  static __host__ __device__ inline int RowsHere(const Args& a, int by) {
    const int64_t left = a.n - static_cast<int64_t>(by) * kPjRows;
    return left < kPjRows ? static_cast<int>(left) : kPjRows;
  }

  // Phase 0: the pair table.
  static __host__ __device__ inline void Init(Smem& sm, int tid) {
    if (tid < 16) sm.pairs[tid] = PairEntry(tid);
  }

  // where(mask, W, +0) rounded: the XLA projection and cast of one group, as
  // two words. A mask byte keeps when non-zero: f has 0x80 in those bytes,
  // and prmt's sign-replicating selectors widen each to a 16-bit lane.
  static __host__ __device__ inline void Mask(const float4& v, uint32_t mk, uint32_t* w01,
                                              uint32_t* w23) {
    const uint32_t f = (((mk & 0x7F7F7F7Fu) + 0x7F7F7F7Fu) | mk) & 0x80808080u;
    *w01 = Pack2<DT>(v.x, v.y) & Prmt(f, 0u, 0x9988u);
    *w23 = Pack2<DT>(v.z, v.w) & Prmt(f, 0u, 0xBBAAu);
  }

  // beta * soft_threshold_24 in float32, rounded (sparse24_jax/sste.py): t is
  // the 2nd smallest |a| by the same min/max network; copysign gives
  // sign(a) * max(|a| - t, 0) bit for bit, -0 included (sign(-0) * 0 = -0,
  // -1 * +0 = -0). At most two results are non-zero: only values strictly
  // above the 2nd smallest survive.
  static __host__ __device__ inline void Soft(const float4& v, float beta, uint32_t* w01,
                                              uint32_t* w23) {
    const float m0 = fabsf(v.x), m1 = fabsf(v.y), m2 = fabsf(v.z), m3 = fabsf(v.w);
    const float t = fminf(fmaxf(fminf(m0, m1), fminf(m2, m3)), fminf(fmaxf(m0, m1), fmaxf(m2, m3)));
    *w01 = Pack2<DT>(copysignf(fmaxf(m0 - t, 0.f), v.x) * beta,
                     copysignf(fmaxf(m1 - t, 0.f), v.y) * beta);
    *w23 = Pack2<DT>(copysignf(fmaxf(m2 - t, 0.f), v.z) * beta,
                     copysignf(fmaxf(m3 - t, 0.f), v.w) * beta);
  }

  // Phase 1: W in, W_s's values out, nibbles and the 16-bit tile to shared
  // memory. PASSES (8, or 4 in a 64-row last block) is a constant so that the
  // loads are unconditional and their addresses one base plus offsets.
  template <int PASSES>
  static __host__ __device__ inline void RowsOf(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int lane = tid & 31, warp = tid >> 5, g = lane & 15;
    const int r0 = 2 * warp + (lane >> 4);  // the row of pass 0; pass i: r0 + 16i
    const int64_t k4 = a.k / 4;             // float4s per row of W = W_s groups per row
    // the group's index in W, and in W_s's values as 32-bit words
    const int64_t q0 = (static_cast<int64_t>(by) * kPjRows + r0) * k4 +
                       static_cast<int64_t>(bx) * kPjGroups + g;
    const int64_t step = 16 * k4;
    float4 v[PASSES];
    uint32_t mk[PASSES];
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      v[i] = LoadOnce(a.w + q0 + i * step);
      if (!kSoft) mk[i] = LoadOnce(a.mask + q0 + i * step);
    }
    const float beta = kSoft ? *a.beta : 0.f;
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      const int r = r0 + 16 * i;
      const int64_t q = q0 + i * step;
      uint32_t w01, w23;
      if (kSoft) {
        Soft(v[i], beta, &w01, &w23);
        a.dense[q] = make_uint2(w01, w23);
      } else {
        Mask(v[i], mk[i], &w01, &w23);
      }
      if (TRANS_TOO) {
        // SwizzledChunk(r, g >> 1) with r = r0 + 16i, r0 < 16 (which the
        // compiler does not know): a constant per pass
        const int chunk = (g >> 1) ^ ((i & 1) << 2);
        *reinterpret_cast<uint2*>(&sm.tile[r][chunk * 8 + (g & 1) * 4]) = make_uint2(w01, w23);
      }
      uint32_t code;
      reinterpret_cast<uint32_t*>(a.out)[q] = SelectPacked<!kSoft>(w01, w23, sm.pairs, &code);
      sm.nib[r][g] = static_cast<uint8_t>(code);
    }
  }

  static __host__ __device__ inline void Rows(const Args& a, Smem& sm, int bx, int by, int tid) {
    if (RowsHere(a, by) == kPjRows) {
      RowsOf<kPjPasses>(a, sm, bx, by, tid);
    } else {
      RowsOf<kPjPasses / 2>(a, sm, bx, by, tid);
    }
  }

  // Phase 2: W_s^T (K x N, 2:4 along N) from the tile: values and nibbles.
  static __host__ __device__ inline void Cols(const Args& a, Smem& sm, int bx, int by, int tid) {
    if (!TRANS_TOO) return;
    const int lane = tid & 31, warp = tid >> 5;
    const int p = 16 * (warp & 1) + (lane >> 1);  // tile columns 2p and 2p + 1
    const int j = 2 * (warp >> 1) + (lane & 1);   // tile rows 16j .. 16j + 15
    if (16 * j >= RowsHere(a, by)) return;        // warp-uniform: whole warps idle
    uint32_t x[16];  // row 16j + t: column 2p low, 2p + 1 high
    // SwizzledChunk(16j + t, p >> 2) is the same for t < 16: one address,
    // immediate offsets
    const uint32_t* col = reinterpret_cast<const uint32_t*>(
        &sm.tile[16 * j][SwizzledChunk(16 * j, p >> 2) * 8 + (p & 3) * 2]);
#pragma unroll
    for (int t = 0; t < 16; ++t) x[t] = col[t * (kPjCols / 2)];
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t* y = x + 4 * i;
      uint32_t cl, ch;
      // the group of column 2p (low halves) and of 2p + 1 (high halves)
      lo[i] = SelectPacked<true>(Prmt(y[0], y[1], 0x5410u), Prmt(y[2], y[3], 0x5410u), sm.pairs, &cl);
      hi[i] = SelectPacked<true>(Prmt(y[0], y[1], 0x7632u), Prmt(y[2], y[3], 0x7632u), sm.pairs, &ch);
      sm.nib_t[2 * p][4 * j + i] = static_cast<uint8_t>(cl);
      sm.nib_t[2 * p + 1][4 * j + i] = static_cast<uint8_t>(ch);
    }
    // W_s^T's row c holds N / 2 values of 2 bytes: it starts at byte c * N;
    // groups 4j .. 4j + 3 of the tile are 16 bytes at n0 + 16j
    const int64_t c = static_cast<int64_t>(bx) * kPjCols + 2 * p;
    uint8_t* dst = a.out_t + c * a.n + static_cast<int64_t>(by) * kPjRows + 16 * j;
    *reinterpret_cast<uint4*>(dst) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
    *reinterpret_cast<uint4*>(dst + a.n) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
  }

  // Phase 3: the metadata. Threads 0-127: W_s's, 512 bytes per 64-row block
  // (16 groups); threads 128-255: W_s^T's, one run of 32 bytes per group
  // along N (64 rows = the tile's columns). Word u of a run: 8 groups from
  // 8 * (u / 32), rows r = 16 * ((u % 32) / 8) + u % 8 and r + 8.
  static __host__ __device__ inline void Meta(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int rows_here = RowsHere(a, by);
    const int64_t n0 = static_cast<int64_t>(by) * kPjRows, k0 = static_cast<int64_t>(bx) * kPjCols;
    if (tid < 128) {
      const int mb = tid >> 6, u = tid & 63;
      if (64 * mb >= rows_here) return;
      const int r = 64 * mb + 16 * ((u & 31) >> 3) + (u & 7), g = 8 * (u >> 5);
      const uint32_t* lo = reinterpret_cast<const uint32_t*>(&sm.nib[r][g]);
      const uint32_t* hi = reinterpret_cast<const uint32_t*>(&sm.nib[r + 8][g]);
      const int64_t base = ValueBytes(a.n, a.k, 2) + (n0 / 64 + mb) * 8 * a.k + (k0 / 32) * 256;
      *reinterpret_cast<uint2*>(a.out + base + 8 * u) = MetaWord(lo[0], lo[1], hi[0], hi[1]);
    } else if (TRANS_TOO) {
      const int u = tid - 128;
      if (u >= rows_here) return;  // rows_here / 4 groups along N, 4 words each
      const int r = 16 * ((u & 31) >> 3) + (u & 7), g = 8 * (u >> 5);
      const uint32_t* lo = reinterpret_cast<const uint32_t*>(&sm.nib_t[r][g]);
      const uint32_t* hi = reinterpret_cast<const uint32_t*>(&sm.nib_t[r + 8][g]);
      const int64_t base = ValueBytes(a.k, a.n, 2) + (k0 / 64) * 8 * a.n + (n0 / 32) * 256;
      *reinterpret_cast<uint2*>(a.out_t + base + 8 * u) = MetaWord(lo[0], lo[1], hi[0], hi[1]);
    }
  }

  static dim3 Grid(int64_t n, int64_t k) {
    return dim3(static_cast<unsigned>(k / kPjCols),
                static_cast<unsigned>((n + kPjRows - 1) / kPjRows));
  }

  // The same work as the kernel, block by block and thread by thread.
  static void Emulate(const Args& a) {
    const dim3 grid = Grid(a.n, a.k);
    std::unique_ptr<Smem> sm(new Smem());
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        for (int t = 0; t < kPjThreads; ++t) Init(*sm, t);
        for (int t = 0; t < kPjThreads; ++t) Rows(a, *sm, bx, by, t);
        for (int t = 0; t < kPjThreads; ++t) Cols(a, *sm, bx, by, t);
        for (int t = 0; t < kPjThreads; ++t) Meta(a, *sm, bx, by, t);
      }
    }
  }
};

// At least 4 blocks per SM (<= 64 registers; ptxas: 53-57, no spills): each
// block has 8 x 20 bytes per thread in flight at its start, 160 KB per SM at 4
// blocks, and the blocks' compute phases overlap each other's loads.
template <int DT, int MODE, bool TRANS_TOO>
__global__ void __launch_bounds__(kPjThreads, 4)
    ProjectKernel(typename Projector<DT, MODE, TRANS_TOO>::Args args) {
  using P = Projector<DT, MODE, TRANS_TOO>;
  __shared__ typename P::Smem sm;
  P::Init(sm, threadIdx.x);
  __syncthreads();
  P::Rows(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
  __syncthreads();
  if constexpr (TRANS_TOO) {
    P::Cols(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
    __syncthreads();
  }
  P::Meta(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
}

template <int DT, int MODE, bool TRANS_TOO>
static cudaError_t RunProject(cudaStream_t stream, bool emulate, const float* w,
                              const uint8_t* mask, const float* beta, uint8_t* out,
                              uint8_t* out_t, void* dense, int64_t n, int64_t k) {
  using P = Projector<DT, MODE, TRANS_TOO>;
  const typename P::Args args{reinterpret_cast<const float4*>(w),
                              reinterpret_cast<const uint32_t*>(mask), beta, out, out_t,
                              static_cast<uint2*>(dense), n, k};
  if (emulate) {
    P::Emulate(args);
    return cudaSuccess;
  }
  ProjectKernel<DT, MODE, TRANS_TOO><<<P::Grid(n, k), kPjThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

template <int DT>
static cudaError_t RunProjectMode(int mode, cudaStream_t stream, bool emulate, const float* w,
                                  const uint8_t* mask, const float* beta, uint8_t* out,
                                  uint8_t* out_t, void* dense, int64_t n, int64_t k) {
  if (mode == kProjectSoft) {
    return RunProject<DT, kProjectSoft, false>(stream, emulate, w, mask, beta, out, out_t, dense, n, k);
  }
  if (out_t != nullptr) {
    return RunProject<DT, kProjectMask, true>(stream, emulate, w, mask, beta, out, out_t, dense, n, k);
  }
  return RunProject<DT, kProjectMask, false>(stream, emulate, w, mask, beta, out, out_t, dense, n, k);
}

cudaError_t LaunchProject(int mode, cudaStream_t stream, int dt, const float* w,
                          const uint8_t* mask, const float* beta, uint8_t* out, uint8_t* out_t,
                          void* dense, int64_t n, int64_t k, bool emulate) {
  // the handler and s24_emulate_project check all of this first, with messages
  if (n % kProjectAlign != 0 || k % kProjectAlign != 0 || n > kProjectMaxRows ||
      (mode != kProjectMask && mode != kProjectSoft) || (mode == kProjectSoft && out_t)) {
    return cudaErrorInvalidValue;
  }
  if (n == 0 || k == 0) return cudaSuccess;
  switch (dt) {
    case kBF16:
      return RunProjectMode<kBF16>(mode, stream, emulate, w, mask, beta, out, out_t, dense, n, k);
    case kF16:
      return RunProjectMode<kF16>(mode, stream, emulate, w, mask, beta, out, out_t, dense, n, k);
    default:
      return cudaErrorInvalidValue;  // fp8 stays on the two-pass path
  }
}

}  // namespace s24
