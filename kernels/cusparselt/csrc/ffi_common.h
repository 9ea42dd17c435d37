// What the XLA FFI host units of both libraries share: the cuSPARSELt library's
// (bindings.cc, spmm.cc, through ffi_util.h here) and the CUTLASS library's
// (kernels/cutlass/csrc, through its ffi_util.h; its build adds this folder to
// the include path). Errors that name their library, the device scope, buffer
// text. Nothing library-specific: no cuSPARSELt, no CUTLASS header. Host-only C++.

#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace s24 {

// "<library>: <what> failed: cudaErrorX: text" (library e.g. "sparse24 CUTLASS").
inline ffi::Error CudaFailure(const char* library, const char* what, cudaError_t e) {
  return ffi::Error::Internal(std::string(library) + ": " + what + " failed: " +
                              cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

inline ffi::Error InvalidArgument(const char* library, const std::string& msg) {
  return ffi::Error::InvalidArgument(std::string(library) + ": " + msg);
}

// Each library's ffi_util.h defines its CUDA check as
//   #define X_CUDA_CHECK(expr) S24_CUDA_CHECK_WITH(::ns::CudaError, expr)
// with its own CudaError (which names the library).
#define S24_CUDA_CHECK_WITH(error_fn, expr) \
  do {                                      \
    cudaError_t s24_err_ = (expr);          \
    if (s24_err_ != cudaSuccess) {          \
      return error_fn(#expr, s24_err_);     \
    }                                       \
  } while (0)

#define S24_RETURN_IF_ERROR(expr)          \
  do {                                     \
    ffi::Error s24_e_ = (expr);            \
    if (!s24_e_.success()) return s24_e_;  \
  } while (0)

// Makes `device` the current CUDA device for the scope (XLA calls handlers on
// threads whose current device is normally right already: then it does
// nothing) and restores the previous one afterwards.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    int current = -1;
    status_ = cudaGetDevice(&current);
    if (status_ != cudaSuccess) return;
    if (current != device) {
      status_ = cudaSetDevice(device);
      if (status_ == cudaSuccess) previous_ = current;
    }
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

// The numpy / JAX name of a buffer's dtype, for error messages.
inline std::string DtypeName(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::BF16:
      return "bfloat16";
    case ffi::DataType::F16:
      return "float16";
    case ffi::DataType::F8E4M3FN:
      return "float8_e4m3fn";
    case ffi::DataType::F8E5M2:
      return "float8_e5m2";
    case ffi::DataType::F32:
      return "float32";
    case ffi::DataType::U8:
      return "uint8";
    default:
      return "dtype #" + std::to_string(static_cast<int>(t));
  }
}

// A buffer's shape as Python prints a tuple: "(2, 3)", "(5,)".
inline std::string DimsText(const ffi::AnyBuffer& b) {
  std::string s = "(";
  auto d = b.dimensions();
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(d[i]);
  }
  if (d.size() == 1) s += ",";
  return s + ")";
}

inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace s24
