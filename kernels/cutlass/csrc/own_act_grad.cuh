// SwiGLU's backward fused with our CUTLASS-format MVUE (own_compress.cuh's
// OwnMvueBlock): host + device code, launched and emulated by own_compress.cu.
// Apart from own_compress.cuh so that the fused-epilogue instances, which include
// that header for the MVUE's group math, do not compile this kernel too.

#pragma once

#include <cstdint>

#include "act_grad_kernels.cuh"  // kernels/cusparselt/csrc: SwigluGrad and its word helpers
#include "own_compress.h"
#include "own_compress.cuh"

namespace s24c {

// SwiGLU's backward and the MVUE of its result, in one pass: dA (M tokens, F) and
// h = [x | gate] (M, 2F) bf16 in; dh = [dA silu(gate), dA x silu'(gate)] (M, 2F) bf16 and
// S(dh^T) (2F, M), 2:4 along M, as CUTLASS's (values, meta) out. Unfused, XLA reads dA and
// h and writes dh, and OwnMvueBlock reads dh again: 12 bytes per feature pair and token
// more than here.
//
// A word of dh's x half needs the gate word of the same features and the other way round,
// so a block owns 64 features f0.. of both halves: rows f0.. and F + f0.. of A = dh^T, two
// OwnMvueBlock tiles (two Smem, one StoreTile each). Lane l of warp w owns the feature pair
// f0 + 2l, f0 + 2l + 1 and the groups w + 8i, as OwnMvueBlock; per token it loads a word of
// dA, x and gate and stores a word of each half of dh (128 contiguous bytes per warp), in
// batches of kBatch groups (the cuSPARSELt kernel's register budget). dh's words are
// SwigluGrad's (the cuSPARSELt kernel's math, bit for bit) and each group is pruned by
// OwnMvueGroup with OwnMvueBlock's counters (A's row * M/4 + group), so the compressed
// buffer is, byte for byte, OwnMvueBlock's of the dh written.
struct OwnSwigluGradArgs {
  const uint32_t* da;    // dA (M, F) as words: two features per word
  const uint32_t* h;     // [x | gate] (M, 2F)
  uint32_t* dh;          // [dx | dgate] (M, 2F), written
  const uint32_t* seed;  // uint32[2]
  uint32_t* values;      // (2F, M/2) bf16
  uint8_t* meta;
  int64_t m, k;          // m = 2F (A's rows), k = M (tokens, 2:4 axis)
};

struct OwnSwigluGradMvue {
  static constexpr int kPhases = 2;
  static constexpr int kGroups = kOwnMvueBlockGroups, kRounds = kGroups / 8, kBatch = 2;
  using Tile = OwnMvueBlock<kGroups>;
  static constexpr int kRows = Tile::kRows;

  struct alignas(16) Smem {
    typename Tile::Smem x, gate;  // rows f0.. and F + f0.. of A
  };

  using Args = OwnSwigluGradArgs;

  static __host__ __device__ inline void Phase(int p, const Args& a, Smem& sm, int bx, int by, int tid) {
    const int64_t f0 = static_cast<int64_t>(by) * kRows, g0 = static_cast<int64_t>(bx) * kGroups;
    const int64_t kg = a.k / 4, f = a.m / 2, fw = f / 2;  // fw: words per row of dA
    if (p == 0) {
      const int lane = tid & 31, warp = tid >> 5;
      const s24::MvueKeys keys = s24::MakeMvueKeys(a.seed);
      // 64-bit pointers to the block's first words, 32-bit offsets inside it (the handler
      // bounds the operand: 2F * M / 4 < 2^32)
      const int64_t tok0 = 4 * g0;
      const uint32_t* hx = a.h + tok0 * 2 * fw + f0 / 2;
      uint32_t* dhx = a.dh + tok0 * 2 * fw + f0 / 2;
      const s24::SwigluPtrs ptr{a.da + tok0 * fw + f0 / 2, hx, hx + fw, dhx, dhx + fw,
                                static_cast<uint32_t>(fw)};
      // counters of rows f0 + 2 lane (x half) and F + f0 + 2 lane (gate half), group g0 + warp
      const uint32_t cx = s24::Opaque(static_cast<uint32_t>((f0 + 2 * lane) * kg + g0 + warp));
      const uint32_t cg = s24::Opaque(static_cast<uint32_t>((f + f0 + 2 * lane) * kg + g0 + warp));
      const uint32_t ukg = static_cast<uint32_t>(kg);
#pragma unroll
      for (int b = 0; b < kRounds; b += kBatch) {
        uint32_t d[kBatch][4], x[kBatch][4], gt[kBatch][4];
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int gl = warp + 8 * (b + i);
          s24::SwigluLoadGroup(ptr, lane, gl, g0 + gl < kg, d[i], x[i], gt[i]);
        }
#pragma unroll
        for (int i = 0; i < kBatch; ++i) {
          const int gl = warp + 8 * (b + i);
          const bool in = g0 + gl < kg;
          s24::SwigluGradGroup<s24::kBF16>(ptr, lane, gl, in, d[i], x[i], gt[i]);
          // groups past the tokens (the last block column) are pruned from zero words: their
          // values are never stored, and their code is CUTLASS's padding, 0
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int rl = 2 * lane + half;
            const uint32_t step = 8u * (b + i) + (half ? ukg : 0u);
            uint32_t pair, code;
            OwnMvueGroup(keys, cx + step, x[i], half, &pair, &code);
            sm.x.vals[rl][gl] = pair;
            sm.x.code[rl][gl] = static_cast<uint8_t>(in ? code : 0u);
            OwnMvueGroup(keys, cg + step, gt[i], half, &pair, &code);
            sm.gate.vals[rl][gl] = pair;
            sm.gate.code[rl][gl] = static_cast<uint8_t>(in ? code : 0u);
          }
        }
      }
    } else {
      Tile::StoreTile(sm.x, a.values, a.meta, a.m, a.k, f0, g0, tid);
      Tile::StoreTile(sm.gate, a.values, a.meta, a.m, a.k, f + f0, g0, tid);
    }
  }

  // y: the 64-feature tiles of one half
  static dim3 Grid(int64_t m, int64_t k) {
    return dim3(static_cast<unsigned>((k / 4 + kGroups - 1) / kGroups), static_cast<unsigned>(m / 2 / kRows));
  }
};

}  // namespace s24c
