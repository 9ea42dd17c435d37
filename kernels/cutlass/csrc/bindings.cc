// sparse24-jax: CUTLASS 3.x sm90 structured-sparse GEMMs for JAX through XLA FFI.
//
// A plain shared library (no Python ABI): Python loads it with ctypes and
// registers the handler symbols below with jax.ffi.register_ffi_target(...,
// platform="CUDA"). Built by `python -m sparse24_jax_kernels.cutlass.build`
// (README.md beside csrc says what is where).
//
// This unit binds them: operand checks, then the instance's (registry.cc) or
// the compressor's (compress.cu) launch; the XLA FFI handler symbols; plain C
// exports for ctypes (the instance table, buffer and workspace sizes).
//   * s24c_gemm      one product of a 2:4 linear (attribute `product`: 0 fwd,
//                    1 dx, 2 dw) with the instance named by `config`:
//                      fwd: values (N, K/2), meta, X (M, K)   -> Z  (M, N)  bf16
//                      dx : values (K, N/2), meta, dZ (M, N)  -> dX (M, K)  bf16
//                      dw : values (N, M/2), meta, X (M, K)   -> dW (N, K)  f32
//                    plus a uint8 workspace output sized by s24c_gemm_workspace_bytes.
//   * s24c_compress  CUTLASS's compressor: dense 2:4-pruned bf16 (rows, cols),
//                    2:4 along cols -> values (rows, cols/2) bf16, metadata uint8,
//                    workspace uint8.

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "compress.h"
#include "ffi_util.h"
#include "products.h"

namespace s24c {

// Multiples we ask of the problem (README "Shapes"). CUTLASS itself needs only
// TMA's 16-byte alignment (its can_implement) and pads the metadata to its
// (64, 128) atom (CompressedSizes counts the padding); we keep the sparse
// operand's rows (Mc) at 64 (whole metadata atoms), its 2:4 axis (Kc) at 64
// (GPT-2's 1600 is 12.5 x 128: the residue path is tested) and the dense
// operand's free axis (Nc) at 16 (8 bf16 / 4 float32 for TMA; 16 keeps both).
constexpr int64_t kMultM = 64, kMultK = 64, kMultN = 16;

static ffi::Error CheckMultiples(const char* what, int64_t mc, int64_t nc, int64_t kc) {
  if (mc % kMultM || kc % kMultK || nc % kMultN || mc <= 0 || nc <= 0 || kc <= 0) {
    return InvalidArg(std::string(what) + ": CUTLASS problem (Mc, Nc, Kc) = (" +
                      std::to_string(mc) + ", " + std::to_string(nc) + ", " + std::to_string(kc) +
                      ") needs Mc % 64 == 0 (sparse operand rows), Kc % 64 == 0 (its 2:4 axis) "
                      "and Nc % 16 == 0; pad the operands or use the cuSPARSELt or XLA path");
  }
  if (mc > INT32_MAX || nc > INT32_MAX || kc > INT32_MAX) {
    return InvalidArg(std::string(what) + ": extents must fit in int32");
  }
  return ffi::Error::Success();
}

static ffi::Error CheckMeta(const ffi::AnyBuffer& meta, int64_t rows, int64_t cols) {
  const CompressSizes s = CompressedSizes(static_cast<int>(rows), static_cast<int>(cols));
  if (meta.element_type() != ffi::DataType::U8 || meta.dimensions().size() != 1 ||
      static_cast<int64_t>(meta.element_count()) != s.meta_bytes) {
    return InvalidArg("metadata must be uint8 of shape (" + std::to_string(s.meta_bytes) +
                      ",) for a " + std::to_string(rows) + " x " + std::to_string(cols) +
                      " sparse operand, got " + DtypeName(meta.element_type()) + " " +
                      DimsText(meta) + " (make it with ops.compress)");
  }
  return ffi::Error::Success();
}

static ffi::Error Expect2D(const char* name, const ffi::AnyBuffer& b, ffi::DataType t,
                          int64_t r, int64_t c) {
  auto d = b.dimensions();
  if (b.element_type() != t || d.size() != 2 || d[0] != r || d[1] != c) {
    return InvalidArg(std::string(name) + " must be " + DtypeName(t) + " (" + std::to_string(r) +
                      ", " + std::to_string(c) + "), got " + DtypeName(b.element_type()) + " " +
                      DimsText(b));
  }
  if (!Aligned16(b.untyped_data())) return InvalidArg(std::string(name) + " must be 16-byte aligned");
  return ffi::Error::Success();
}

// CUTLASS's (Mc, Nc, Kc) of a product from its operand shapes, checked.
static ffi::Error ProductProblem(int64_t product, const ffi::AnyBuffer& values,
                                 const ffi::AnyBuffer& meta, const ffi::AnyBuffer& b,
                                 const ffi::AnyBuffer& d, GemmCall* call) {
  auto vd = values.dimensions();
  auto bd = b.dimensions();
  if (vd.size() != 2 || bd.size() != 2) {
    return InvalidArg("values and the dense operand must be 2-D, got " + DimsText(values) +
                      " and " + DimsText(b));
  }
  const int64_t rows = vd[0], cols = 2 * vd[1];  // the sparse operand, dense shape
  int64_t mc = rows, kc = cols, nc = 0;
  const char* what = "";
  switch (product) {
    case kFwd:  // W_s (N, K) @ X^T: b = X (M, K), d = Z (M, N)
      what = "fwd (Z = X @ W_s^T)";
      nc = bd[0];
      S24_RETURN_IF_ERROR(CheckMultiples(what, mc, nc, kc));
      S24_RETURN_IF_ERROR(Expect2D("fwd: X", b, ffi::DataType::BF16, nc, kc));
      S24_RETURN_IF_ERROR(Expect2D("fwd: Z", d, ffi::DataType::BF16, nc, mc));
      break;
    case kDx:  // W_s^T (K, N) @ dZ^T: b = dZ (M, N), d = dX (M, K)
      what = "dx (dX = dZ @ W_s)";
      nc = bd[0];
      S24_RETURN_IF_ERROR(CheckMultiples(what, mc, nc, kc));
      S24_RETURN_IF_ERROR(Expect2D("dx: dZ", b, ffi::DataType::BF16, nc, kc));
      S24_RETURN_IF_ERROR(Expect2D("dx: dX", d, ffi::DataType::BF16, nc, mc));
      break;
    case kDw:  // S(dZ^T) (N, M) @ X (M, K): b = X (M, K), d = dW (N, K)
      what = "dw (dW = S(dZ^T) @ X)";
      nc = bd[1];
      S24_RETURN_IF_ERROR(CheckMultiples(what, mc, nc, kc));
      S24_RETURN_IF_ERROR(Expect2D("dw: X", b, ffi::DataType::BF16, kc, nc));
      S24_RETURN_IF_ERROR(Expect2D("dw: dW", d, ffi::DataType::F32, mc, nc));
      break;
    default:
      return InvalidArg("product must be 0 (fwd), 1 (dx) or 2 (dw), got " +
                        std::to_string(product));
  }
  S24_RETURN_IF_ERROR(Expect2D("values", values, ffi::DataType::BF16, rows, cols / 2));
  S24_RETURN_IF_ERROR(CheckMeta(meta, rows, cols));
  if (!Aligned16(meta.untyped_data())) return InvalidArg("metadata must be 16-byte aligned");
  call->m = static_cast<int>(mc);
  call->n = static_cast<int>(nc);
  call->k = static_cast<int>(kc);
  return ffi::Error::Success();
}

static ffi::Error GemmImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer values,
                           ffi::AnyBuffer meta, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> d,
                           ffi::Result<ffi::AnyBuffer> workspace, int64_t product,
                           std::string_view config) {
  GemmCall call;
  S24_RETURN_IF_ERROR(ProductProblem(product, values, meta, b, *d, &call));
  const std::string name(config);
  const GemmInstance* inst = FindGemm(name.c_str(), static_cast<int>(product));
  if (inst == nullptr) {
    return InvalidArg("no instance '" + name + "' for product " + std::to_string(product) +
                      " in this build (ops.configs() lists them; rebuild after adding one)");
  }
  DeviceScope scope(device);
  S24C_CUDA_CHECK(scope.status());
  S24C_CUDA_CHECK(SmCount(device, &call.sm_count));
  call.device = device;
  call.stream = stream;
  call.a_values = values.untyped_data();
  call.a_meta = meta.untyped_data();
  call.b = b.untyped_data();
  call.d = d->untyped_data();
  call.workspace = workspace->untyped_data();
  call.workspace_bytes = workspace->size_bytes();
  const int s = inst->run(call);
  if (s != kOk) {
    if (s == kErrLaunch) S24C_CUDA_CHECK(cudaGetLastError());
    return ffi::Error::Internal(std::string("sparse24 CUTLASS: ") + name + " product " +
                                std::to_string(product) + ": " + StatusText(s) +
                                " (workspace " + std::to_string(call.workspace_bytes) +
                                " bytes, needs " + std::to_string(inst->workspace_bytes(call)) +
                                ")");
  }
  return ffi::Error::Success();
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
    return ffi::Error::Internal(std::string("sparse24 CUTLASS: compress: ") + StatusText(st));
  }
  return ffi::Error::Success();
}

}  // namespace s24c

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24c_gemm, s24c::GemmImpl,
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24c_compress, s24c::CompressImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

// Plain C exports for ctypes.
extern "C" {

#define S24C_EXPORT __attribute__((visibility("default")))

S24C_EXPORT int s24c_num_gemms(void) { return s24c::NumGemms(); }

// Instance i: its config name into name (buflen bytes) and 7 ints: product,
// tile m/n/k, cluster m/n, schedule (0 cooperative, 1 pingpong). 0, or -1.
S24C_EXPORT int s24c_gemm_info(int i, char* name, int buflen, int* info) {
  const s24c::GemmInstance* g = s24c::GemmAt(i);
  if (g == nullptr || buflen <= 0) return -1;
  std::strncpy(name, g->config, static_cast<size_t>(buflen) - 1);
  name[buflen - 1] = '\0';
  const int v[7] = {g->product, g->tile_m,    g->tile_n,  g->tile_k,
                    g->cluster_m, g->cluster_n, g->schedule};
  std::memcpy(info, v, sizeof(v));
  return 0;
}

// Workspace bytes of (config, product) for CUTLASS's (m, n, k); -1 when no
// such instance, -2 when CUTLASS cannot implement the problem. sm_count <= 0:
// the current device's (what the handler passes), or 0 without a GPU.
S24C_EXPORT int64_t s24c_gemm_workspace_bytes(const char* config, int product, int m, int n,
                                              int k, int sm_count) {
  const s24c::GemmInstance* g = s24c::FindGemm(config, product);
  if (g == nullptr) return -1;
  if (sm_count <= 0) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || s24c::SmCount(device, &sm_count) != cudaSuccess) {
      cudaGetLastError();  // no GPU here: clear the error, size for sm_count 0
      sm_count = 0;
    }
  }
  s24c::GemmCall c;
  c.m = m;
  c.n = n;
  c.k = k;
  c.sm_count = sm_count;
  if (g->can_implement(c) != 0) return -2;
  return static_cast<int64_t>(g->workspace_bytes(c));
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
