// What the FFI units (bindings.cc, spmm.cc) share: error helpers naming this
// library, and the element types as XLA, our kernels and cuSPARSELt name them;
// on top of ffi_common.h (the device scope, buffer text, error shapes), which the
// CUTLASS library's host units share. Host-only C++.

#pragma once

#include <cuda_runtime.h>
#include <cusparseLt.h>

#include <cstdint>
#include <string>

#include "ffi_common.h"
#include "layout.cuh"

namespace s24 {

// ---------------------------------------------------------------------------
// Error helpers
// ---------------------------------------------------------------------------

constexpr char kLibrary[] = "sparse24 cuSPARSELt";

inline std::string LtStatusText(cusparseStatus_t s) {
  const char* name = cusparseLtGetErrorName(s);
  const char* text = cusparseLtGetErrorString(s);
  std::string out = name ? name : "CUSPARSE_STATUS_?";
  out += " (";
  out += std::to_string(static_cast<int>(s));
  out += "): ";
  out += text ? text : "unknown cuSPARSELt error";
  return out;
}

inline ffi::Error LtError(const char* what, cusparseStatus_t s) {
  return ffi::Error::Internal(std::string(kLibrary) + ": " + what + " failed: " +
                              LtStatusText(s));
}

inline ffi::Error CudaError(const char* what, cudaError_t e) {
  return CudaFailure(kLibrary, what, e);
}

inline ffi::Error InvalidArg(const std::string& msg) { return InvalidArgument(kLibrary, msg); }

#define S24_LT_CHECK(expr)                                  \
  do {                                                      \
    cusparseStatus_t s24_status_ = (expr);                  \
    if (s24_status_ != CUSPARSE_STATUS_SUCCESS) {           \
      return ::s24::LtError(#expr, s24_status_);            \
    }                                                       \
  } while (0)

#define S24_CUDA_CHECK(expr) S24_CUDA_CHECK_WITH(::s24::CudaError, expr)

// ---------------------------------------------------------------------------
// Dtypes
// ---------------------------------------------------------------------------

inline bool KernelDtype(ffi::DataType t, int* dt, int* es) {
  switch (t) {
    case ffi::DataType::BF16:
      *dt = kBF16;
      *es = 2;
      return true;
    case ffi::DataType::F16:
      *dt = kF16;
      *es = 2;
      return true;
    case ffi::DataType::F8E4M3FN:
      *dt = kE4M3;
      *es = 1;
      return true;
    case ffi::DataType::F8E5M2:
      *dt = kE5M2;
      *es = 1;
      return true;
    default:
      return false;
  }
}

inline const char* KernelDtypeName(int dt) {
  switch (dt) {
    case kBF16:
      return "bfloat16";
    case kF16:
      return "float16";
    case kE4M3:
      return "float8_e4m3fn";
    case kE5M2:
      return "float8_e5m2";
    default:
      return "unknown dtype code";
  }
}

inline cudaDataType KernelCudaDtype(int dt) {
  switch (dt) {
    case kBF16:
      return CUDA_R_16BF;
    case kF16:
      return CUDA_R_16F;
    case kE4M3:
      return CUDA_R_8F_E4M3;
    default:
      return CUDA_R_8F_E5M2;
  }
}

// cuSPARSELt's type of a dense operand or output: the kernel dtypes', or float32.
inline bool CudaDtype(ffi::DataType t, cudaDataType* out) {
  int dt, es;
  if (KernelDtype(t, &dt, &es)) {
    *out = KernelCudaDtype(dt);
    return true;
  }
  if (t == ffi::DataType::F32) {
    *out = CUDA_R_32F;
    return true;
  }
  return false;
}

}  // namespace s24
