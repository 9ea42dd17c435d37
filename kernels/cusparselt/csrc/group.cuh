// The math of one group of 4 elements (host + device): which two elements a
// compression keeps (KeepTop2, CanonicalPair), and MVUE 2:4 (unbiased random
// pruning) with its counter-based RNG. Every kernel that writes the
// compressed format builds on these; the host emulation runs the same code.

#pragma once

#include <cstdint>

#include "layout.cuh"

namespace s24 {

// ---------------------------------------------------------------------------
// Bit helpers (host + device twins of single instructions)
// ---------------------------------------------------------------------------

// prmt.b32 (host + device): byte n of the result is byte s[4n+2:4n] of the
// pair (a, b) (a holds bytes 0-3), or that byte's sign replicated when
// s[4n+3] is set. Only s[15:0] counts.
__host__ __device__ inline uint32_t Prmt(uint32_t a, uint32_t b, uint32_t s) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(s));
  return r;
#else
  const uint64_t src = a | (static_cast<uint64_t>(b) << 32);
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) {
    const uint32_t sel = (s >> (4 * n)) & 0xFu;
    uint32_t byte = static_cast<uint32_t>(src >> (8 * (sel & 7u))) & 0xFFu;
    if (sel & 8u) byte = (byte & 0x80u) ? 0xFFu : 0u;
    r |= byte << (8 * n);
  }
  return r;
#endif
}

__host__ __device__ inline int Popc(uint32_t x) {
#ifdef __CUDA_ARCH__
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

// Bit i set: element i of a group of 16-bit values, packed as w01 = x0 | x1 << 16
// and w23, is non-zero (+0 and -0 are zero). (x & 0x7FFF) + 0x7FFF reaches
// bit 15 exactly when x's magnitude is non-zero, and never carries out of
// its half.
__host__ __device__ inline uint32_t NonzeroMask(uint32_t w01, uint32_t w23) {
  const uint32_t a = ((w01 & 0x7FFF7FFFu) + 0x7FFF7FFFu) & 0x80008000u;  // bits 15, 31
  const uint32_t b = ((w23 & 0x7FFF7FFFu) + 0x7FFF7FFFu) & 0x80008000u;
  const uint32_t f = (a >> 15) | (b >> 13);  // bits 0, 16 (x0, x1) and 2, 18 (x2, x3)
  return (f | (f >> 15)) & 0xFu;
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

// ---------------------------------------------------------------------------
// MVUE 2:4
// ---------------------------------------------------------------------------

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

// MVUE 2:4 of one group (docs/algorithms.md, section 3): a_i = |v_i| + 1.19209e-07, S = sum a;
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

}  // namespace s24
