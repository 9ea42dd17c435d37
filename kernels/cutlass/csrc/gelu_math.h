// The exact GELU and its derivative for the fused epilogues (gemm_epilogue.cuh),
// host + device, no CUTLASS header (tests/test_cutlass_gelu_math.py runs it on
// the CPU against double-precision erf).
//
//   gelu(z)  = z Phi(z),   gelu'(z) = Phi(z) + z phi(z),
//   Phi(z) = (1 + erf(z / sqrt 2)) / 2,   phi(z) = exp(-z^2 / 2) / sqrt(2 pi).
//
// Why not erff + expf: in fc2's input-gradient GEMM the epilogue runs after the
// mainloop of each tile, and erff + expf (about 40 instructions per element)
// made it cost half as much again as the GEMM's stores (0.15 ms over a 0.30 ms
// GEMM at GPT-2 774M on an H200). Here erf is Abramowitz & Stegun 7.1.26,
//   erf(x) = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-x^2),
//   t = 1 / (1 + p x),  x >= 0,  |error| <= 1.5e-7,
// and with x = |z| / sqrt 2 its exp(-x^2) is exp(-z^2 / 2), phi's own: one
// exponential, one reciprocal (MUFU ex2 and rcp on the GPU) and five FMAs give
// both. Phi is formed on each side of 0 without cancellation (for z < 0 it is
// the small tail itself), so gelu's relative error stays small for large |z|.
// The result is rounded to bf16 (8 significant bits), far above these errors.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define S24C_GELU_HD __host__ __device__ __forceinline__
#else
#define S24C_GELU_HD inline
#endif

namespace s24c {

// *cdf = Phi(z), *pdf = phi(z).
S24C_GELU_HD void NormalCdfPdf(float z, float* cdf, float* pdf) {
  const float x = fabsf(z) * 0.70710678118654752f;
#ifdef __CUDA_ARCH__
  const float t = __fdividef(1.0f, 1.0f + 0.3275911f * x);
  const float e = __expf(-0.5f * z * z);
#else
  const float t = 1.0f / (1.0f + 0.3275911f * x);
  const float e = expf(-0.5f * z * z);
#endif
  const float poly =
      t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float tail = 0.5f * poly * e;  // (1 - erf(x)) / 2 = Phi(-|z|)
  *cdf = z < 0.0f ? tail : 1.0f - tail;
  *pdf = 0.3989422804014327f * e;
}

S24C_GELU_HD float GeluErf(float z) {
  float cdf, pdf;
  NormalCdfPdf(z, &cdf, &pdf);
  return z * cdf;
}

S24C_GELU_HD float GeluErfGrad(float z) {
  float cdf, pdf;
  NormalCdfPdf(z, &cdf, &pdf);
  return cdf + z * pdf;
}

}  // namespace s24c

#undef S24C_GELU_HD
