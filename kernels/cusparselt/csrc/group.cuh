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

// x, hidden from the optimizer (no instruction): a value that the compiler would otherwise
// recompute from its inputs at every use (to save a register) stays in one.
__host__ __device__ inline uint32_t Opaque(uint32_t x) {
#ifdef __CUDA_ARCH__
  asm volatile("" : "+r"(x));
#endif
  return x;
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

// All ones when a >= b, else 0 (ptxas: FSETP + SEL). MvueSample draws with these masks
// rather than bools: Mux on them is one LOP3 like an FSEL, and a draw's index is minus the
// sum of its masks (one IADD3). Against bools and FSELs (2026-11-30): the same instruction
// count, fewer registers (MvueTransposed 60-63 instead of 72).
__host__ __device__ inline uint32_t GeMask(float a, float b) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("set.ge.u32.f32 %0, %1, %2;" : "=r"(r) : "f"(a), "f"(b));
  return r;
#else
  return a >= b ? ~0u : 0u;
#endif
}

// m ? x : y for a mask m of GeMask.
__host__ __device__ inline float Mux(uint32_t m, float x, float y) {
  uint32_t xb, yb;
  memcpy(&xb, &x, 4);
  memcpy(&yb, &y, 4);
  const uint32_t r = (m & xb) | (~m & yb);
  float f;
  memcpy(&f, &r, 4);
  return f;
}

// MVUE 2:4 of one group (docs/algorithms.md, section 3): a_i = |v_i| + 1.19209e-07,
// S = sum a; i1 ~ a_i / S, then i2 ~ a_j / R_i1 among the other three, R_j = S - a_j.
// The kept values become v_i / p_i with p_i the inclusion probability
//   p_i = a_i / S + sum_{j != i} (a_j / S) (a_i / R_j) = (a_i / S) (1 + T_i),
//   T_i = sum_{j != i} r_j,   r_j = a_j / R_j,
// i.e. v_i / p_i = v_i S / (a_i (1 + T_i)). Every R_j and T_i is summed from its terms,
// never formed by a subtraction: for a group like (0, 0, 5, 0), S - a_2 cancels in float32,
// and r_2 (~1e7) would swamp the others' T. (r_j overflows for |v_j| > ~1e32, where the
// group's small kept values read 0; bf16 gradients stay far below.)
//
// The draws work on "slots", the three elements other than i1 in index order: slot k
// holds element k when k < i1, else k + 1. With the first draw's comparisons
// pa = (i1 >= 1), pb = (i1 >= 2), pc = (i1 == 3) (the cumulative sums increase, so
// pa >= pb >= pc), slot k's element is picked by one select each (slot 0: pa ? 0 : 1,
// slot 1: pb ? 1 : 2, slot 2: pc ? 2 : 3), and so are their a, their r, R_i1 (the sum of
// the slots' a) and T_i1 (the sum of their r). The second draw compares u2 R_i1 with the
// slots' first two cumulative sums (so it never lands past slot 2), and
// T_i2 = r_i1 + (r of the two slots not drawn). No division, ~20 selects fewer than
// picking every quantity by index.

// a = |v| + eps (the reference's eps).
__host__ __device__ inline float MvueA(float v) { return fabsf(v) + 1.19209e-07f; }

struct MvueDraw {
  uint32_t code;     // kept positions lo < hi as lo | hi << 2
  float s;           // S
  float t_lo, t_hi;  // T_lo, T_hi
};

// a: the MvueA of the group; u1, u2: the two uniforms in [0, 1].
__host__ __device__ inline MvueDraw MvueSample(const float a[4], float u1, float u2) {
  const float c1 = a[0] + a[1], c2 = c1 + a[2], s = c2 + a[3], p23 = a[2] + a[3];
  // r_j = a_j / R_j, R_j summed from the other three (R_3 = c2)
  const float r0 = a[0] * Rcp(a[1] + p23), r1 = a[1] * Rcp(a[0] + p23);
  const float r2 = a[2] * Rcp(c1 + a[3]), r3 = a[3] * Rcp(c2);
  // first draw: inverse CDF, i1 = pa + pb + pc (masks)
  const float t1 = u1 * s;
  const uint32_t pa = GeMask(t1, a[0]), pb = GeMask(t1, c1), pc = GeMask(t1, c2);
  // the slots' a and r
  const float b0 = Mux(pa, a[0], a[1]), b1 = Mux(pb, a[1], a[2]), b2 = Mux(pc, a[2], a[3]);
  const float f0 = Mux(pa, r0, r1), f1 = Mux(pb, r1, r2), f2 = Mux(pc, r2, r3);
  // second draw among the slots: slot = q1 + q2 (t2 <= R_i1, so the last slot takes the rest)
  const float b01 = b0 + b1;
  const float t2 = u2 * (b01 + b2);
  const uint32_t q1 = GeMask(t2, b0), q2 = GeMask(t2, b01);
  const float t_1 = (f0 + f1) + f2;                                               // T_i1
  const float r_i1 = Mux(pc, r3, Mux(pb, r2, Mux(pa, r1, r0)));
  const float t_2 = r_i1 + Mux(q2, f0 + f1, Mux(q1, f0 + f2, f1 + f2));          // T_i2
  // i1 = -na, slot = -ns; i2 = slot + 1 when slot >= i1 (then lo = i1, hi = slot + 1),
  // else slot (lo = slot, hi = i1)
  const uint32_t na = pa + pb + pc, ns = q1 + q2;
  const bool first_lo = static_cast<int>(ns) <= static_cast<int>(na);  // -slot <= -i1
  MvueDraw d;
  d.code = first_lo ? 4u - (na + 4u * ns) : 0u - (ns + 4u * na);
  d.s = s;
  d.t_lo = first_lo ? t_1 : t_2;
  d.t_hi = first_lo ? t_2 : t_1;
  return d;
}

// v / p for a kept v: v S / (a (1 + T)).
__host__ __device__ inline float MvueScale(float v, float s, float t) {
  const float a = MvueA(v);
  return v * s * Rcp(fmaf(a, t, a));
}

// MvueSample on the values v; returns the kept positions lo < hi and their values.
__host__ __device__ inline void MvuePick(const float v[4], float u1, float u2, int* lo, int* hi,
                                         float* v_lo, float* v_hi) {
  float a[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) a[i] = MvueA(v[i]);
  const MvueDraw d = MvueSample(a, u1, u2);
  *lo = static_cast<int>(d.code & 3u);
  *hi = static_cast<int>(d.code >> 2);
  *v_lo = MvueScale(*lo == 0 ? v[0] : (*lo == 1 ? v[1] : v[2]), d.s, d.t_lo);
  *v_hi = MvueScale(*hi == 1 ? v[1] : (*hi == 2 ? v[2] : v[3]), d.s, d.t_hi);
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

// The two uniforms of group number c (A's row * groups per row + group): u = h 2^-32
// rounded to float, whose CDF is within 2^-25 of the uniform's (24 significant bits, finer
// below 1/2): as good as (h >> 8) 2^-24, and a shift cheaper. u can round to 1, which
// MvueSample's draws take (the last element / slot). h2 hashes h1, not c: hashing c ^ k1
// too would give groups c and c ^ k0 ^ k1 each other's uniforms, swapped.
__host__ __device__ inline void MvueUniforms(const MvueKeys& keys, uint32_t c, float* u1, float* u2) {
  const uint32_t h1 = Hash32(c ^ keys.k0);
  const uint32_t h2 = Hash32(h1 ^ keys.k1);
  *u1 = static_cast<float>(h1) * 2.3283064365386963e-10f;
  *u2 = static_cast<float>(h2) * 2.3283064365386963e-10f;
}

}  // namespace s24
