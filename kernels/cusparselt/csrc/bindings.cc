// sparse24-jax: 2:4 sparse tensor-core GEMMs for JAX through XLA FFI + cuSPARSELt.
//
// A plain shared library (no Python ABI): Python loads it with ctypes and
// registers the handler symbols below with jax.ffi.register_ffi_target(...,
// platform="CUDA"). Built by `python -m sparse24_jax_kernels.cusparselt.build`
// from the units of this directory (README.md beside it says what is where).
//
// This unit binds them: the compression and projection handlers (operand
// checks, then compress.cu's or project.cu's launch), the XLA FFI handler
// symbols, and plain C exports.
//   * s24_spmm            D = A_sparse @ op(B): cuSPARSELt matmul, A given in
//                         cuSPARSELt's compressed 2:4 format (a uint8 buffer; its
//                         element type comes in the a_dtype attribute, B's from
//                         its buffer, so fp8 A and B may differ). Plan cache keyed
//                         by (device, m, n, k, A/B/D dtypes, layouts); algorithm
//                         search once per key, never under CUDA-graph capture
//                         (spmm.cc).
//   * s24_compress        our fused kernel writing cuSPARSELt's compressed format
//                         of a 2:4 matrix A (or of the transpose of the input).
//   * s24_compress_masked the same with a mask applied first (prune + compress).
//   * s24_mvue_compress   MVUE 2:4 (unbiased random pruning) + compress, with a
//                         counter-based RNG seeded from a uint32[2] operand.
//   * s24_project_compress the weight side in one pass: the float32 master
//                         weight projected (mask, or beta * soft threshold),
//                         rounded to 16 bits and compressed, with W_s^T's buffer
//                         or the dense W_s (project.cu).
//   * s24_act_grad_mvue   the FFN's activation backward (gelu, swiglu) fused with
//                         the MVUE + compression of its result (act_grad.cu).
//   * s24_lib_compress    cuSPARSELt's own cusparseLtSpMMACompress2, for tests.
// A new kernel family adds its unit (a .cu with its launch), a handler here
// (operand checks + launch) and its symbol below.

#include <cuda_runtime.h>
#include <cusparseLt.h>

#include <cstdint>
#include <optional>
#include <string>

#include "act_grad.h"
#include "compress.h"
#include "ffi_util.h"
#include "layout.cuh"
#include "project.h"
#include "spmm.h"

namespace s24 {

// ---------------------------------------------------------------------------
// Compression handlers
// ---------------------------------------------------------------------------

// Validates the operands of a compression and returns A's (m, k).
static ffi::Error CheckCompress(const ffi::AnyBuffer& src, const ffi::AnyBuffer& out,
                                bool trans, int* dt, int64_t* m, int64_t* k) {
  int es = 0;
  if (!KernelDtype(src.element_type(), dt, &es)) {
    return InvalidArg("compression supports bfloat16, float16, float8_e4m3fn and float8_e5m2 "
                      "inputs, got " + DtypeName(src.element_type()));
  }
  auto d = src.dimensions();
  if (d.size() != 2) return InvalidArg("compression input must be 2-D, got " + DimsText(src));
  *m = trans ? d[1] : d[0];
  *k = trans ? d[0] : d[1];
  const int64_t m_mult = CompressRowMultiple(es);
  if (*k % 32 != 0 || *m % m_mult != 0) {
    return InvalidArg("compressed operand A is " + std::to_string(*m) + " x " +
                      std::to_string(*k) + " (rows x 2:4 axis): the 2:4 axis must be a multiple "
                      "of 32 and the rows a multiple of " + std::to_string(m_mult) +
                      " (pad, or use backend='xla' or 'triton')");
  }
  if (*m / kTileRows >= 65535) return InvalidArg("compressed operand has too many rows");
  if (out.element_type() != ffi::DataType::U8 || out.dimensions().size() != 1 ||
      static_cast<int64_t>(out.element_count()) != CompressedBytes(*m, *k, es)) {
    return InvalidArg("compressed output must be uint8 of shape (" +
                      std::to_string(CompressedBytes(*m, *k, es)) + ",), got " + DimsText(out));
  }
  if (!Aligned16(src.untyped_data()) || !Aligned16(out.untyped_data())) {
    return InvalidArg("buffers must be 16-byte aligned");
  }
  return ffi::Error::Success();
}

static ffi::Error CompressImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer src,
                               ffi::Result<ffi::AnyBuffer> out, int64_t transpose) {
  int dt;
  int64_t m, k;
  S24_RETURN_IF_ERROR(CheckCompress(src, *out, transpose != 0, &dt, &m, &k));
  if (m == 0 || k == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  S24_CUDA_CHECK(LaunchCompress(kModePlain, stream, dt, transpose != 0, src.untyped_data(),
                                nullptr, nullptr, static_cast<uint8_t*>(out->untyped_data()), m,
                                k, false));
  return ffi::Error::Success();
}

static ffi::Error CompressMaskedImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer src,
                                     ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> out,
                                     int64_t transpose) {
  int dt;
  int64_t m, k;
  S24_RETURN_IF_ERROR(CheckCompress(src, *out, transpose != 0, &dt, &m, &k));
  const auto mt = mask.element_type();
  if (!(mt == ffi::DataType::PRED || mt == ffi::DataType::U8 || mt == ffi::DataType::S8) ||
      mask.dimensions().size() != 2 || mask.dimensions()[0] != src.dimensions()[0] ||
      mask.dimensions()[1] != src.dimensions()[1]) {
    return InvalidArg("mask must be bool (or uint8) with the input's shape " + DimsText(src) +
                      ", got " + DimsText(mask));
  }
  if (!Aligned16(mask.untyped_data())) return InvalidArg("mask must be 16-byte aligned");
  if (m == 0 || k == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  S24_CUDA_CHECK(LaunchCompress(kModeMask, stream, dt, transpose != 0, src.untyped_data(),
                                static_cast<const uint8_t*>(mask.untyped_data()), nullptr,
                                static_cast<uint8_t*>(out->untyped_data()), m, k, false));
  return ffi::Error::Success();
}

static ffi::Error MvueCompressImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer src,
                                   ffi::AnyBuffer seed, ffi::Result<ffi::AnyBuffer> out,
                                   int64_t transpose) {
  int dt;
  int64_t m, k;
  S24_RETURN_IF_ERROR(CheckCompress(src, *out, transpose != 0, &dt, &m, &k));
  if (seed.element_type() != ffi::DataType::U32 || seed.element_count() < 2) {
    return InvalidArg("seed must be uint32 with at least 2 elements, got " + DimsText(seed));
  }
  if (m * (k / 4) > 0xFFFFFFFFll) {
    return InvalidArg("MVUE of a " + std::to_string(m) + " x " + std::to_string(k) +
                      " matrix: more than 2^32 groups (the RNG counter is 32-bit); split the "
                      "tokens into micro-batches");
  }
  if (m == 0 || k == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  S24_CUDA_CHECK(LaunchCompress(kModeMvue, stream, dt, transpose != 0, src.untyped_data(),
                                nullptr, static_cast<const uint32_t*>(seed.untyped_data()),
                                static_cast<uint8_t*>(out->untyped_data()), m, k, false));
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// The weight side in one pass (project.cu)
// ---------------------------------------------------------------------------

// One compressed output of s24_project_compress: uint8, the buffer of an m x k
// 16-bit matrix.
static ffi::Error CheckProjectOut(const ffi::AnyBuffer& out, int64_t m, int64_t k,
                                  const char* what) {
  const int64_t want = CompressedBytes(m, k, 2);
  if (out.element_type() != ffi::DataType::U8 || out.dimensions().size() != 1 ||
      static_cast<int64_t>(out.element_count()) != want) {
    return InvalidArg(std::string(what) + " must be uint8 of shape (" + std::to_string(want) +
                      ",), got " + DtypeName(out.element_type()) + " " + DimsText(out));
  }
  if (!Aligned16(out.untyped_data())) return InvalidArg("buffers must be 16-byte aligned");
  return ffi::Error::Success();
}

// W (N, K) float32 and `aux` (mode kProjectMask: the mask; kProjectSoft: beta)
// in; W_s compressed in `out`; `second`: W_s^T compressed (mask mode, optional)
// or the dense W_s in `dtype` (soft mode, required).
static ffi::Error ProjectImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer w,
                              ffi::AnyBuffer aux, ffi::Result<ffi::AnyBuffer> out,
                              std::optional<ffi::Result<ffi::AnyBuffer>> second, int64_t mode,
                              int64_t dtype) {
  if (w.element_type() != ffi::DataType::F32 || w.dimensions().size() != 2) {
    return InvalidArg("project_compress reads the float32 master weight (N, K), got " +
                      DtypeName(w.element_type()) + " " + DimsText(w) +
                      ": pass it in float32, or project it and call compress");
  }
  const int64_t n = w.dimensions()[0], k = w.dimensions()[1];
  if (n % kProjectAlign != 0 || k % kProjectAlign != 0 || n > kProjectMaxRows) {
    return InvalidArg("project_compress takes N and K multiples of " +
                      std::to_string(kProjectAlign) + " (N at most " +
                      std::to_string(kProjectMaxRows) + "), got N=" + std::to_string(n) +
                      ", K=" + std::to_string(k) + ": pad the layer's features, or project the "
                      "weight and call compress");
  }
  if (dtype != kBF16 && dtype != kF16) {
    return InvalidArg("project_compress writes bfloat16 (dtype 0) or float16 (1), got dtype " +
                      std::to_string(dtype) + ": for fp8, project the weight and call compress");
  }
  if (!Aligned16(w.untyped_data())) return InvalidArg("buffers must be 16-byte aligned");
  S24_RETURN_IF_ERROR(CheckProjectOut(*out, n, k, "W_s's compressed output"));
  void* out2 = nullptr;
  if (mode == kProjectMask) {
    const auto mt = aux.element_type();
    if (!(mt == ffi::DataType::PRED || mt == ffi::DataType::U8 || mt == ffi::DataType::S8) ||
        aux.dimensions().size() != 2 || aux.dimensions()[0] != n || aux.dimensions()[1] != k) {
      return InvalidArg("mask must be bool (or uint8) with the weight's shape " + DimsText(w) +
                        ", got " + DtypeName(mt) + " " + DimsText(aux));
    }
    if (!Aligned16(aux.untyped_data())) return InvalidArg("mask must be 16-byte aligned");
    if (second) {
      S24_RETURN_IF_ERROR(CheckProjectOut(**second, k, n, "W_s^T's compressed output"));
      out2 = (*second)->untyped_data();
    }
  } else if (mode == kProjectSoft) {
    if (aux.element_type() != ffi::DataType::F32 || aux.element_count() != 1) {
      return InvalidArg("beta must be one float32, got " + DtypeName(aux.element_type()) +
                        " " + DimsText(aux) + ": pass beta.astype(float32).reshape(1)");
    }
    const ffi::DataType want = dtype == kBF16 ? ffi::DataType::BF16 : ffi::DataType::F16;
    if (!second || (*second)->element_type() != want ||
        (*second)->dimensions().size() != 2 || (*second)->dimensions()[0] != n ||
        (*second)->dimensions()[1] != k) {
      return InvalidArg("the soft threshold also writes the dense W_s: the call's second "
                        "output must be " + std::string(KernelDtypeName(static_cast<int>(dtype))) +
                        " " + DimsText(w) +
                        (second ? ", got " + DtypeName((*second)->element_type()) + " " +
                                      DimsText(**second)
                                : std::string(", got none")));
    }
    if (!Aligned16((*second)->untyped_data())) return InvalidArg("buffers must be 16-byte aligned");
    out2 = (*second)->untyped_data();
  } else {
    return InvalidArg("mode must be 0 (mask) or 1 (soft threshold), got " + std::to_string(mode));
  }
  if (n == 0 || k == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  const bool soft = mode == kProjectSoft;
  S24_CUDA_CHECK(LaunchProject(
      static_cast<int>(mode), stream, static_cast<int>(dtype),
      static_cast<const float*>(w.untyped_data()),
      soft ? nullptr : static_cast<const uint8_t*>(aux.untyped_data()),
      soft ? static_cast<const float*>(aux.untyped_data()) : nullptr,
      static_cast<uint8_t*>(out->untyped_data()), soft ? nullptr : static_cast<uint8_t*>(out2),
      soft ? out2 : nullptr, n, k, false));
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// Fused activation backward + MVUE (act_grad.cu)
// ---------------------------------------------------------------------------

static const char* ActKindName(int64_t kind) {
  return kind == kActGelu ? "gelu" : (kind == kActSwiglu ? "swiglu" : "?");
}

// dA (M, H) and z (M, H) for gelu; dA (M, F) and z = [x | gate] (M, 2F) for
// swiglu. Outputs dz (z's shape and dtype) and the compressed S_z(dz^T).
static ffi::Error ActGradMvueImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer da,
                                  ffi::AnyBuffer z, ffi::AnyBuffer seed,
                                  ffi::Result<ffi::AnyBuffer> dz,
                                  ffi::Result<ffi::AnyBuffer> out, int64_t kind) {
  if (kind < 0 || kind >= kNumActKinds) {
    return InvalidArg("activation-gradient kind " + std::to_string(kind) +
                      " unknown (0 gelu, 1 swiglu)");
  }
  int dt = -1, es = 0;
  if (!KernelDtype(z.element_type(), &dt, &es) || es != 2 ||
      da.element_type() != z.element_type() || dz->element_type() != z.element_type()) {
    return InvalidArg(std::string("activation gradient + MVUE needs dA, z and dz all bfloat16 or "
                                  "all float16, got dA ") + DtypeName(da.element_type()) +
                      ", z " + DtypeName(z.element_type()));
  }
  auto zd = z.dimensions(), dd = da.dimensions(), od = dz->dimensions();
  if (zd.size() != 2 || dd.size() != 2 || od.size() != 2) {
    return InvalidArg("activation gradient + MVUE takes 2-D (tokens, features) arrays, got dA " +
                      DimsText(da) + ", z " + DimsText(z));
  }
  const int64_t tokens = zd[0], cols = zd[1];
  const int64_t da_cols = kind == kActSwiglu ? cols / 2 : cols;
  if (dd[0] != tokens || dd[1] != da_cols || (kind == kActSwiglu && cols % 2) || od[0] != tokens ||
      od[1] != cols) {
    return InvalidArg(std::string(ActKindName(kind)) + ": dA " + DimsText(da) + " and dz " +
                      DimsText(*dz) + " do not match z " + DimsText(z) +
                      (kind == kActSwiglu ? " (dA is (M, F), z and dz (M, 2F))" : " (all (M, H))"));
  }
  if (!ActGradTakes(static_cast<int>(kind), tokens, cols)) {
    return InvalidArg(std::string(ActKindName(kind)) + " with z " + DimsText(z) +
                      ": the tokens must be a multiple of 64 (pad them) and the features a "
                      "multiple of 64 (" + (kind == kActSwiglu ? "F, each half" : "H") + ")");
  }
  if (cols / kTileRows >= 65535) return InvalidArg("activation gradient: too many features");
  if (cols * (tokens / 4) > 0xFFFFFFFFll) {
    return InvalidArg("MVUE of a " + std::to_string(cols) + " x " + std::to_string(tokens) +
                      " matrix: more than 2^32 groups (the RNG counter is 32-bit); split the "
                      "tokens into micro-batches");
  }
  if (seed.element_type() != ffi::DataType::U32 || seed.element_count() < 2) {
    return InvalidArg("seed must be uint32 with at least 2 elements, got " + DimsText(seed));
  }
  if (out->element_type() != ffi::DataType::U8 || out->dimensions().size() != 1 ||
      static_cast<int64_t>(out->element_count()) != CompressedBytes(cols, tokens, 2)) {
    return InvalidArg("compressed output must be uint8 of shape (" +
                      std::to_string(CompressedBytes(cols, tokens, 2)) + ",), got " +
                      DimsText(*out));
  }
  if (!Aligned16(da.untyped_data()) || !Aligned16(z.untyped_data()) ||
      !Aligned16(dz->untyped_data()) || !Aligned16(out->untyped_data())) {
    return InvalidArg("buffers must be 16-byte aligned");
  }
  if (tokens == 0 || cols == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  S24_CUDA_CHECK(LaunchActGradMvue(static_cast<int>(kind), stream, dt, da.untyped_data(),
                                   z.untyped_data(), dz->untyped_data(),
                                   static_cast<const uint32_t*>(seed.untyped_data()),
                                   static_cast<uint8_t*>(out->untyped_data()), tokens, cols,
                                   false));
  return ffi::Error::Success();
}

}  // namespace s24

// ---------------------------------------------------------------------------
// Exported symbols
// ---------------------------------------------------------------------------

#define S24_SPMM_BINDING                          \
  ffi::Ffi::Bind()                                \
      .Ctx<ffi::PlatformStream<cudaStream_t>>()   \
      .Ctx<ffi::DeviceOrdinal>()                  \
      .Arg<ffi::AnyBuffer>()                      \
      .Arg<ffi::AnyBuffer>()                      \
      .Ret<ffi::AnyBuffer>()                      \
      .Ret<ffi::AnyBuffer>()                      \
      .Attr<int64_t>("m")                         \
      .Attr<int64_t>("k")                         \
      .Attr<int64_t>("transpose_b")               \
      .Attr<int64_t>("d_col_major")               \
      .Attr<int64_t>("a_dtype")                   \
      .Attr<float>("alpha")

// The default: XLA runs it as a plain custom call (never inside its CUDA graphs).
XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_spmm, s24::SpmmImpl, S24_SPMM_BINDING);

// Experimental (SPARSE24_CUSPARSELT_CMD_BUFFER=1): may be captured into XLA's
// command buffers; under capture no search runs (the default algorithm is
// used for keys not searched before).
XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_spmm_graph, s24::SpmmImpl, S24_SPMM_BINDING,
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_compress, s24::CompressImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_compress_masked, s24::CompressMaskedImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_mvue_compress, s24::MvueCompressImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_project_compress, s24::ProjectImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .OptionalRet<ffi::AnyBuffer>()
                                  .Attr<int64_t>("mode")
                                  .Attr<int64_t>("dtype"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_act_grad_mvue, s24::ActGradMvueImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24_lib_compress, s24::LibCompressImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

// Plain C diagnostics for ctypes.
extern "C" {

// cuSPARSELt's version as major*1000 + minor*100 + patch, or -1.
__attribute__((visibility("default"))) int s24_cusparselt_version(void) {
  int major = 0, minor = 0, patch = 0;
  if (cusparseLtGetProperty(MAJOR_VERSION, &major) != CUSPARSE_STATUS_SUCCESS ||
      cusparseLtGetProperty(MINOR_VERSION, &minor) != CUSPARSE_STATUS_SUCCESS ||
      cusparseLtGetProperty(PATCH_LEVEL, &patch) != CUSPARSE_STATUS_SUCCESS) {
    return -1;
  }
  return major * 1000 + minor * 100 + patch;
}

// Plans built, algorithm searches run, matmuls launched (all devices).
__attribute__((visibility("default"))) int64_t s24_num_plans(void) {
  return s24::NumPlans();
}
__attribute__((visibility("default"))) int64_t s24_num_searches(void) {
  return s24::NumSearches();
}
__attribute__((visibility("default"))) int64_t s24_num_matmuls(void) {
  return s24::NumMatmuls();
}

// Host emulation of the compression kernels (the same code, run block by
// block on the CPU) for tests without a GPU. dt: 0 bf16, 1 f16, 2 e4m3, 3 e5m2;
// mode: 0 plain, 1 masked, 2 MVUE; src (and mask) as the kernels take them,
// 16-byte aligned; out must hold s24_compressed_bytes(m, k, es) bytes.
// Returns 0, or -1 for shapes the kernels do not take.
__attribute__((visibility("default"))) int s24_emulate_compress(int dt, int mode, int trans,
                                                                const void* src,
                                                                const uint8_t* mask,
                                                                const uint32_t* seed,
                                                                uint8_t* out, int64_t m,
                                                                int64_t k) {
  if (dt < 0 || dt >= s24::kNumDtypes || mode < 0 || mode > 2 || m < 0 || k < 0) return -1;
  // as CheckCompress
  const int64_t m_mult = s24::CompressRowMultiple(s24::KernelDtypeBytes(dt));
  if (k % 32 != 0 || m % m_mult != 0) return -1;
  if (m == 0 || k == 0) return 0;
  // each mode reads only its own operands (the kernels take the others as null)
  const uint8_t* mk = mode == s24::kModeMask ? mask : nullptr;
  const uint32_t* sd = mode == s24::kModeMvue ? seed : nullptr;
  const cudaError_t e =
      s24::LaunchCompress(mode, nullptr, dt, trans != 0, src, mk, sd, out, m, k, /*emulate=*/true);
  return e == cudaSuccess ? 0 : -1;
}

// Host emulation of the one-pass projection (project.cu), as the kernel runs
// it. mode: 0 mask, 1 soft threshold; dt: 0 bf16, 1 f16; w: (n, k) float32;
// aux: the mask's (n, k) bytes (mode 0) or beta, one float32 (mode 1); out:
// s24_compressed_bytes(n, k, 2) bytes; out2: W_s^T's buffer
// (s24_compressed_bytes(k, n, 2) bytes) or null (mode 0), the dense (n, k)
// 16-bit W_s (mode 1). 16-byte aligned. Returns 0, or -1 for what the kernel
// does not take (as ProjectImpl).
__attribute__((visibility("default"))) int s24_emulate_project(int mode, int dt, const float* w,
                                                               const void* aux, uint8_t* out,
                                                               void* out2, int64_t n, int64_t k) {
  if ((mode != s24::kProjectMask && mode != s24::kProjectSoft) ||
      (dt != s24::kBF16 && dt != s24::kF16) || n < 0 || k < 0 || n % s24::kProjectAlign != 0 ||
      k % s24::kProjectAlign != 0 || n > s24::kProjectMaxRows ||
      (mode == s24::kProjectSoft && out2 == nullptr)) {
    return -1;
  }
  const bool soft = mode == s24::kProjectSoft;
  const cudaError_t e = s24::LaunchProject(
      mode, nullptr, dt, w, soft ? nullptr : static_cast<const uint8_t*>(aux),
      soft ? static_cast<const float*>(aux) : nullptr, out,
      soft ? nullptr : static_cast<uint8_t*>(out2), soft ? out2 : nullptr, n, k, /*emulate=*/true);
  return e == cudaSuccess ? 0 : -1;
}

// Host emulation of the fused activation backward + MVUE kernels: kind 0
// gelu, 1 swiglu; dt 0 bf16, 1 f16; da (tokens, z_cols or z_cols / 2), z
// and dz (tokens, z_cols), out s24_compressed_bytes(z_cols, tokens, 2)
// bytes, all 16-byte aligned. Returns 0, or -1 for what the kernels do not take.
__attribute__((visibility("default"))) int s24_emulate_act_grad_mvue(
    int kind, int dt, const void* da, const void* z, void* dz, const uint32_t* seed, uint8_t* out,
    int64_t tokens, int64_t z_cols) {
  if (kind < 0 || kind >= s24::kNumActKinds || (dt != s24::kBF16 && dt != s24::kF16)) return -1;
  if (tokens < 0 || z_cols < 0 || !s24::ActGradTakes(kind, tokens, z_cols)) return -1;
  if (z_cols * (tokens / 4) > 0xFFFFFFFFll) return -1;
  if (tokens == 0 || z_cols == 0) return 0;
  const cudaError_t e = s24::LaunchActGradMvue(kind, nullptr, dt, da, z, dz, seed, out, tokens,
                                               z_cols, /*emulate=*/true);
  return e == cudaSuccess ? 0 : -1;
}

// Bytes of the compressed buffer for an m x k matrix of es-byte elements.
__attribute__((visibility("default"))) int64_t s24_compressed_bytes(int64_t m, int64_t k,
                                                                      int es) {
  return s24::CompressedBytes(m, k, es);
}

}  // extern "C"
