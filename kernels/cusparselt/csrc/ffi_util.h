// What the FFI units (bindings.cc, spmm.cc) share: error helpers, the device
// scope, and the element types as XLA, our kernels and cuSPARSELt name them.
// Host-only C++.

#pragma once

#include <cuda_runtime.h>
#include <cusparseLt.h>

#include <cstdint>
#include <string>

#include "layout.cuh"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace s24 {

// ---------------------------------------------------------------------------
// Error helpers
// ---------------------------------------------------------------------------

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
  return ffi::Error::Internal(std::string("sparse24 cuSPARSELt: ") + what +
                              " failed: " + LtStatusText(s));
}

inline ffi::Error CudaError(const char* what, cudaError_t e) {
  return ffi::Error::Internal(std::string("sparse24 cuSPARSELt: ") + what +
                              " failed: " + cudaGetErrorName(e) + ": " +
                              cudaGetErrorString(e));
}

inline ffi::Error InvalidArg(const std::string& msg) {
  return ffi::Error::InvalidArgument("sparse24 cuSPARSELt: " + msg);
}

#define S24_LT_CHECK(expr)                                  \
  do {                                                      \
    cusparseStatus_t s24_status_ = (expr);                  \
    if (s24_status_ != CUSPARSE_STATUS_SUCCESS) {           \
      return ::s24::LtError(#expr, s24_status_);            \
    }                                                       \
  } while (0)

#define S24_CUDA_CHECK(expr)                                \
  do {                                                      \
    cudaError_t s24_err_ = (expr);                          \
    if (s24_err_ != cudaSuccess) {                          \
      return ::s24::CudaError(#expr, s24_err_);             \
    }                                                       \
  } while (0)

#define S24_RETURN_IF_ERROR(expr)                           \
  do {                                                      \
    ffi::Error s24_e_ = (expr);                             \
    if (!s24_e_.success()) return s24_e_;                   \
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

// The numpy / JAX name of a buffer's dtype, for error messages.
inline std::string FfiDtypeName(ffi::DataType t) {
  int dt, es;
  if (KernelDtype(t, &dt, &es)) return KernelDtypeName(dt);
  switch (t) {
    case ffi::DataType::F32:
      return "float32";
    case ffi::DataType::U8:
      return "uint8";
    default:
      return "dtype #" + std::to_string(static_cast<int>(t));
  }
}

inline bool CudaDtype(ffi::DataType t, cudaDataType* out) {
  switch (t) {
    case ffi::DataType::BF16:
      *out = CUDA_R_16BF;
      return true;
    case ffi::DataType::F16:
      *out = CUDA_R_16F;
      return true;
    case ffi::DataType::F8E4M3FN:
      *out = CUDA_R_8F_E4M3;
      return true;
    case ffi::DataType::F8E5M2:
      *out = CUDA_R_8F_E5M2;
      return true;
    case ffi::DataType::F32:
      *out = CUDA_R_32F;
      return true;
    default:
      return false;
  }
}

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
