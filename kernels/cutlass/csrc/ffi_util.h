// What the CUTLASS library's FFI units (bindings.cc, epilogue_bindings.cc,
// own_bindings.cc) need beside the handlers: errors naming this library, the
// SM count, CUTLASS's status text; on top of the cuSPARSELt library's
// ffi_common.h (the device scope, buffer text, error shapes; the build adds
// kernels/cusparselt/csrc to the include path). Host-only C++.

#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include "ffi_common.h"

namespace s24c {

using s24::Aligned16;
using s24::DeviceScope;
using s24::DimsText;
using s24::DtypeName;

constexpr char kLibrary[] = "sparse24 CUTLASS";

inline ffi::Error CudaError(const char* what, cudaError_t e) {
  return s24::CudaFailure(kLibrary, what, e);
}

inline ffi::Error InvalidArg(const std::string& msg) {
  return s24::InvalidArgument(kLibrary, msg);
}

#define S24C_CUDA_CHECK(expr) S24_CUDA_CHECK_WITH(::s24c::CudaError, expr)

// The XLA FFI handler symbol `name`, and its twin `name##_graph`: the same handler
// marked command-buffer compatible, so that XLA may capture it into its CUDA graphs
// (opt-in: $SPARSE24_CUTLASS_CMD_BUFFER, _library.py). Under capture a handler does
// what it does otherwise, and nothing in it synchronises: host-side checks, then
// stream-ordered work only (CUTLASS's initialize builds the TMA descriptors on the
// host and clears a stream-K workspace with cudaMemsetAsync; the launches).
#define S24C_DEFINE_HANDLER_SYMBOLS(name, impl, binding) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, impl, binding);    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name##_graph, impl, binding, {ffi::Traits::kCmdBufferCompatible})

// The device's SM count (for CUTLASS's persistent tile scheduler), asked once.
inline cudaError_t SmCount(int device, int* out) {
  static std::array<std::atomic<int>, 64> cache{};
  if (device >= 0 && device < 64) {
    int c = cache[device].load(std::memory_order_relaxed);
    if (c > 0) {
      *out = c;
      return cudaSuccess;
    }
  }
  int c = 0;
  cudaError_t e = cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  if (device >= 0 && device < 64) cache[device].store(c, std::memory_order_relaxed);
  *out = c;
  return cudaSuccess;
}

inline const char* StatusText(int s) {
  switch (s) {
    case 0:
      return "ok";
    case 1:
      return "CUTLASS cannot implement this problem (can_implement failed)";
    case 2:
      return "workspace too small";
    case 3:
      return "CUTLASS initialize failed";
    case 4:
      return "kernel launch failed";
    default:
      return "unknown status";
  }
}

}  // namespace s24c
