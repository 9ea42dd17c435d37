// The FFN's activation backward fused with the MVUE pruning of its result
// (host + device code; act_grad.h is the interface, act_grad.cu the launch).
//
// Unfused, the backward of the first linear reads dA and Z1 and writes dZ1
// (XLA), then MvueTransposed reads dZ1 again to write S_z(dZ1^T): 9.125 bytes
// of traffic per element of dZ1. These kernels read dA and Z1 once and write
// dZ1 and S_z(dZ1^T) compressed in the same pass: 7.125 bytes per element
// (gelu), 6.125 (swiglu, whose dA is half as wide as dZ).
//
// They are MvueTransposed (compress_kernels.cuh) with computed words: the same
// tile (64 rows of A = dZ^T, i.e. 64 features, x 64 groups = 256 tokens), the
// same thread mapping (lane l of warp w owns the feature pair 2l, 2l + 1 of
// the tile, one 32-bit word of every token row: a warp reads and writes 128
// contiguous bytes per token; groups w, w + 8, ..., w + 56), the same
// per-group MVUE (MvueTransposed::PruneGroup: hash counter = the group's
// index in A) and the same store phase (MvueTransposed::Phase2). So the
// compressed buffer is, byte for byte, mvue_compress(dZ, transpose=True) of
// the dZ the kernel writes. Each dZ word is stored (coalesced, like the
// loads) before it is pruned.

#pragma once

#include <cmath>
#include <cstdint>
#include <memory>

#include "act_grad.h"
#include "compress_kernels.cuh"
#include "group.cuh"
#include "layout.cuh"

namespace s24 {

// ---------------------------------------------------------------------------
// The activations' derivatives, in float32 (host + device)
// ---------------------------------------------------------------------------
//
// The formulas and the order of operations of the pure-JAX twin
// (sparse24_jax.ffn.activation_vjp). The elementary functions are cheaper
// approximations of about XLA's accuracy (the kernels are instruction-bound,
// see README): their last-bit differences from XLA's make a 16-bit result
// differ from the twin by one ulp on rare elements, and by up to ~4e-7 |dA|
// in absolute terms where the twin's own float32 cancellation dominates (the
// GELU tail, 1 + erf(z / sqrt 2) for z < -4).

// 2^x: one MUFU.EX2 on the GPU (subnormal results flush to zero: e^(-z^2/2)
// for |z| > 13, where Phi(z) is 0 or 1 anyway), exp2f on the host.
__host__ __device__ inline float Ex2(float x) {
#ifdef __CUDA_ARCH__
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return exp2f(x);
#endif
}

constexpr float kLog2e = 1.4426950408889634f;

// erf(x) as the rational function of Eigen (XLA's erf until it moved to
// its own): x P(x^2) / Q(x^2) on [-4, 4], +-1 outside; absolute error below
// 4.5e-7 in float32 (XLA's is 3e-7, CUDA's erff 1e-7 for ~15 more
// instructions: its two polynomials, selected, and an exp).
__host__ __device__ inline float ErfRational(float x) {
  x = fminf(fmaxf(x, -4.f), 4.f);
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = fmaf(p, x2, 2.77068142495902e-08f);
  p = fmaf(p, x2, -2.10102402082508e-06f);
  p = fmaf(p, x2, -5.69250639462346e-05f);
  p = fmaf(p, x2, -7.34990630326855e-04f);
  p = fmaf(p, x2, -2.95459980854025e-03f);
  p = fmaf(p, x2, -1.60960333262415e-02f);
  float q = -1.45660718464996e-05f;
  q = fmaf(q, x2, -2.13374055278905e-04f);
  q = fmaf(q, x2, -1.68282697438203e-03f);
  q = fmaf(q, x2, -7.37332916720468e-03f);
  q = fmaf(q, x2, -1.42647390514189e-02f);
  return x * p * Rcp(q);
}

// d/dz of z * Phi(z) = Phi(z) + z * phi(z). The constants are the twin's
// float32 ones: 1 / sqrt(2 pi) and 1 / sqrt(2).
__host__ __device__ inline float GeluGrad(float z) {
  const float pdf = Ex2(z * z * (-0.5f * kLog2e)) * 0.3989422917366028f;
  const float cdf = 0.5f * (1.f + ErfRational(z * 0.7071067690849304f));
  return cdf + z * pdf;
}

// d(x * silu(g)) applied to da, in the order of JAX's autodiff of
// x * (g * sigmoid(g)): dx = da * silu(g), dg = c * s + (g * c) * (s * (1 - s))
// with c = da * x, s = 1 / (1 + e^-g) (g < -88: e^-g = inf, s = 0, as XLA).
__host__ __device__ inline void SwigluGrad(float da, float x, float g, float* dx, float* dg) {
  const float s = Rcp(1.f + Ex2(g * -kLog2e));
  const float c = da * x;
  *dx = da * (g * s);
  *dg = c * s + (g * c) * (s * (1.f - s));
}

// Two 16-bit elements of a word as floats, and back (round to nearest even).
template <int DT>
__host__ __device__ inline float Lo(uint32_t w) {
  return DTraits<DT>::ToFloat(w & 0xFFFFu);
}
template <int DT>
__host__ __device__ inline float Hi(uint32_t w) {
  return DTraits<DT>::ToFloat(w >> 16);
}
// On the GPU one F2FP.PACK_AB instead of two conversions and a merge; the
// same rounding (to nearest even) as DTraits::FromFloat.
template <int DT>
__host__ __device__ inline uint32_t Pack(float lo, float hi) {
#ifdef __CUDA_ARCH__
  if (DT == kBF16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
#else
  return DTraits<DT>::FromFloat(lo) | (DTraits<DT>::FromFloat(hi) << 16);
#endif
}

// A pointer the compiler must keep in a register: without this it folds the
// block's base into every address (64-bit adds and a reload of the kernel
// parameter per load) instead of one IMAD.WIDE.U32 of a 32-bit offset.
template <typename T>
__host__ __device__ inline T* InRegister(T* p) {
#ifdef __CUDA_ARCH__
  asm("" : "+l"(p));
#endif
  return p;
}

// ---------------------------------------------------------------------------
// GELU: z, dA (M, H) -> dZ (M, H), A = dZ^T (H x M)
// ---------------------------------------------------------------------------

template <int DT>
struct GeluGradMvue {
  using Mv = MvueTransposed<DT>;
  using Smem = typename Mv::Smem;
  // Groups per lane loaded before use. All 8 at once (64 words in flight)
  // took 128 registers (2 blocks, 16 warps per SM); batches of 2 take 62
  // (4 blocks, 32 warps per SM: as many bytes in flight) and even slightly
  // fewer instructions (sm_90: 4311 against 4421 on the common path).
  static constexpr int kBatch = 2;

  struct Args {
    const uint32_t* __restrict__ da;  // dA (k tokens x m features) as words
    const uint32_t* __restrict__ z;   // Z1, the same shape
    uint32_t* __restrict__ dz;        // dZ1, the same shape (written)
    const uint32_t* seed;
    uint8_t* out;    // S_z(dZ1^T) compressed
    int64_t m, k;    // A = dZ1^T: m features x k tokens
  };

  // Phase 1: lane l of warp w loads the words of dA and Z at its feature pair
  // for the 4 tokens of each of its 8 groups (kBatch groups at a time),
  // computes the dZ words, stores them, and prunes the group's two rows of A.
  static __host__ __device__ inline void Phase1(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int lane = tid & 31, warp = tid >> 5;
    const int64_t r0 = static_cast<int64_t>(by) * kMvRows;
    const int64_t g0 = static_cast<int64_t>(bx) * kMvGroups;
    const int64_t kg = a.k / 4, words = a.m / 2;
    // 64-bit pointers to the block's first word, 32-bit offsets inside it
    // (< 256 tokens x words < 2^31: the handler bounds the features), so that
    // an address is one IMAD.WIDE instead of a 64-bit multiply and add
    const int64_t base = 4 * g0 * words + r0 / 2;
    const uint32_t* __restrict__ da = InRegister(a.da + base);
    const uint32_t* __restrict__ zp = InRegister(a.z + base);
    uint32_t* __restrict__ dz = InRegister(a.dz + base);
    const uint32_t w32 = static_cast<uint32_t>(words);
    const MvueKeys keys = MakeMvueKeys(a.seed);
#pragma unroll
    for (int b = 0; b < 8; b += kBatch) {
      uint32_t d[kBatch][4], z[kBatch][4];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int gl = warp + 8 * (b + i);
        const bool in = g0 + gl < kg;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          const uint32_t off = (4u * gl + t) * w32 + lane;
          d[i][t] = in ? da[off] : 0u;
          z[i][t] = in ? zp[off] : 0u;
        }
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int gl = warp + 8 * (b + i);
        const int64_t g = g0 + gl;
        if (g >= kg) continue;
        uint32_t x[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          const uint32_t zw = z[i][t], dw = d[i][t];
          x[t] = Pack<DT>(Lo<DT>(dw) * GeluGrad(Lo<DT>(zw)), Hi<DT>(dw) * GeluGrad(Hi<DT>(zw)));
          dz[(4u * gl + t) * w32 + lane] = x[t];
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int rl = 2 * lane + half;
          Mv::PruneGroup(keys, static_cast<uint32_t>((r0 + rl) * kg + g), x, half,
                         &sm.vals[rl][gl], &sm.nib[rl][gl]);
        }
      }
    }
  }

  // Phase 2: MvueTransposed's stores of the tile (values, metadata).
  static __host__ __device__ inline void Phase2(const Args& a, Smem& sm, int bx, int by, int tid) {
    Mv::Phase2(typename Mv::Args{nullptr, a.seed, a.out, a.m, a.k}, sm, bx, by, tid);
  }

  static dim3 Grid(int64_t m, int64_t k) { return Mv::Grid(m, k); }

  static void Emulate(const Args& a) { EmulateTwoPhases<GeluGradMvue>(a); }
};

// ---------------------------------------------------------------------------
// SwiGLU: h = [x | gate] (M, 2F), dA (M, F) -> dh (M, 2F), A = dh^T (2F x M)
// ---------------------------------------------------------------------------
//
// A word of dh's x half needs the gate word of the same features and the
// other way round, so a block owns 64 features f0 .. f0 + 63 of both halves:
// rows f0.. and F + f0.. of A, two 64-row metadata tiles (two Smem, one
// Phase2 each). Lane l owns the feature pair f0 + 2l, f0 + 2l + 1: per token
// it loads a word of x, of gate and of dA and stores a word of each half of
// dh. Three loads per token make 96 words for 8 groups: loaded all at once
// they took 182 registers; in batches of 2 groups (24 words in flight) 61,
// 4 blocks per SM (shared memory: 4 x 43.5 KB).

// One lane's share of a group of 4 tokens in SwiGLU's backward, for SwigluGradMvue and its
// CUTLASS-format twin (kernels/cutlass/csrc/own_act_grad.cuh). The pointers are the block's
// first word of dA, of h's and dh's x halves (hx, dhx) and of their gate halves (hg, dhg; the
// lane adds its own word): dA rows are fw words, h's and dh's 2 fw. SwigluLoadGroup loads the
// words of dA, x and gate at tokens 4 gl + t (zeros for a group past the tokens, !in);
// SwigluGradGroup turns x and gt into dh's words in place (dx, dgate) and stores them when
// `store`.
struct SwigluPtrs {
  const uint32_t* __restrict__ da;
  const uint32_t* __restrict__ hx;
  const uint32_t* __restrict__ hg;
  uint32_t* __restrict__ dhx;
  uint32_t* __restrict__ dhg;
  uint32_t fw;
};

__host__ __device__ inline void SwigluLoadGroup(const SwigluPtrs& p, int lane, int gl, bool in, uint32_t (&d)[4],
                                                uint32_t (&x)[4], uint32_t (&gt)[4]) {
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const uint32_t tok = 4u * gl + t;
    d[t] = in ? p.da[tok * p.fw + lane] : 0u;
    x[t] = in ? p.hx[2 * tok * p.fw + lane] : 0u;
    gt[t] = in ? p.hg[2 * tok * p.fw + lane] : 0u;
  }
}

template <int DT>
__host__ __device__ inline void SwigluGradGroup(const SwigluPtrs& p, int lane, int gl, bool store,
                                                const uint32_t (&d)[4], uint32_t (&x)[4], uint32_t (&gt)[4]) {
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    float dx0, dg0, dx1, dg1;
    SwigluGrad(Lo<DT>(d[t]), Lo<DT>(x[t]), Lo<DT>(gt[t]), &dx0, &dg0);
    SwigluGrad(Hi<DT>(d[t]), Hi<DT>(x[t]), Hi<DT>(gt[t]), &dx1, &dg1);
    x[t] = Pack<DT>(dx0, dx1);   // now the words of dh's x half
    gt[t] = Pack<DT>(dg0, dg1);  // and of its gate half
    if (store) {
      const uint32_t off = 2 * (4u * gl + t) * p.fw + lane;
      p.dhx[off] = x[t];
      p.dhg[off] = gt[t];
    }
  }
}

template <int DT>
struct SwigluGradMvue {
  using Mv = MvueTransposed<DT>;
  static constexpr int kBatch = 2;  // groups per lane loaded before use

  struct alignas(16) Smem {
    typename Mv::Smem x, gate;  // rows f0.. and F + f0.. of A
  };

  struct Args {
    const uint32_t* __restrict__ da;  // dA (k tokens x F) as words
    const uint32_t* __restrict__ h;   // [x | gate] (k tokens x 2F)
    uint32_t* __restrict__ dh;        // [dx | dgate] (k tokens x 2F) (written)
    const uint32_t* seed;
    uint8_t* out;    // S_z(dh^T) compressed
    int64_t m, k;    // A = dh^T: m = 2F rows x k tokens
  };

  static __host__ __device__ inline void Phase1(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int lane = tid & 31, warp = tid >> 5;
    const int64_t f0 = static_cast<int64_t>(by) * kMvRows;  // first feature of the block
    const int64_t g0 = static_cast<int64_t>(bx) * kMvGroups;
    const int64_t kg = a.k / 4, fw = a.m / 4;  // fw: words per row of dA (F / 2)
    // 64-bit pointers to the block's first words, 32-bit offsets inside it
    // (as GeluGradMvue): dA rows are fw words, h and dh rows 2 fw
    const int64_t tok0 = 4 * g0;
    const uint32_t* __restrict__ hx = InRegister(a.h + tok0 * 2 * fw + f0 / 2);
    uint32_t* __restrict__ dhx = InRegister(a.dh + tok0 * 2 * fw + f0 / 2);
    const SwigluPtrs ptr{InRegister(a.da + tok0 * fw + f0 / 2), hx, InRegister(hx + fw), dhx,
                         InRegister(dhx + fw), static_cast<uint32_t>(fw)};
    const MvueKeys keys = MakeMvueKeys(a.seed);
#pragma unroll
    for (int b = 0; b < 8; b += kBatch) {
      uint32_t d[kBatch][4], x[kBatch][4], gt[kBatch][4];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int gl = warp + 8 * (b + i);
        SwigluLoadGroup(ptr, lane, gl, g0 + gl < kg, d[i], x[i], gt[i]);
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int gl = warp + 8 * (b + i);
        const int64_t g = g0 + gl;
        if (g >= kg) continue;
        SwigluGradGroup<DT>(ptr, lane, gl, true, d[i], x[i], gt[i]);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int rl = 2 * lane + half;
          Mv::PruneGroup(keys, static_cast<uint32_t>((f0 + rl) * kg + g), x[i], half,
                         &sm.x.vals[rl][gl], &sm.x.nib[rl][gl]);
          Mv::PruneGroup(keys, static_cast<uint32_t>((2 * fw + f0 + rl) * kg + g), gt[i], half,
                         &sm.gate.vals[rl][gl], &sm.gate.nib[rl][gl]);
        }
      }
    }
  }

  // Phase 2: the two tiles, rows f0.. (metadata row tile by) and F + f0..
  static __host__ __device__ inline void Phase2(const Args& a, Smem& sm, int bx, int by, int tid) {
    const typename Mv::Args mv{nullptr, a.seed, a.out, a.m, a.k};
    Mv::Phase2(mv, sm.x, bx, by, tid);
    Mv::Phase2(mv, sm.gate, bx, by + static_cast<int>(a.m / 2 / kMvRows), tid);
  }

  // y: the 64-feature tiles of one half
  static dim3 Grid(int64_t m, int64_t k) { return Mv::Grid(m / 2, k); }

  static void Emulate(const Args& a) { EmulateTwoPhases<SwigluGradMvue>(a); }
};

// 4 blocks per SM (at most 64 registers: 32 warps per SM, to hide the load
// batches' latency behind other warps' arithmetic; no spills at that bound)
template <typename K>
__global__ void __launch_bounds__(kThreads, 4) ActGradMvueKernel(typename K::Args args) {
  __shared__ typename K::Smem sm;
  K::Phase1(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
  __syncthreads();
  K::Phase2(args, sm, blockIdx.x, blockIdx.y, threadIdx.x);
}

}  // namespace s24
