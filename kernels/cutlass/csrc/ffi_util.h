// What the FFI unit (bindings.cc) needs beside the handlers: error helpers,
// the device scope, shape text, the SM count. Host-only C++.

#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace s24c {

inline ffi::Error CudaError(const char* what, cudaError_t e) {
  return ffi::Error::Internal(std::string("sparse24 CUTLASS: ") + what + " failed: " +
                              cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

inline ffi::Error InvalidArg(const std::string& msg) {
  return ffi::Error::InvalidArgument("sparse24 CUTLASS: " + msg);
}

#define S24C_CUDA_CHECK(expr)                \
  do {                                       \
    cudaError_t s24c_err_ = (expr);          \
    if (s24c_err_ != cudaSuccess) {          \
      return ::s24c::CudaError(#expr, s24c_err_); \
    }                                        \
  } while (0)

#define S24C_RETURN_IF_ERROR(expr)          \
  do {                                       \
    ffi::Error s24c_e_ = (expr);             \
    if (!s24c_e_.success()) return s24c_e_;  \
  } while (0)

// Makes `device` current for the scope (normally it already is) and restores
// the previous one afterwards.
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

inline std::string DtypeName(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::BF16:
      return "bfloat16";
    case ffi::DataType::F16:
      return "float16";
    case ffi::DataType::F32:
      return "float32";
    case ffi::DataType::U8:
      return "uint8";
    default:
      return "dtype #" + std::to_string(static_cast<int>(t));
  }
}

inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

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
