// sparse24-jax: 2:4 sparse tensor-core GEMMs for JAX through XLA FFI + cuSPARSELt.
//
// A plain shared library (no Python ABI): Python loads it with ctypes and
// registers the handler symbols below with jax.ffi.register_ffi_target(...,
// platform="CUDA"). Built by `python -m sparse24_jax_kernels.cusparselt.build`.
//
// Contents
//   * s24_spmm            D = A_sparse @ op(B): cuSPARSELt matmul, A given in
//                         cuSPARSELt's compressed 2:4 format (a uint8 buffer; its
//                         element type comes in the a_dtype attribute, B's from
//                         its buffer, so fp8 A and B may differ). Plan cache keyed
//                         by (device, m, n, k, A/B/D dtypes, layouts); algorithm
//                         search once per key, never under CUDA-graph capture.
//   * s24_compress        our fused kernel writing cuSPARSELt's compressed format
//                         of a 2:4 matrix A (or of the transpose of the input).
//   * s24_compress_masked the same with a mask applied first (prune + compress).
//   * s24_mvue_compress   MVUE 2:4 (unbiased random pruning) + compress, with a
//                         counter-based RNG seeded from a uint32[2] operand.
//   * s24_lib_compress    cuSPARSELt's own cusparseLtSpMMACompress2, for tests.
//
// The compressed layout (SPEC.md, measured on cuSPARSELt 0.8.0, sm90) for A
// (m x k, row-major, 2:4 along k), es = bytes per element, g = col / 4:
//   bytes = m*k/2*es (values, row-major (m, k/2), kept pair in column order)
//         + Mr*Kc/8  (metadata: one nibble idx0 | idx1 << 2 per group)
//   Mr = ceil(m/64)*64, Kc = k (16-bit) or ceil(k/64)*64 (fp8); padding = 0xE.
//   fp8 is e4m3 or e5m2: the layout depends on the element size only (the
//   e5m2 identity with the library's compression is checked on the GPU,
//   tests/gpu/test_cusparselt.py).
//   nibble q in byte q/2, high nibble when q is odd, with
//   16-bit: q = (r/64)*16*Kc + (g/8)*512 + ((r%64)/16)*128 + (r%8)*16
//              + (r%16)/8 + (g%4)*4 + ((g%8)/4)*2
//   fp8:    q = (r/64)*16*Kc + (g/16)*1024 + ((r%64)/16)*256 + (r%8)*32
//              + ((r%16)/8)*2 + ((g%8)/2)*8 + ((g%16)/8)*4 + g%2
// sparse24_jax_kernels/cusparselt/layout.py is the numpy reference of it.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <cusparseLt.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace s24 {

// ---------------------------------------------------------------------------
// Error helpers
// ---------------------------------------------------------------------------

static std::string LtStatusText(cusparseStatus_t s) {
  const char* name = cusparseLtGetErrorName(s);
  const char* text = cusparseLtGetErrorString(s);
  std::string out = name ? name : "CUSPARSE_STATUS_?";
  out += " (";
  out += std::to_string(static_cast<int>(s));
  out += "): ";
  out += text ? text : "unknown cuSPARSELt error";
  return out;
}

static ffi::Error LtError(const char* what, cusparseStatus_t s) {
  return ffi::Error::Internal(std::string("sparse24 cuSPARSELt: ") + what +
                              " failed: " + LtStatusText(s));
}

static ffi::Error CudaError(const char* what, cudaError_t e) {
  return ffi::Error::Internal(std::string("sparse24 cuSPARSELt: ") + what +
                              " failed: " + cudaGetErrorName(e) + ": " +
                              cudaGetErrorString(e));
}

static ffi::Error InvalidArg(const std::string& msg) {
  return ffi::Error::InvalidArgument("sparse24 cuSPARSELt: " + msg);
}

#define S24_LT_CHECK(expr)                                  \
  do {                                                      \
    cusparseStatus_t s24_status_ = (expr);                  \
    if (s24_status_ != CUSPARSE_STATUS_SUCCESS) {           \
      return ::s24::LtError(#expr, s24_status_);            \
    }                                                       \
  } while (0)

#define S24_CUDA_CHECK(expr)                                \
  do {                                                      \
    cudaError_t s24_err_ = (expr);                          \
    if (s24_err_ != cudaSuccess) {                          \
      return ::s24::CudaError(#expr, s24_err_);             \
    }                                                       \
  } while (0)

#define S24_RETURN_IF_ERROR(expr)                           \
  do {                                                      \
    ffi::Error s24_e_ = (expr);                             \
    if (!s24_e_.success()) return s24_e_;                   \
  } while (0)

// Makes `device` the current CUDA device for the scope (XLA calls handlers on
// threads whose current device is normally right already: then it does
// nothing) and restores the previous one afterwards.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    int current = -1;
    status_ = cudaGetDevice(&current);
    if (status_ != cudaSuccess) return;
    if (current != device) {
      status_ = cudaSetDevice(device);
      if (status_ == cudaSuccess) previous_ = current;
    }
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

// ---------------------------------------------------------------------------
// Compressed layout (host + device)
// ---------------------------------------------------------------------------

__host__ __device__ inline int64_t RoundUp(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

// Columns covered by the metadata: k (16-bit) or k rounded up to 64 (fp8).
__host__ __device__ inline int64_t MetaCols(int64_t k, int es) {
  return es == 1 ? RoundUp(k, 64) : k;
}

__host__ __device__ inline int64_t ValueBytes(int64_t m, int64_t k, int es) {
  return m * (k / 2) * es;
}

__host__ __device__ inline int64_t CompressedBytes(int64_t m, int64_t k, int es) {
  return ValueBytes(m, k, es) + RoundUp(m, 64) * MetaCols(k, es) / 8;
}

// Dtype codes of the compression kernels, and of the sparse operand of
// s24_spmm (its `a_dtype` attribute: the compressed buffer itself is uint8).
// ops.py's _DT_CODES mirrors them.
enum : int { kBF16 = 0, kF16 = 1, kE4M3 = 2, kE5M2 = 3, kNumDtypes = 4 };

template <int DT>
struct DTraits;
template <>
struct DTraits<kBF16> {
  using Bits = uint16_t;
  static constexpr uint32_t kMag = 0x7FFFu;
  static __host__ __device__ inline float ToFloat(uint32_t b) {
    const uint32_t u = b << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
  }
  static __host__ __device__ inline uint32_t FromFloat(float f) {
    const __nv_bfloat16_raw r = __float2bfloat16_rn(f);
    return r.x;
  }
};
template <>
struct DTraits<kF16> {
  using Bits = uint16_t;
  static constexpr uint32_t kMag = 0x7FFFu;
  static __host__ __device__ inline float ToFloat(uint32_t b) {
    __half_raw r;
    r.x = static_cast<unsigned short>(b);
    return __half2float(__half(r));
  }
  static __host__ __device__ inline uint32_t FromFloat(float f) {
    const __half_raw r = __float2half_rn(f);
    return r.x;
  }
};
// The 1-byte types, e4m3 and e5m2 (the FP8 recipe's gradient type): both are
// sign-magnitude, so the same kMag ordering picks the two largest magnitudes;
// conversions saturate (+-448, +-57344) instead of producing inf or NaN.
template <__nv_fp8_interpretation_t KIND>
struct Fp8Traits {
  using Bits = uint8_t;
  static constexpr uint32_t kMag = 0x7Fu;
  static __host__ __device__ inline float ToFloat(uint32_t b) {
    const __half_raw hr = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), KIND);
    return __half2float(__half(hr));
  }
  static __host__ __device__ inline uint32_t FromFloat(float f) {
    return static_cast<uint32_t>(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, KIND));
  }
};
template <>
struct DTraits<kE4M3> : Fp8Traits<__NV_E4M3> {};
template <>
struct DTraits<kE5M2> : Fp8Traits<__NV_E5M2> {};

// Nibble index inside one (64 rows x 32 groups) tile, relative to the tile's
// first nibble; r, g are tile-local (the tile starts at a row that is a
// multiple of 64 and a group that is a multiple of 32).
template <int ES>
__host__ __device__ inline int LocalNibble(int r, int g) {
  if (ES == 2) {
    return (g >> 3) * 512 + ((r & 63) >> 4) * 128 + (r & 7) * 16 + ((r & 15) >> 3) +
           (g & 3) * 4 + ((g & 7) >> 2) * 2;
  } else {
    return (g >> 4) * 1024 + ((r & 63) >> 4) * 256 + (r & 7) * 32 + ((r & 15) >> 3) * 2 +
           ((g & 7) >> 1) * 8 + ((g & 15) >> 3) * 4 + (g & 1);
  }
}

// ---------------------------------------------------------------------------
// Per-group selection
// ---------------------------------------------------------------------------

// Keeps x as it is when it has at most two non-zeros (+0 and -0 are zero);
// otherwise (invalid 2:4 input) keeps the two largest magnitudes, ties to the
// lower index, and sets the others to +0.
template <uint32_t kMag>
__host__ __device__ inline void KeepTop2(const uint32_t x[4], uint32_t y[4]) {
  int nnz = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) nnz += (x[i] & kMag) != 0u;
  if (nnz <= 2) {
#pragma unroll
    for (int i = 0; i < 4; ++i) y[i] = x[i];
    return;
  }
  int a = 0;
#pragma unroll
  for (int i = 1; i < 4; ++i)
    if ((x[i] & kMag) > (x[a] & kMag)) a = i;
  int b = -1;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (i != a && (b < 0 || (x[i] & kMag) > (x[b] & kMag))) b = i;
#pragma unroll
  for (int i = 0; i < 4; ++i) y[i] = (i == a || i == b) ? x[i] : 0u;
}

// cuSPARSELt's choice of the two stored positions of a group with at most two
// non-zeros: idx0 = first non-zero among 0..2 (else 2), idx1 = next non-zero
// after idx0 (else 3).
template <uint32_t kMag>
__host__ __device__ inline void CanonicalPair(const uint32_t y[4], int* i0, int* i1) {
  int a = 2;
#pragma unroll
  for (int i = 2; i >= 0; --i)
    if (y[i] & kMag) a = i;
  int b = 3;
#pragma unroll
  for (int j = 3; j >= 1; --j)
    if (j > a && (y[j] & kMag)) b = j;
  *i0 = a;
  *i1 = b;
}

__host__ __device__ inline uint64_t SplitMix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A 32-bit integer hash with good avalanche ("lowbias32", C. Wellons). The
// MVUE kernel needs two uniforms per group of 4 elements and should be a
// memory-bound stream; with two SplitMix64 (64-bit multiplies) and IEEE
// divisions per group it ran at 12-18% of HBM bandwidth on an H100
// (2026-11-23), its group loop ~240 SASS instructions plus division calls.
__host__ __device__ inline uint32_t Hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21f0aaadu;
  x ^= x >> 15;
  x *= 0xd35a2d97u;
  x ^= x >> 15;
  return x;
}

// Per-call keys of the MVUE hash, from the uint32[2] seed (once per thread).
struct MvueKeys {
  uint32_t k0, k1;
};
__host__ __device__ inline MvueKeys MakeMvueKeys(const uint32_t* seed) {
  const uint64_t z = SplitMix64((static_cast<uint64_t>(seed[1]) << 32) | seed[0]);
  return MvueKeys{static_cast<uint32_t>(z), static_cast<uint32_t>(z >> 32)};
}

// Reciprocal: the approximate MUFU instruction on the GPU (1 instruction, about
// 1 ulp; IEEE division is a subroutine of ~20), exact on the host emulation.
// Every use below feeds a value that is rounded to 16 bits afterwards.
__host__ __device__ inline float Rcp(float x) {
#ifdef __CUDA_ARCH__
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return 1.f / x;
#endif
}

// MVUE 2:4 of one group (SPEC.md): a_i = |v_i| + 1.19209e-07, S = sum a;
// i1 ~ a_i / S, then i2 ~ a_j / (S - a_i1) among the other three; the kept
// values become v_i / p_i with p_i the inclusion probability
//   p_i = a_i * (1/S + sum_{j != i} q_j),   q_j = a_j / (S * R_j),   R_j = S - a_j,
// where R_j is summed from the other three, never subtracted (for a group like
// (0, 0, 5, 0), S - a_2 cancels in float32). u1, u2: the two uniforms in
// [0, 1) (24 bits each). Returns the kept positions lo < hi and their values.
// Branch-free (selects), ~80 instructions: the kernel is a memory-bound stream.
__host__ __device__ inline void MvuePick(const float v[4], float u1, float u2, int* lo, int* hi,
                                         float* v_lo, float* v_hi) {
  float a[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) a[i] = fabsf(v[i]) + 1.19209e-07f;
  const float c0 = a[0], c1 = c0 + a[1], c2 = c1 + a[2], s = c2 + a[3];
  // first draw: inverse CDF (the c's increase, so the index is a count)
  const float t1 = u1 * s;
  const int i1 = (t1 >= c0) + (t1 >= c1) + (t1 >= c2);
  // second draw among the other three, proportional to a_j (a_i1 set to 0)
  const float w0 = i1 == 0 ? 0.f : a[0], w1 = i1 == 1 ? 0.f : a[1];
  const float w2 = i1 == 2 ? 0.f : a[2], w3 = i1 == 3 ? 0.f : a[3];
  const float d0 = w0, d1 = d0 + w1, d2 = d1 + w2;
  const float t2 = u2 * (d2 + w3);
  int i2 = (t2 >= d0) + (t2 >= d1) + (t2 >= d2);
  if (i2 == i1) i2 = i1 == 3 ? 2 : 3;  // u2 * total rounded up onto i1's empty interval
  const int l = i1 < i2 ? i1 : i2, h = i1 < i2 ? i2 : i1;
  // inclusion probabilities of the two kept positions
  const float p01 = a[0] + a[1], p23 = a[2] + a[3];
  const float inv_s = Rcp(s);
  const float q0 = a[0] * inv_s * Rcp(a[1] + p23), q1 = a[1] * inv_s * Rcp(a[0] + p23);
  const float q2 = a[2] * inv_s * Rcp(p01 + a[3]), q3 = a[3] * inv_s * Rcp(p01 + a[2]);
  const float q01 = q0 + q1, q23 = q2 + q3;
  // sum of q_j over j != i, added directly (no subtraction): lo is 0..2, hi 1..3
  const float qo_l = l == 0 ? q1 + q23 : (l == 1 ? q0 + q23 : q01 + q3);
  const float qo_h = h == 1 ? q0 + q23 : (h == 2 ? q01 + q3 : q01 + q2);
  const float a_l = l == 0 ? a[0] : (l == 1 ? a[1] : a[2]);
  const float a_h = h == 1 ? a[1] : (h == 2 ? a[2] : a[3]);
  const float x_l = l == 0 ? v[0] : (l == 1 ? v[1] : v[2]);
  const float x_h = h == 1 ? v[1] : (h == 2 ? v[2] : v[3]);
  *lo = l;
  *hi = h;
  *v_lo = x_l * Rcp(a_l * (inv_s + qo_l));
  *v_hi = x_h * Rcp(a_h * (inv_s + qo_h));
}

// MVUE of one group in bit form: y holds the two kept values (the others +0).
template <int DT>
__host__ __device__ inline void Mvue4(const uint32_t x[4], uint32_t y[4], float u1, float u2) {
  using T = DTraits<DT>;
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = T::ToFloat(x[i]);
  int lo, hi;
  float vl, vh;
  MvuePick(v, u1, u2, &lo, &hi, &vl, &vh);
  const uint32_t bl = T::FromFloat(vl), bh = T::FromFloat(vh);
#pragma unroll
  for (int i = 0; i < 4; ++i) y[i] = i == lo ? bl : (i == hi ? bh : 0u);
}

// The two uniforms of group number c (A's row * groups per row + group).
__host__ __device__ inline void MvueUniforms(const MvueKeys& keys, uint32_t c, float* u1, float* u2) {
  const uint32_t h1 = Hash32(c ^ keys.k0);
  const uint32_t h2 = Hash32(h1 ^ keys.k1);
  *u1 = static_cast<float>(h1 >> 8) * 5.9604644775390625e-08f;
  *u2 = static_cast<float>(h2 >> 8) * 5.9604644775390625e-08f;
}

// ---------------------------------------------------------------------------
// The compression kernel
// ---------------------------------------------------------------------------

enum : int { kModePlain = 0, kModeMask = 1, kModeMvue = 2 };

constexpr int kTileRows = 64;     // rows of A per block (one metadata row block)
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
//   per row), the tile's metadata (one contiguous run, SPEC's layout) as
//   8-byte stores, each holding rows r and r + 8 of 8 groups.
constexpr int kMvRows = 64;
constexpr int kMvGroups = 64;

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

  static __host__ __device__ inline void Phase1(const Args& a, Smem& sm, int bx, int by, int tid) {
    const int lane = tid & 31, warp = tid >> 5;
    const int64_t r0 = static_cast<int64_t>(by) * kMvRows;
    const int64_t g0 = static_cast<int64_t>(bx) * kMvGroups;
    const int64_t kg = a.k / 4, words = a.m / 2;
    const int64_t col = r0 / 2 + lane;
    const MvueKeys keys = MakeMvueKeys(a.seed);
    uint32_t x[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t g = g0 + warp + 8 * i;
#pragma unroll
      for (int t = 0; t < 4; ++t) x[i][t] = g < kg ? a.src[(4 * g + t) * words + col] : 0u;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int gl = warp + 8 * i;
      const int64_t g = g0 + gl;
      if (g >= kg) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int rl = 2 * lane + half;
        float v[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) v[t] = Tr::ToFloat(half ? x[i][t] >> 16 : x[i][t] & 0xFFFFu);
        float u1, u2;
        MvueUniforms(keys, static_cast<uint32_t>((r0 + rl) * kg + g), &u1, &u2);
        int lo, hi;
        float vl, vh;
        MvuePick(v, u1, u2, &lo, &hi, &vl, &vh);
        uint32_t bl = Tr::FromFloat(vl), bh = Tr::FromFloat(vh);
        uint32_t code = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 2);
        if (!(bl & Tr::kMag) || !(bh & Tr::kMag)) {
          // a kept value is zero: cuSPARSELt's canonical positions (rare)
          uint32_t y[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) y[j] = j == lo ? bl : (j == hi ? bh : 0u);
          int c0, c1;
          CanonicalPair<Tr::kMag>(y, &c0, &c1);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if (j == c0) bl = y[j];
            if (j == c1) bh = y[j];
          }
          code = static_cast<uint32_t>(c0) | (static_cast<uint32_t>(c1) << 2);
        }
        sm.vals[rl][gl] = bl | (bh << 16);
        sm.nib[rl][gl] = static_cast<uint8_t>(code);
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

  static void Emulate(const Args& a) {
    const dim3 grid = Grid(a.m, a.k);
    std::unique_ptr<Smem> sm(new Smem());
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        for (int t = 0; t < kThreads; ++t) Phase1(a, *sm, bx, by, t);
        for (int t = 0; t < kThreads; ++t) Phase2(a, *sm, bx, by, t);
      }
    }
  }
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

template <int DT, int MODE, bool TRANS>
static cudaError_t LaunchOrEmulate(cudaStream_t stream, bool emulate, const void* src,
                                   const uint8_t* mask, const uint32_t* seed, uint8_t* out,
                                   int64_t m, int64_t k) {
  // the dedicated MVUE kernel moves 16-bit pairs as 32-bit words: 16-bit types only
  if constexpr (MODE == kModeMvue && TRANS && sizeof(typename DTraits<DT>::Bits) == 2) {
    using K = MvueTransposed<DT>;
    if (K::Takes(m, k)) {
      typename K::Args args{static_cast<const uint32_t*>(src), seed, out, m, k};
      if (emulate) {
        K::Emulate(args);
        return cudaSuccess;
      }
      MvueTransposedKernel<DT><<<K::Grid(m, k), kThreads, 0, stream>>>(args);
      return cudaGetLastError();
    }
  }
  using C = Compressor<DT, MODE, TRANS>;
  typename C::Args args{static_cast<const typename C::Bits*>(src), mask, seed, out, m, k};
  if (emulate) {
    C::Emulate(args);
    return cudaSuccess;
  }
  Compress24Kernel<DT, MODE, TRANS><<<C::Grid(m, k), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

template <int DT, int MODE>
static cudaError_t LaunchCompressT(cudaStream_t stream, bool emulate, bool trans,
                                   const void* src, const uint8_t* mask, const uint32_t* seed,
                                   uint8_t* out, int64_t m, int64_t k) {
  if (trans) return LaunchOrEmulate<DT, MODE, true>(stream, emulate, src, mask, seed, out, m, k);
  return LaunchOrEmulate<DT, MODE, false>(stream, emulate, src, mask, seed, out, m, k);
}

template <int MODE>
static cudaError_t LaunchCompress(cudaStream_t stream, int dt, bool trans, const void* src,
                                  const uint8_t* mask, const uint32_t* seed, uint8_t* out,
                                  int64_t m, int64_t k, bool emulate = false) {
  switch (dt) {
    case kBF16:
      return LaunchCompressT<kBF16, MODE>(stream, emulate, trans, src, mask, seed, out, m, k);
    case kF16:
      return LaunchCompressT<kF16, MODE>(stream, emulate, trans, src, mask, seed, out, m, k);
    case kE4M3:
      return LaunchCompressT<kE4M3, MODE>(stream, emulate, trans, src, mask, seed, out, m, k);
    case kE5M2:
      return LaunchCompressT<kE5M2, MODE>(stream, emulate, trans, src, mask, seed, out, m, k);
    default:
      return cudaErrorInvalidValue;  // callers validate dt first (KernelDtype)
  }
}

// ---------------------------------------------------------------------------
// Dtypes
// ---------------------------------------------------------------------------

static bool KernelDtype(ffi::DataType t, int* dt, int* es) {
  switch (t) {
    case ffi::DataType::BF16:
      *dt = kBF16;
      *es = 2;
      return true;
    case ffi::DataType::F16:
      *dt = kF16;
      *es = 2;
      return true;
    case ffi::DataType::F8E4M3FN:
      *dt = kE4M3;
      *es = 1;
      return true;
    case ffi::DataType::F8E5M2:
      *dt = kE5M2;
      *es = 1;
      return true;
    default:
      return false;
  }
}

static int KernelDtypeBytes(int dt) { return dt == kE4M3 || dt == kE5M2 ? 1 : 2; }

static const char* KernelDtypeName(int dt) {
  switch (dt) {
    case kBF16:
      return "bfloat16";
    case kF16:
      return "float16";
    case kE4M3:
      return "float8_e4m3fn";
    case kE5M2:
      return "float8_e5m2";
    default:
      return "unknown dtype code";
  }
}

static cudaDataType KernelCudaDtype(int dt) {
  switch (dt) {
    case kBF16:
      return CUDA_R_16BF;
    case kF16:
      return CUDA_R_16F;
    case kE4M3:
      return CUDA_R_8F_E4M3;
    default:
      return CUDA_R_8F_E5M2;
  }
}

// The numpy / JAX name of a buffer's dtype, for error messages.
static std::string FfiDtypeName(ffi::DataType t) {
  int dt, es;
  if (KernelDtype(t, &dt, &es)) return KernelDtypeName(dt);
  switch (t) {
    case ffi::DataType::F32:
      return "float32";
    case ffi::DataType::U8:
      return "uint8";
    default:
      return "dtype #" + std::to_string(static_cast<int>(t));
  }
}

static bool CudaDtype(ffi::DataType t, cudaDataType* out) {
  switch (t) {
    case ffi::DataType::BF16:
      *out = CUDA_R_16BF;
      return true;
    case ffi::DataType::F16:
      *out = CUDA_R_16F;
      return true;
    case ffi::DataType::F8E4M3FN:
      *out = CUDA_R_8F_E4M3;
      return true;
    case ffi::DataType::F8E5M2:
      *out = CUDA_R_8F_E5M2;
      return true;
    case ffi::DataType::F32:
      *out = CUDA_R_32F;
      return true;
    default:
      return false;
  }
}

static std::string DimsText(const ffi::AnyBuffer& b) {
  std::string s = "(";
  auto d = b.dimensions();
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(d[i]);
  }
  if (d.size() == 1) s += ",";
  return s + ")";
}

static bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---------------------------------------------------------------------------
// Compression handlers
// ---------------------------------------------------------------------------

// Validates the operands of a compression and returns A's (m, k).
static ffi::Error CheckCompress(const ffi::AnyBuffer& src, const ffi::AnyBuffer& out,
                                bool trans, int* dt, int64_t* m, int64_t* k) {
  int es = 0;
  if (!KernelDtype(src.element_type(), dt, &es)) {
    return InvalidArg("compression supports bfloat16, float16, float8_e4m3fn and float8_e5m2 "
                      "inputs, got " + FfiDtypeName(src.element_type()));
  }
  auto d = src.dimensions();
  if (d.size() != 2) return InvalidArg("compression input must be 2-D, got " + DimsText(src));
  *m = trans ? d[1] : d[0];
  *k = trans ? d[0] : d[1];
  // every 1-byte (fp8) type: rows a multiple of 32 (SPEC.md)
  const int64_t m_mult = es == 2 ? 8 : 32;
  if (*k % 32 != 0 || *m % m_mult != 0) {
    return InvalidArg("compressed operand A is " + std::to_string(*m) + " x " +
                      std::to_string(*k) + " (rows x 2:4 axis): the 2:4 axis must be a multiple "
                      "of 32 and the rows a multiple of " + std::to_string(m_mult) +
                      " (pad, or use backend='xla' or 'triton')");
  }
  if (*m / kTileRows >= 65535) return InvalidArg("compressed operand has too many rows");
  if (out.element_type() != ffi::DataType::U8 || out.dimensions().size() != 1 ||
      static_cast<int64_t>(out.element_count()) != CompressedBytes(*m, *k, es)) {
    return InvalidArg("compressed output must be uint8 of shape (" +
                      std::to_string(CompressedBytes(*m, *k, es)) + ",), got " + DimsText(out));
  }
  if (!Aligned16(src.untyped_data()) || !Aligned16(out.untyped_data())) {
    return InvalidArg("buffers must be 16-byte aligned");
  }
  return ffi::Error::Success();
}

static ffi::Error CompressImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer src,
                               ffi::Result<ffi::AnyBuffer> out, int64_t transpose) {
  int dt;
  int64_t m, k;
  S24_RETURN_IF_ERROR(CheckCompress(src, *out, transpose != 0, &dt, &m, &k));
  if (m == 0 || k == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  S24_CUDA_CHECK(LaunchCompress<kModePlain>(stream, dt, transpose != 0, src.untyped_data(),
                                            nullptr, nullptr,
                                            static_cast<uint8_t*>(out->untyped_data()), m, k));
  return ffi::Error::Success();
}

static ffi::Error CompressMaskedImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer src,
                                     ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> out,
                                     int64_t transpose) {
  int dt;
  int64_t m, k;
  S24_RETURN_IF_ERROR(CheckCompress(src, *out, transpose != 0, &dt, &m, &k));
  const auto mt = mask.element_type();
  if (!(mt == ffi::DataType::PRED || mt == ffi::DataType::U8 || mt == ffi::DataType::S8) ||
      mask.dimensions().size() != 2 || mask.dimensions()[0] != src.dimensions()[0] ||
      mask.dimensions()[1] != src.dimensions()[1]) {
    return InvalidArg("mask must be bool (or uint8) with the input's shape " + DimsText(src) +
                      ", got " + DimsText(mask));
  }
  if (!Aligned16(mask.untyped_data())) return InvalidArg("mask must be 16-byte aligned");
  if (m == 0 || k == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  S24_CUDA_CHECK(LaunchCompress<kModeMask>(
      stream, dt, transpose != 0, src.untyped_data(), static_cast<const uint8_t*>(mask.untyped_data()),
      nullptr, static_cast<uint8_t*>(out->untyped_data()), m, k));
  return ffi::Error::Success();
}

static ffi::Error MvueCompressImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer src,
                                   ffi::AnyBuffer seed, ffi::Result<ffi::AnyBuffer> out,
                                   int64_t transpose) {
  int dt;
  int64_t m, k;
  S24_RETURN_IF_ERROR(CheckCompress(src, *out, transpose != 0, &dt, &m, &k));
  if (seed.element_type() != ffi::DataType::U32 || seed.element_count() < 2) {
    return InvalidArg("seed must be uint32 with at least 2 elements, got " + DimsText(seed));
  }
  if (m * (k / 4) > 0xFFFFFFFFll) {
    return InvalidArg("MVUE of a " + std::to_string(m) + " x " + std::to_string(k) +
                      " matrix: more than 2^32 groups (the RNG counter is 32-bit); split the "
                      "tokens into micro-batches");
  }
  if (m == 0 || k == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  S24_CUDA_CHECK(LaunchCompress<kModeMvue>(
      stream, dt, transpose != 0, src.untyped_data(), nullptr,
      static_cast<const uint32_t*>(seed.untyped_data()),
      static_cast<uint8_t*>(out->untyped_data()), m, k));
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// cuSPARSELt state: one handle per device, plans cached per key
// ---------------------------------------------------------------------------

// type_a / type_b: cudaDataType of the sparse A and the dense B, separately
// (fp8 recipes mix e4m3 and e5m2 operands).
struct PlanKey {
  int64_t m, n, k;
  int type_a, type_b, type_d;
  bool transpose_b, d_col_major;
  bool operator==(const PlanKey& o) const {
    return m == o.m && n == o.n && k == o.k && type_a == o.type_a && type_b == o.type_b &&
           type_d == o.type_d && transpose_b == o.transpose_b && d_col_major == o.d_col_major;
  }
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& p) const {
    size_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(static_cast<uint64_t>(p.m));
    mix(static_cast<uint64_t>(p.n));
    mix(static_cast<uint64_t>(p.k));
    mix(static_cast<uint64_t>(p.type_a));
    mix(static_cast<uint64_t>(p.type_b));
    mix(static_cast<uint64_t>(p.type_d));
    mix(p.transpose_b ? 1u : 0u);
    mix(p.d_col_major ? 1u : 0u);
    return h;
  }
};

struct Plan {
  cusparseLtMatDescriptor_t mat_a, mat_b, mat_c;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0;
  size_t compressed_size = 0;
  bool searched = false;
};

struct DeviceState {
  cusparseLtHandle_t handle;
  std::mutex mu;  // guards plans and every use of handle / plans
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;
};

// Never destroyed: handles and plans live as long as the process (tearing
// them down at exit could race the CUDA runtime's own teardown).
static std::mutex g_devices_mu;
static std::unordered_map<int, DeviceState*>* g_devices = nullptr;
static std::atomic<int64_t> g_num_plans{0};
static std::atomic<int64_t> g_num_searches{0};
static std::atomic<int64_t> g_num_matmuls{0};

static bool SearchEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("SPARSE24_CUSPARSELT_SEARCH");
    return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0));
  }();
  return enabled;
}

// The device's state, creating the handle on first use (call with the
// device current).
static ffi::Error GetDeviceState(int device, DeviceState** out) {
  std::lock_guard<std::mutex> lock(g_devices_mu);
  if (g_devices == nullptr) g_devices = new std::unordered_map<int, DeviceState*>();
  auto it = g_devices->find(device);
  if (it != g_devices->end()) {
    *out = it->second;
    return ffi::Error::Success();
  }
  auto* state = new DeviceState();
  cusparseStatus_t s = cusparseLtInit(&state->handle);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    delete state;
    return LtError("cusparseLtInit", s);
  }
  (*g_devices)[device] = state;
  *out = state;
  return ffi::Error::Success();
}

// Builds a plan for D (m x n) = A (m x k, compressed, row-major) @ op(B).
// B is stored row-major as (n, k) with op = T when transpose_b, else as
// (k, n) with op = N. D is (m, n), column-major when d_col_major (that is,
// the row-major (n, m) array D^T), else row-major.
static ffi::Error CreatePlan(const cusparseLtHandle_t* h, const PlanKey& key, Plan* p) {
  const auto ta = static_cast<cudaDataType>(key.type_a);
  const auto tb = static_cast<cudaDataType>(key.type_b);
  const auto td = static_cast<cudaDataType>(key.type_d);
  const uint32_t align = 16;
  cusparseStatus_t s = cusparseLtStructuredDescriptorInit(
      h, &p->mat_a, key.m, key.k, key.k, align, ta, CUSPARSE_ORDER_ROW,
      CUSPARSELT_SPARSITY_50_PERCENT);
  if (s != CUSPARSE_STATUS_SUCCESS) return LtError("cusparseLtStructuredDescriptorInit(A)", s);
  if (key.transpose_b) {
    s = cusparseLtDenseDescriptorInit(h, &p->mat_b, key.n, key.k, key.k, align, tb,
                                      CUSPARSE_ORDER_ROW);
  } else {
    s = cusparseLtDenseDescriptorInit(h, &p->mat_b, key.k, key.n, key.n, align, tb,
                                      CUSPARSE_ORDER_ROW);
  }
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&p->mat_a);
    return LtError("cusparseLtDenseDescriptorInit(B)", s);
  }
  if (key.d_col_major) {
    s = cusparseLtDenseDescriptorInit(h, &p->mat_c, key.m, key.n, key.m, align, td,
                                      CUSPARSE_ORDER_COL);
  } else {
    s = cusparseLtDenseDescriptorInit(h, &p->mat_c, key.m, key.n, key.n, align, td,
                                      CUSPARSE_ORDER_ROW);
  }
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&p->mat_b);
    cusparseLtMatDescriptorDestroy(&p->mat_a);
    return LtError("cusparseLtDenseDescriptorInit(D)", s);
  }
  auto destroy_descs = [&] {
    cusparseLtMatDescriptorDestroy(&p->mat_c);
    cusparseLtMatDescriptorDestroy(&p->mat_b);
    cusparseLtMatDescriptorDestroy(&p->mat_a);
  };
  s = cusparseLtMatmulDescriptorInit(
      h, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
      key.transpose_b ? CUSPARSE_OPERATION_TRANSPOSE : CUSPARSE_OPERATION_NON_TRANSPOSE,
      &p->mat_a, &p->mat_b, &p->mat_c, &p->mat_c, CUSPARSE_COMPUTE_32F);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    destroy_descs();
    return LtError("cusparseLtMatmulDescriptorInit", s);
  }
  s = cusparseLtMatmulAlgSelectionInit(h, &p->alg, &p->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    destroy_descs();
    return LtError("cusparseLtMatmulAlgSelectionInit", s);
  }
  s = cusparseLtMatmulPlanInit(h, &p->plan, &p->matmul, &p->alg);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatmulAlgSelectionDestroy(&p->alg);
    destroy_descs();
    return LtError("cusparseLtMatmulPlanInit", s);
  }
  size_t compressed_buffer = 0;
  s = cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace);
  if (s == CUSPARSE_STATUS_SUCCESS) {
    s = cusparseLtSpMMACompressedSize2(h, &p->mat_a, &p->compressed_size, &compressed_buffer);
  }
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatmulPlanDestroy(&p->plan);
    cusparseLtMatmulAlgSelectionDestroy(&p->alg);
    destroy_descs();
    return LtError("cusparseLtMatmulGetWorkspace / cusparseLtSpMMACompressedSize2", s);
  }
  return ffi::Error::Success();
}

// Workspace comes as an extra uint8 output of the call: XLA allocates it with
// the other buffers (the canonical way for cuBLASLt and cuDNN calls too). The
// FFI scratch allocator returned nothing on jax 0.11.2 / H100 (seen
// 2026-11-23), and an output buffer is also safe under command buffers.
static ffi::Error TakeWorkspace(ffi::Result<ffi::AnyBuffer>& ws, size_t bytes, void** out) {
  *out = nullptr;
  if (bytes == 0) return ffi::Error::Success();
  if (ws->element_type() != ffi::DataType::U8 || ws->size_bytes() < bytes) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "sparse24 cuSPARSELt: needs " + std::to_string(bytes) +
                          " bytes of workspace but the call has " + std::to_string(ws->size_bytes()) +
                          ": raise SPARSE24_CUSPARSELT_WORKSPACE_MB");
  }
  *out = ws->untyped_data();
  return ffi::Error::Success();
}

// What a matmul asked cuSPARSELt for, appended to its errors: a refusal of a
// type combination (NOT_SUPPORTED, INVALID_VALUE, ...) must say which types.
static std::string SpmmRequestText(int a_dt, ffi::DataType tb, ffi::DataType td, int64_t m,
                                   int64_t n, int64_t k, bool transpose_b, bool d_col_major) {
  return std::string("sparse A ") + KernelDtypeName(a_dt) + " x dense B " + FfiDtypeName(tb) +
         " -> D " + FfiDtypeName(td) + ", compute float32, m=" + std::to_string(m) +
         ", n=" + std::to_string(n) + ", k=" + std::to_string(k) +
         (transpose_b ? ", opB=T" : ", opB=N") + (d_col_major ? ", D column-major" : ", D row-major");
}

static ffi::Error WithRequest(ffi::Error e, const std::string& request) {
  if (e.success()) return e;
  return ffi::Error(e.errc().value_or(ffi::ErrorCode::kInternal),
                    e.message() + " [asked for: " + request + "]");
}

// D = A_sparse @ op(B) (see CreatePlan for the layouts); alpha scales the
// product (beta = 0). a_dtype: the kernel dtype code (kBF16 ...) of the values
// in the compressed buffer `a`; B's type is its buffer's. cuSPARSELt decides
// which (A, B) fp8 pairs it runs; its refusals come back as errors naming the
// status and both types.
static ffi::Error SpmmImpl(cudaStream_t stream, int32_t device,
                           ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> d,
                           ffi::Result<ffi::AnyBuffer> workspace, int64_t m, int64_t k,
                           int64_t transpose_b, int64_t d_col_major, int64_t a_dtype, float alpha) {
  if (a_dtype < 0 || a_dtype >= kNumDtypes) {
    return InvalidArg("a_dtype = " + std::to_string(a_dtype) + " is not a dtype code of the "
                      "sparse operand (0 bfloat16, 1 float16, 2 float8_e4m3fn, 3 float8_e5m2); "
                      "call ops.spmm(..., a_dtype=...)");
  }
  const int a_dt = static_cast<int>(a_dtype);
  const int es = KernelDtypeBytes(a_dt);
  int b_dt, b_es;
  if (!KernelDtype(b.element_type(), &b_dt, &b_es)) {
    return InvalidArg("the dense operand must be bfloat16, float16, float8_e4m3fn or float8_e5m2, "
                      "got " + FfiDtypeName(b.element_type()));
  }
  // Mixed types only among the fp8 ones (the question of e4m3 x e5m2 GEMMs);
  // a 16-bit A with another B has no cuSPARSELt kernel, and the buffer layout
  // follows A's element size.
  if (b_es != es || (es == 2 && b_dt != a_dt)) {
    return InvalidArg(std::string("the sparse operand is ") + KernelDtypeName(a_dt) +
                      " but the dense one is " + FfiDtypeName(b.element_type()) +
                      ": 16-bit operands must have the same type, fp8 ones may mix e4m3 and "
                      "e5m2 (cast one operand)");
  }
  cudaDataType td;
  if (!CudaDtype(d->element_type(), &td)) {
    return InvalidArg("the output must be bfloat16, float16, float8_e4m3fn, float8_e5m2 or "
                      "float32, got " + FfiDtypeName(d->element_type()));
  }
  auto bd = b.dimensions();
  if (bd.size() != 2) return InvalidArg("dense operand must be 2-D, got " + DimsText(b));
  const int64_t n = transpose_b ? bd[0] : bd[1];
  const int64_t bk = transpose_b ? bd[1] : bd[0];
  if (bk != k) {
    return InvalidArg("dense operand " + DimsText(b) + " does not match the sparse operand's k = " +
                      std::to_string(k) + (transpose_b ? " (expected (n, k))" : " (expected (k, n))"));
  }
  auto dd = d->dimensions();
  const int64_t d0 = d_col_major ? n : m, d1 = d_col_major ? m : n;
  if (dd.size() != 2 || dd[0] != d0 || dd[1] != d1) {
    return InvalidArg("output must have shape (" + std::to_string(d0) + ", " + std::to_string(d1) +
                      "), got " + DimsText(*d));
  }
  if (a.element_type() != ffi::DataType::U8 || a.dimensions().size() != 1 ||
      static_cast<int64_t>(a.element_count()) != CompressedBytes(m, k, es)) {
    return InvalidArg("compressed operand must be uint8 of shape (" +
                      std::to_string(CompressedBytes(m, k, es)) + ",) for a " + std::to_string(m) +
                      " x " + std::to_string(k) + " " + KernelDtypeName(a_dt) + " matrix, got " +
                      DimsText(a));
  }
  if (k % 32 != 0 || m % 8 != 0 || n % 8 != 0) {
    return InvalidArg("shapes m=" + std::to_string(m) + ", n=" + std::to_string(n) +
                      ", k=" + std::to_string(k) + " are not aligned: k must be a multiple of 32, "
                      "m and n of 8 (pad, or use backend='xla' or 'triton')");
  }
  if (!Aligned16(a.untyped_data()) || !Aligned16(b.untyped_data()) ||
      !Aligned16(d->untyped_data())) {
    return InvalidArg("buffers must be 16-byte aligned");
  }
  if (m == 0 || n == 0) return ffi::Error::Success();

  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  DeviceState* state = nullptr;
  S24_RETURN_IF_ERROR(GetDeviceState(device, &state));

  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  S24_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;

  cudaDataType tb;
  CudaDtype(b.element_type(), &tb);  // cannot fail: KernelDtype took it
  const std::string request = SpmmRequestText(a_dt, b.element_type(), d->element_type(), m, n, k,
                                              transpose_b != 0, d_col_major != 0);
  std::lock_guard<std::mutex> lock(state->mu);
  const PlanKey key{m, n, k, static_cast<int>(KernelCudaDtype(a_dt)), static_cast<int>(tb),
                    static_cast<int>(td), transpose_b != 0, d_col_major != 0};
  Plan* plan = nullptr;
  auto it = state->plans.find(key);
  if (it == state->plans.end()) {
    auto fresh = std::make_unique<Plan>();
    S24_RETURN_IF_ERROR(WithRequest(CreatePlan(&state->handle, key, fresh.get()), request));
    plan = fresh.get();
    state->plans.emplace(key, std::move(fresh));
    g_num_plans.fetch_add(1);
  } else {
    plan = it->second.get();
  }
  if (plan->compressed_size != static_cast<size_t>(a.element_count())) {
    return ffi::Error::Internal(
        "sparse24 cuSPARSELt: this cuSPARSELt expects a compressed buffer of " +
        std::to_string(plan->compressed_size) + " bytes for a " + std::to_string(m) + " x " +
        std::to_string(k) + " " + KernelDtypeName(a_dt) + " matrix but sparse24 writes " +
        std::to_string(a.element_count()) +
        ": the compressed layout this library assumes (verified on cuSPARSELt 0.8) does not "
        "hold for this version; use backend='xla' or 'triton'");
  }
  const float beta = 0.f;
  void* d_ptr = d->untyped_data();
  if (!plan->searched && !capturing && SearchEnabled()) {
    // Once per key, outside graph capture: time the algorithms on the real
    // operands (D is overwritten below anyway). Extra workspace for safety.
    void* ws = nullptr;
    S24_RETURN_IF_ERROR(TakeWorkspace(workspace, plan->workspace, &ws));
    cudaStream_t streams[1] = {stream};
    cusparseStatus_t s = cusparseLtMatmulSearch(&state->handle, &plan->plan, &alpha,
                                                a.untyped_data(), b.untyped_data(), &beta, d_ptr,
                                                d_ptr, ws, streams, 1);
    if (s != CUSPARSE_STATUS_SUCCESS) {
      return WithRequest(LtError("cusparseLtMatmulSearch", s), request);
    }
    s = cusparseLtMatmulGetWorkspace(&state->handle, &plan->plan, &plan->workspace);
    if (s != CUSPARSE_STATUS_SUCCESS) {
      return WithRequest(LtError("cusparseLtMatmulGetWorkspace", s), request);
    }
    plan->searched = true;
    g_num_searches.fetch_add(1);
  }
  void* ws = nullptr;
  S24_RETURN_IF_ERROR(TakeWorkspace(workspace, plan->workspace, &ws));
  cudaStream_t streams[1] = {stream};
  const cusparseStatus_t s = cusparseLtMatmul(&state->handle, &plan->plan, &alpha,
                                              a.untyped_data(), b.untyped_data(), &beta, d_ptr,
                                              d_ptr, ws, streams, 1);
  if (s != CUSPARSE_STATUS_SUCCESS) return WithRequest(LtError("cusparseLtMatmul", s), request);
  g_num_matmuls.fetch_add(1);
  return ffi::Error::Success();
}

// cuSPARSELt's own compression of a dense (m, k) row-major 2:4 matrix, into
// the same uint8 buffer shape as ours (tests compare them byte for byte).
static ffi::Error LibCompressImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer src,
                                  ffi::Result<ffi::AnyBuffer> out,
                                  ffi::Result<ffi::AnyBuffer> workspace) {
  cudaDataType t;
  int kdt, es;
  if (!KernelDtype(src.element_type(), &kdt, &es) || !CudaDtype(src.element_type(), &t)) {
    return InvalidArg("compression supports bfloat16, float16, float8_e4m3fn and float8_e5m2 "
                      "inputs, got " + FfiDtypeName(src.element_type()));
  }
  auto sd = src.dimensions();
  if (sd.size() != 2) return InvalidArg("compression input must be 2-D, got " + DimsText(src));
  const int64_t m = sd[0], k = sd[1];
  if (out->element_type() != ffi::DataType::U8 || out->dimensions().size() != 1 ||
      static_cast<int64_t>(out->element_count()) != CompressedBytes(m, k, es)) {
    return InvalidArg("compressed output must be uint8 of shape (" +
                      std::to_string(CompressedBytes(m, k, es)) + ",), got " + DimsText(*out));
  }
  if (m == 0 || k == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  DeviceState* state = nullptr;
  S24_RETURN_IF_ERROR(GetDeviceState(device, &state));
  std::lock_guard<std::mutex> lock(state->mu);
  cusparseLtMatDescriptor_t desc;
  S24_LT_CHECK(cusparseLtStructuredDescriptorInit(&state->handle, &desc, m, k, k, 16, t,
                                                  CUSPARSE_ORDER_ROW,
                                                  CUSPARSELT_SPARSITY_50_PERCENT));
  size_t size = 0, buffer = 0;
  cusparseStatus_t s = cusparseLtSpMMACompressedSize2(&state->handle, &desc, &size, &buffer);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&desc);
    return LtError("cusparseLtSpMMACompressedSize2", s);
  }
  if (size != static_cast<size_t>(out->element_count())) {
    cusparseLtMatDescriptorDestroy(&desc);
    return ffi::Error::Internal("sparse24 cuSPARSELt: the library's compressed size is " +
                                std::to_string(size) + " bytes, the layout formula gives " +
                                std::to_string(out->element_count()));
  }
  void* buf = nullptr;
  ffi::Error e = TakeWorkspace(workspace, buffer, &buf);
  if (!e.success()) {
    cusparseLtMatDescriptorDestroy(&desc);
    return e;
  }
  s = cusparseLtSpMMACompress2(&state->handle, &desc, 1, CUSPARSE_OPERATION_NON_TRANSPOSE,
                               src.untyped_data(), out->untyped_data(), buf, stream);
  cusparseLtMatDescriptorDestroy(&desc);
  if (s != CUSPARSE_STATUS_SUCCESS) return LtError("cusparseLtSpMMACompress2", s);
  return ffi::Error::Success();
}

}  // namespace s24

// ---------------------------------------------------------------------------
// Exported symbols
// ---------------------------------------------------------------------------

#define S24_SPMM_BINDING                          \
  ffi::Ffi::Bind()                                \
      .Ctx<ffi::PlatformStream<cudaStream_t>>()   \
      .Ctx<ffi::DeviceOrdinal>()                  \
      .Arg<ffi::AnyBuffer>()                      \
      .Arg<ffi::AnyBuffer>()                      \
      .Ret<ffi::AnyBuffer>()                      \
      .Ret<ffi::AnyBuffer>()                      \
      .Attr<int64_t>("m")                         \
      .Attr<int64_t>("k")                         \
      .Attr<int64_t>("transpose_b")               \
      .Attr<int64_t>("d_col_major")               \
      .Attr<int64_t>("a_dtype")                   \
      .Attr<float>("alpha")

// The default: XLA runs it as a plain custom call (never inside its CUDA graphs).
XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_spmm, s24::SpmmImpl, S24_SPMM_BINDING);

// Experimental (SPARSE24_CUSPARSELT_CMD_BUFFER=1): may be captured into XLA's
// command buffers; under capture no search runs (the default algorithm is
// used for keys not searched before).
XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_spmm_graph, s24::SpmmImpl, S24_SPMM_BINDING,
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_compress, s24::CompressImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_compress_masked, s24::CompressMaskedImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_mvue_compress, s24::MvueCompressImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_lib_compress, s24::LibCompressImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

// Plain C diagnostics for ctypes.
extern "C" {

// cuSPARSELt's version as major*1000 + minor*100 + patch, or -1.
__attribute__((visibility("default"))) int s24_cusparselt_version(void) {
  int major = 0, minor = 0, patch = 0;
  if (cusparseLtGetProperty(MAJOR_VERSION, &major) != CUSPARSE_STATUS_SUCCESS ||
      cusparseLtGetProperty(MINOR_VERSION, &minor) != CUSPARSE_STATUS_SUCCESS ||
      cusparseLtGetProperty(PATCH_LEVEL, &patch) != CUSPARSE_STATUS_SUCCESS) {
    return -1;
  }
  return major * 1000 + minor * 100 + patch;
}

// Plans built, algorithm searches run, matmuls launched (all devices).
__attribute__((visibility("default"))) int64_t s24_num_plans(void) {
  return s24::g_num_plans.load();
}
__attribute__((visibility("default"))) int64_t s24_num_searches(void) {
  return s24::g_num_searches.load();
}
__attribute__((visibility("default"))) int64_t s24_num_matmuls(void) {
  return s24::g_num_matmuls.load();
}

// Host emulation of the compression kernels (the same code, run block by
// block on the CPU) for tests without a GPU. dt: 0 bf16, 1 f16, 2 e4m3, 3 e5m2;
// mode: 0 plain, 1 masked, 2 MVUE; src (and mask) as the kernels take them,
// 16-byte aligned; out must hold s24_compressed_bytes(m, k, es) bytes.
// Returns 0, or -1 for shapes the kernels do not take.
__attribute__((visibility("default"))) int s24_emulate_compress(int dt, int mode, int trans,
                                                                const void* src,
                                                                const uint8_t* mask,
                                                                const uint32_t* seed,
                                                                uint8_t* out, int64_t m,
                                                                int64_t k) {
  if (dt < 0 || dt >= s24::kNumDtypes || mode < 0 || mode > 2 || m < 0 || k < 0) return -1;
  // as CheckCompress: rows a multiple of 32 for every 1-byte (fp8) type
  const int64_t m_mult = s24::KernelDtypeBytes(dt) == 1 ? 32 : 8;
  if (k % 32 != 0 || m % m_mult != 0) return -1;
  if (m == 0 || k == 0) return 0;
  cudaError_t e;
  switch (mode) {
    case s24::kModePlain:
      e = s24::LaunchCompress<s24::kModePlain>(nullptr, dt, trans != 0, src, nullptr, nullptr,
                                               out, m, k, true);
      break;
    case s24::kModeMask:
      e = s24::LaunchCompress<s24::kModeMask>(nullptr, dt, trans != 0, src, mask, nullptr, out,
                                              m, k, true);
      break;
    default:
      e = s24::LaunchCompress<s24::kModeMvue>(nullptr, dt, trans != 0, src, nullptr, seed, out,
                                              m, k, true);
      break;
  }
  return e == cudaSuccess ? 0 : -1;
}

// Bytes of the compressed buffer for an m x k matrix of es-byte elements.
__attribute__((visibility("default"))) int64_t s24_compressed_bytes(int64_t m, int64_t k,
                                                                      int es) {
  return s24::CompressedBytes(m, k, es);
}

}  // extern "C"
