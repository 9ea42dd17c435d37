// The plain-C++ interface between the fused-epilogue GEMM units
// (epilogue_instance.cu: CUTLASS templates, device code) and their host unit
// (epilogue_bindings.cc: registry, XLA FFI). Nothing CUTLASS here. Separate from
// products.h on purpose: the plain instances' cache keys hash the headers they
// include, so the fused epilogues touch none of them.

#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace s24c {

// The fused products (README "Fused epilogues"), both on a 2:4 weight W_s:
//   kFwdGelu : H = gelu(X @ W_s^T + b) bf16 and Aux = Z = X @ W_s^T + b bf16
//              (CUTLASS: A = W_s (N, K), B = X (M, K) K-major, D = H^T col-major)
//   kDxDgelu : dZ1 = (dY @ W_s) * gelu'(Aux) bf16, Aux = Z1 read (M, K) bf16
//              (CUTLASS: A = W_s^T (K, N), B = dY (M, N) K-major, D = dZ1^T col-major)
// gelu is the exact (erf) GELU; gelu'(z) = Phi(z) + z * phi(z).
enum Epilogue : int { kFwdGelu = 0, kDxDgelu = 1, kNumEpilogues = 2 };

// One call in CUTLASS's terms: D (m x n) = epi(A (m x k, compressed) @ B (k x n)).
struct EpiCall {
  int m = 0, n = 0, k = 0;
  const void* a_values = nullptr;  // CUTLASS's compressed values of A
  const void* a_meta = nullptr;    // CUTLASS's metadata of A
  const void* b = nullptr;
  void* d = nullptr;
  void* aux = nullptr;         // kFwdGelu: written (pre-activation); kDxDgelu: read (Z1)
  const void* bias = nullptr;  // kFwdGelu only: per-row of D (m,) bf16, or null (no bias)
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  cudaStream_t stream = nullptr;
  int device = 0;
  int sm_count = 0;
};

struct EpiInstance {
  const char* config;  // e.g. "t128x256x128_c1x1_coop"
  int epilogue;
  int tile_m, tile_n, tile_k, cluster_m, cluster_n, schedule;
  int (*run)(const EpiCall&);
  int (*can_implement)(const EpiCall&);
  size_t (*workspace_bytes)(const EpiCall&);
};

// epilogue_bindings.cc holds the table; each instance unit registers itself.
bool RegisterEpi(const EpiInstance& inst);
const EpiInstance* FindEpi(const char* config, int epilogue);
int NumEpis();
const EpiInstance* EpiAt(int i);

}  // namespace s24c
