// sparse24-jax: CUTLASS 3.x sm90 structured-sparse GEMMs for JAX through XLA FFI.
//
// A plain shared library (no Python ABI): Python loads it with ctypes and
// registers the handler symbols below with jax.ffi.register_ffi_target(...,
// platform="CUDA"). Built by `python -m sparse24_jax_kernels.cutlass.build`
// (README.md beside csrc says what is where).
//
// This unit binds them: operand checks, then the instance's (registry.cc's
// table; gemm_ffi.h: the plumbing shared with the fused epilogues) or the
// compressor's (compress.cu) launch; the XLA FFI handler symbols; plain C
// exports for ctypes (the instance table, buffer and workspace sizes).
//   * s24c_gemm      one product of a 2:4 linear (attribute `product`: 0 fwd,
//                    1 dx, 2 dw) with the instance named by `config`:
//                      fwd: values (N, K/2), meta, X (M, K)   -> Z  (M, N)  bf16
//                      dx : values (K, N/2), meta, dZ (M, N)  -> dX (M, K)  bf16
//                      dw : values (N, M/2), meta, X (M, K)   -> dW (N, K)  f32
//                    plus a uint8 workspace output sized by s24c_gemm_workspace_bytes.
//   * s24c_gemm_acc  the weight gradient added to a running sum (product 3, dw_acc):
//                      values (N, M/2), meta, X (M, K), C (N, K) f32 -> dW = C + S(dZ^T) @ X
//                    (N, K) f32, and the workspace; ops.spmm_dw_acc aliases C to dW, so
//                    a gradient accumulation's sum is updated in place.
//   * s24c_compress  CUTLASS's compressor: dense 2:4-pruned bf16 (rows, cols),
//                    2:4 along cols -> values (rows, cols/2) bf16, metadata uint8,
//                    workspace uint8.

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "compress.h"
#include "ffi_util.h"
#include "gemm_ffi.h"
#include "products.h"

namespace s24c {

constexpr char kFallback[] = "use the cuSPARSELt or XLA path";

// The operands of each product in CUTLASS's terms (README "The three products").
static const ProblemForm kProductForms[kNumProducts] = {
    // fwd: W_s (N, K) @ X^T: b = X (M, K), d = Z (M, N)
    {"fwd (Z = X @ W_s^T)", "fwd: X", "fwd: Z", false, ffi::DataType::BF16, kFallback},
    // dx: W_s^T (K, N) @ dZ^T: b = dZ (M, N), d = dX (M, K)
    {"dx (dX = dZ @ W_s)", "dx: dZ", "dx: dX", false, ffi::DataType::BF16, kFallback},
    // dw: S(dZ^T) (N, M) @ X (M, K): b = X (M, K), d = dW (N, K)
    {"dw (dW = S(dZ^T) @ X)", "dw: X", "dw: dW", true, ffi::DataType::F32, kFallback},
};

static ffi::Error GemmImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer values,
                           ffi::AnyBuffer meta, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> d,
                           ffi::Result<ffi::AnyBuffer> workspace, int64_t product,
                           std::string_view config) {
  if (product < 0 || product >= kNumProducts) {
    return InvalidArg("product must be 0 (fwd), 1 (dx) or 2 (dw) (dw_acc runs on s24c_gemm_acc), got " +
                      std::to_string(product));
  }
  GemmCall call;
  S24_RETURN_IF_ERROR(CheckProblem(kProductForms[product], values, meta, b, *d, &call));
  const std::string name(config);
  const GemmInstance* inst = GemmRegistry::Find(name.c_str(), static_cast<int>(product));
  if (inst == nullptr) {
    return InvalidArg("no instance '" + name + "' for product " + std::to_string(product) +
                      " in this build (ops.configs() lists them; rebuild after adding one)");
  }
  return RunInstance(*inst, call, stream, device, values, meta, b, d, workspace,
                     name + " product " + std::to_string(product));
}

static const ProblemForm kDwAccForm = {"dw_acc (dW = C + S(dZ^T) @ X)", "dw_acc: X", "dw_acc: dW",
                                      true, ffi::DataType::F32, kFallback};

static ffi::Error GemmAccImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer values,
                              ffi::AnyBuffer meta, ffi::AnyBuffer b, ffi::AnyBuffer c,
                              ffi::Result<ffi::AnyBuffer> d, ffi::Result<ffi::AnyBuffer> workspace,
                              std::string_view config) {
  GemmCall call;
  S24_RETURN_IF_ERROR(CheckProblem(kDwAccForm, values, meta, b, *d, &call));
  // the running sum: dW's shape and type (CUTLASS reads it with D's layout)
  S24_RETURN_IF_ERROR(Expect2D("dw_acc: C (the running sum)", c, ffi::DataType::F32, call.m, call.n));
  const std::string name(config);
  const GemmInstance* inst = GemmRegistry::Find(name.c_str(), kDwAcc);
  if (inst == nullptr) {
    return InvalidArg("no dw_acc instance '" + name + "' in this build (ops.configs('dw_acc') "
                      "lists them; rebuild after adding one)");
  }
  call.c = c.untyped_data();
  return RunInstance(*inst, call, stream, device, values, meta, b, d, workspace,
                     name + " dw_acc");
}

static ffi::Error CompressImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer dense,
                               ffi::Result<ffi::AnyBuffer> values,
                               ffi::Result<ffi::AnyBuffer> meta,
                               ffi::Result<ffi::AnyBuffer> workspace) {
  auto dd = dense.dimensions();
  if (dense.element_type() != ffi::DataType::BF16 || dd.size() != 2) {
    return InvalidArg("compress takes a 2-D bfloat16 operand, got " +
                      DtypeName(dense.element_type()) + " " + DimsText(dense));
  }
  const int64_t rows = dd[0], cols = dd[1];
  if (rows % kMultM || cols % kMultK || rows <= 0 || cols <= 0 || rows > INT32_MAX ||
      cols > INT32_MAX) {
    return InvalidArg("compress: the sparse operand is " + std::to_string(rows) + " x " +
                      std::to_string(cols) + " (rows x 2:4 axis); rows must be a multiple of 64 "
                      "and the 2:4 axis a multiple of 64 (pad it)");
  }
  if (!Aligned16(dense.untyped_data())) return InvalidArg("input must be 16-byte aligned");
  S24_RETURN_IF_ERROR(Expect2D("values", *values, ffi::DataType::BF16, rows, cols / 2));
  S24_RETURN_IF_ERROR(CheckMeta(*meta, rows, cols));
  const CompressSizes s = CompressedSizes(static_cast<int>(rows), static_cast<int>(cols));
  if (static_cast<int64_t>(workspace->size_bytes()) < s.workspace_bytes) {
    return InvalidArg("compress workspace must hold " + std::to_string(s.workspace_bytes) +
                      " bytes");
  }
  DeviceScope scope(device);
  S24C_CUDA_CHECK(scope.status());
  int sm = 0;
  S24C_CUDA_CHECK(SmCount(device, &sm));
  // CUTLASS's compressor leaves padding untouched; clear the metadata so the
  // buffer is a function of the input alone.
  S24C_CUDA_CHECK(cudaMemsetAsync(meta->untyped_data(), 0, meta->size_bytes(), stream));
  const int st = LaunchCompress(stream, device, sm, dense.untyped_data(), static_cast<int>(rows),
                                static_cast<int>(cols), values->untyped_data(),
                                meta->untyped_data(), workspace->untyped_data());
  if (st != kOk) {
    if (st == kErrLaunch) S24C_CUDA_CHECK(cudaGetLastError());
    return ffi::Error::Internal(std::string(kLibrary) + ": compress: " + StatusText(st));
  }
  return ffi::Error::Success();
}

}  // namespace s24c

S24C_DEFINE_HANDLER_SYMBOLS(s24c_gemm, s24c::GemmImpl,
                            ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::DeviceOrdinal>()
                                .Arg<ffi::AnyBuffer>()
                                .Arg<ffi::AnyBuffer>()
                                .Arg<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Attr<int64_t>("product")
                                .Attr<std::string_view>("config"));

S24C_DEFINE_HANDLER_SYMBOLS(s24c_gemm_acc, s24c::GemmAccImpl,
                            ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::DeviceOrdinal>()
                                .Arg<ffi::AnyBuffer>()
                                .Arg<ffi::AnyBuffer>()
                                .Arg<ffi::AnyBuffer>()
                                .Arg<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Attr<std::string_view>("config"));

S24C_DEFINE_HANDLER_SYMBOLS(s24c_compress, s24c::CompressImpl,
                            ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::DeviceOrdinal>()
                                .Arg<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>());

// Plain C exports for ctypes.
extern "C" {

S24C_EXPORT int s24c_num_gemms(void) { return s24c::GemmRegistry::Size(); }

// Instance i: its config name and 7 ints, the first its product (gemm_ffi.h's
// InstanceInfo). 0, or -1.
S24C_EXPORT int s24c_gemm_info(int i, char* name, int buflen, int* info) {
  return s24c::InstanceInfo<s24c::GemmCall>(i, name, buflen, info);
}

// Workspace bytes of (config, product; 3: dw_acc) for CUTLASS's (m, n, k); -1 when no
// such instance, -2 when CUTLASS cannot implement the problem. sm_count <= 0:
// the current device's (what the handler passes), or 0 without a GPU.
S24C_EXPORT int64_t s24c_gemm_workspace_bytes(const char* config, int product, int m, int n,
                                              int k, int sm_count) {
  return s24c::InstanceWorkspace<s24c::GemmCall>(config, product, m, n, k, sm_count);
}

// Buffer sizes of CUTLASS's compressed rows x cols operand: out[0] value
// bytes, out[1] metadata bytes, out[2] compressor workspace bytes.
S24C_EXPORT int s24c_compressed_sizes(int rows, int cols, int64_t* out) {
  if (rows <= 0 || cols <= 0) return -1;
  const s24c::CompressSizes s = s24c::CompressedSizes(rows, cols);
  out[0] = s.value_bytes;
  out[1] = s.meta_bytes;
  out[2] = s.workspace_bytes;
  return 0;
}

}  // extern "C"
