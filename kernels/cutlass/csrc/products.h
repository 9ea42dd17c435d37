// The plain-C++ interface between the CUTLASS instance units (gemm_instance.cu,
// epilogue_instance.cu, compress.cu: heavy templates, device code) and the host
// units (registry.cc, bindings.cc, epilogue_bindings.cc: XLA FFI). Nothing
// CUTLASS here, so the host units compile fast.

#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace s24c {

// The three products of a 2:4 linear Z = X @ W_s^T (gemm_kernel.cuh maps them
// onto CUTLASS's D = A_sparse @ B), and the weight gradient added to a running
// float32 sum (kDwAcc: D = C + A_sparse @ B, gradient accumulation fused into
// the GEMM's epilogue; its own handler, s24c_gemm_acc, which takes C).
enum Product : int { kFwd = 0, kDx = 1, kDw = 2, kNumProducts = 3, kDwAcc = 3 };
enum Schedule : int { kCooperative = 0, kPingpong = 1 };

// Return codes of an instance's Run.
enum GemmStatus : int {
  kOk = 0,
  kErrCannotImplement = 1,
  kErrWorkspace = 2,
  kErrInitialize = 3,
  kErrLaunch = 4,
};

// One call in CUTLASS's terms: D (m x n) = A (m x k, compressed) @ B (k x n).
// (epilogue.h's EpiCall adds the fused epilogues' operands.)
struct GemmCall {
  int m = 0, n = 0, k = 0;
  const void* a_values = nullptr;  // CUTLASS's compressed values of A
  const void* a_meta = nullptr;    // CUTLASS's metadata of A
  const void* b = nullptr;
  const void* c = nullptr;  // kDwAcc's source C (may be d itself); unused otherwise
  void* d = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  cudaStream_t stream = nullptr;
  int device = 0;
  int sm_count = 0;
};

// An instance of gemm_kernel.cuh's SparseGemmOf, as its table lists it: a
// plain product's (Call = GemmCall, kind = its Product) or a fused epilogue's
// (Call = EpiCall, kind = its Epilogue).
template <class Call>
struct Instance {
  const char* config;  // e.g. "t128x128x128_c1x1_coop"
  int kind;
  int tile_m, tile_n, tile_k, cluster_m, cluster_n, schedule;
  int (*run)(const Call&);
  int (*can_implement)(const Call&);
  size_t (*workspace_bytes)(const Call&);
};

// The table of one kind of instance: each instance unit's static initialiser
// adds itself (registration order is link order, which nothing depends on).
// Defined in instance_table.h and instantiated by the host unit that owns the
// table: registry.cc for GemmCall, epilogue_bindings.cc for EpiCall.
template <class Call>
struct Registry {
  static bool Add(const Instance<Call>& inst);
  static const Instance<Call>* Find(const char* config, int kind);  // or null
  static int Size();
  static const Instance<Call>* At(int i);  // or null
};

using GemmInstance = Instance<GemmCall>;
using GemmRegistry = Registry<GemmCall>;

}  // namespace s24c
