// cuSPARSELt's compressed 2:4 format and the element types of our kernels
// (host + device): the C++ twin of sparse24_jax_kernels/cusparselt/layout.py,
// the numpy reference of the format.
//
// The compressed layout (docs/algorithms.md, section 7; measured on cuSPARSELt 0.8.0, sm90) for A
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

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace s24 {

// ---------------------------------------------------------------------------
// Compressed layout
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

// Bytes of the compressed buffer of an m x k matrix of es-byte elements: the
// one definition in C++ (exported as s24_compressed_bytes; the CPU tests
// check it against layout.compressed_nbytes).
__host__ __device__ inline int64_t CompressedBytes(int64_t m, int64_t k, int es) {
  return ValueBytes(m, k, es) + RoundUp(m, 64) * MetaCols(k, es) / 8;
}

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
// Element types
// ---------------------------------------------------------------------------

// Dtype codes of the compression kernels, and of the sparse operand of
// s24_spmm (its `a_dtype` attribute: the compressed buffer itself is uint8).
// _library.py's DT_CODES mirrors them.
enum : int { kBF16 = 0, kF16 = 1, kE4M3 = 2, kE5M2 = 3, kNumDtypes = 4 };

__host__ __device__ inline int KernelDtypeBytes(int dt) {
  return dt == kE4M3 || dt == kE5M2 ? 1 : 2;
}

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

}  // namespace s24
