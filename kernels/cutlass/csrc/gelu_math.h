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

// *cdf = Phi(z), *pdf = phi(z). The constants are folded so that no instruction
// only scales: p / sqrt 2 into t's FMA (0.3275911 / sqrt 2 = 0.2316419), -1/2 and
// log2 e into the exponent of exp(-z^2 / 2) = 2^(z (z (-log2(e) / 2))), and the
// tail's 1/2 into the polynomial's coefficients (halved: exact in binary); and
// the exponential is ex2 itself (__expf adds a multiply and a range test). Five
// instructions fewer per element than the formula as written above: the ping-pong
// forward kernel went from 4805 to 4165 SASS instructions (4 FMUL and 1 FSETP per
// element; cuobjdump -sass, 128 elements per thread). Same math, same accuracy.
// In a GPT-2 774M SR-STE step on an H200 the fused forward took 333-342 us per
// call against 347-356 before (two runs each, alternating; 0.5 ms a step, below
// the step's run-to-run noise): docs/BENCHMARKS.md section 13.
S24C_GELU_HD void NormalCdfPdf(float z, float* cdf, float* pdf) {
  const float y = fmaf(0.2316419f, fabsf(z), 1.0f);  // 1 + p |z| / sqrt 2
  const float w = z * (z * -0.72134752044448170f);    // -z^2 / 2 in base 2
#ifdef __CUDA_ARCH__
  const float t = __fdividef(1.0f, y);
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(w));
#else
  const float t = 1.0f / y;
  const float e = exp2f(w);
#endif
  // A&S's a1 .. a5, halved
  const float half_poly =
      t * (0.127414796f + t * (-0.142248368f + t * (0.7107068705f + t * (-0.7265760135f + t * 0.5307027145f))));
  const float tail = half_poly * e;  // (1 - erf(|z| / sqrt 2)) / 2 = Phi(-|z|)
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
