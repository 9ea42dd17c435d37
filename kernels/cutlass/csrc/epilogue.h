// The plain-C++ interface between the fused-epilogue GEMM units
// (epilogue_instance.cu: CUTLASS templates, device code) and their host unit
// (epilogue_bindings.cc: its table, XLA FFI). Nothing CUTLASS here. The plain
// instances include none of it (their cache keys hash the headers they
// include, so the fused epilogues touch none of them).

#pragma once

#include "products.h"

namespace s24c {

// The fused products (README "Fused epilogues"), both on a 2:4 weight W_s:
//   kFwdGelu : H = gelu(X @ W_s^T + b) bf16 and Aux = Z = X @ W_s^T + b bf16
//              (CUTLASS: A = W_s (N, K), B = X (M, K) K-major, D = H^T col-major)
//   kDxDgelu : dZ1 = (dY @ W_s) * gelu'(Aux) bf16, Aux = Z1 read (M, K) bf16
//              (CUTLASS: A = W_s^T (K, N), B = dY (M, N) K-major, D = dZ1^T col-major)
// gelu is the exact (erf) GELU; gelu'(z) = Phi(z) + z * phi(z).
enum Epilogue : int { kFwdGelu = 0, kDxDgelu = 1, kNumEpilogues = 2 };

// One call in CUTLASS's terms: D (m x n) = epi(A (m x k, compressed) @ B (k x n)).
struct EpiCall : GemmCall {
  void* aux = nullptr;         // kFwdGelu: written (pre-activation); kDxDgelu: read (Z1)
  const void* bias = nullptr;  // kFwdGelu only: per-row of D (m,) bf16, or null (no bias)
};

using EpiInstance = Instance<EpiCall>;
using EpiRegistry = Registry<EpiCall>;  // its table: epilogue_bindings.cc

}  // namespace s24c
