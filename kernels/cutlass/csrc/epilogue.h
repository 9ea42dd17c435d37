// The plain-C++ interface between the fused-epilogue GEMM units
// (epilogue_instance.cu: CUTLASS templates, device code) and their host unit
// (epilogue_bindings.cc: its table, XLA FFI). Nothing CUTLASS here. The plain
// instances include none of it (their cache keys hash the headers they
// include, so the fused epilogues touch none of them).

#pragma once

#include "products.h"

namespace s24c {

// The fused products (README "Fused epilogues"), both on a 2:4 weight W_s:
//   kFwdGelu : H = gelu(Z) bf16 and Aux = G = gelu'(Z) bf16, Z = X @ W_s^T + b
//              in float32 (CUTLASS: A = W_s (N, K), B = X (M, K) K-major, D = H^T
//              col-major)
//   kDxDgelu : dZ1 = (dY @ W_s) * Aux bf16, Aux = G1 = gelu'(Z1) read (M, K) bf16
//              (CUTLASS: A = W_s^T (K, N), B = dY (M, N) K-major, D = dZ1^T col-major)
// gelu is the exact (erf) GELU; gelu'(z) = Phi(z) + z * phi(z).
//   kDxDgeluMvue : kDxDgelu, and S_z(dZ1^T) (the MVUE of the stored bf16 dZ1
//              along the tokens, CUTLASS's compressed format; OwnMvueBlock's bytes
//              for the same seed) written from the epilogue (epilogue_mvue.cuh)
enum Epilogue : int { kFwdGelu = 0, kDxDgelu = 1, kDxDgeluMvue = 2, kNumEpilogues = 3 };

// One call in CUTLASS's terms: D (m x n) = epi(A (m x k, compressed) @ B (k x n)).
struct EpiCall : GemmCall {
  void* aux = nullptr;         // kFwdGelu: written (gelu'(Z)); kDxDgelu: read (gelu'(Z1))
  const void* bias = nullptr;  // kFwdGelu only: per-row of D (m,) bf16, or null (no bias)
  void* mvue_values = nullptr;  // kDxDgeluMvue: S_z(dZ1^T) values (m, n/2) bf16
  void* mvue_meta = nullptr;    // ... and metadata (CUTLASS's, an (m, n) operand)
  const void* seed = nullptr;   // ... uint32[2]: the MVUE's draw
};

using EpiInstance = Instance<EpiCall>;
using EpiRegistry = Registry<EpiCall>;  // its table: epilogue_bindings.cc

}  // namespace s24c
