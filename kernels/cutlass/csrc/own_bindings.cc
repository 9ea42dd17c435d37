// XLA FFI handlers of our own CUTLASS-format compressors (own_compress.cu):
//   * s24c_own_project  W (N, K) f32, mask (N, K) bool/uint8 ->
//                       W_s values (N, K/2) bf16, meta, W_s^T values (K, N/2) bf16, meta_t
//   * s24c_own_mvue     dZ (M, N) bf16, seed uint32[2] ->
//                       S(dZ^T) values (N, M/2) bf16, meta (MVUE along M);
//                       attribute block_groups (int64: 0, 32 or 64, the kernel's block)
//   * s24c_own_swiglu_grad_mvue  dA (M, F) bf16, h = [x | gate] (M, 2F) bf16, seed
//                       uint32[2] -> dh = [dA silu(gate), dA x silu'(gate)] (M, 2F) bf16,
//                       S(dh^T) values (2F, M/2) bf16, meta (MVUE along M), in one pass
// The outputs are what ops.compress (CUTLASS's compressor) gives for the
// dense pruned operands, byte for byte; every byte is written by the kernel.
// A host unit of its own (bindings.cc is another helper's territory too).

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ffi_util.h"
#include "own_compress.h"

namespace s24c {

static int64_t OwnMetaBytes(int64_t rows, int64_t cols) {
  return (rows + 63) / 64 * 64 * ((cols + 127) / 128 * 128) / 8;
}

static ffi::Error OwnShape(const char* what, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0 || rows % kOwnShapeAlign || cols % kOwnShapeAlign ||
      rows > kOwnMaxRows || cols > kOwnMaxRows || rows * cols / 4 >= (int64_t(1) << 32)) {
    return InvalidArg(std::string(what) + ": got " + std::to_string(rows) + " x " +
                      std::to_string(cols) + "; both axes must be positive multiples of 64 "
                      "(and rows * cols / 4 < 2^32): pad them, or use the cuSPARSELt or XLA path");
  }
  return ffi::Error::Success();
}

static ffi::Error OwnOut(const char* name, const ffi::AnyBuffer& b, ffi::DataType t,
                         std::initializer_list<int64_t> dims) {
  auto d = b.dimensions();
  bool ok = b.element_type() == t && d.size() == dims.size();
  size_t i = 0;
  for (int64_t x : dims) ok = ok && d[i++] == x;
  if (!ok) {
    std::string want;
    for (int64_t x : dims) want += (want.empty() ? "" : ", ") + std::to_string(x);
    return InvalidArg(std::string(name) + " must be " + DtypeName(t) + " (" + want + "), got " +
                      DtypeName(b.element_type()) + " " + DimsText(b));
  }
  if (!Aligned16(b.untyped_data())) return InvalidArg(std::string(name) + " must be 16-byte aligned");
  return ffi::Error::Success();
}

static ffi::Error OwnProjectImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer w,
                                 ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> values,
                                 ffi::Result<ffi::AnyBuffer> meta,
                                 ffi::Result<ffi::AnyBuffer> values_t,
                                 ffi::Result<ffi::AnyBuffer> meta_t) {
  auto wd = w.dimensions();
  if (w.element_type() != ffi::DataType::F32 || wd.size() != 2) {
    return InvalidArg("own_project: W must be 2-D float32 (the master weight), got " +
                      DtypeName(w.element_type()) + " " + DimsText(w));
  }
  const int64_t n = wd[0], k = wd[1];
  S24_RETURN_IF_ERROR(OwnShape("own_project: W (N, K)", n, k));
  auto md = mask.dimensions();
  if ((mask.element_type() != ffi::DataType::PRED && mask.element_type() != ffi::DataType::U8) ||
      md.size() != 2 || md[0] != n || md[1] != k) {
    return InvalidArg("own_project: the mask must be bool or uint8 of W's shape " + DimsText(w) +
                      ", got " + DtypeName(mask.element_type()) + " " + DimsText(mask));
  }
  if (!Aligned16(w.untyped_data()) || !Aligned16(mask.untyped_data())) {
    return InvalidArg("own_project: W and the mask must be 16-byte aligned");
  }
  S24_RETURN_IF_ERROR(OwnOut("own_project: values", *values, ffi::DataType::BF16, {n, k / 2}));
  S24_RETURN_IF_ERROR(OwnOut("own_project: meta", *meta, ffi::DataType::U8, {OwnMetaBytes(n, k)}));
  S24_RETURN_IF_ERROR(OwnOut("own_project: values_t", *values_t, ffi::DataType::BF16, {k, n / 2}));
  S24_RETURN_IF_ERROR(OwnOut("own_project: meta_t", *meta_t, ffi::DataType::U8, {OwnMetaBytes(k, n)}));
  DeviceScope scope(device);
  S24C_CUDA_CHECK(scope.status());
  S24C_CUDA_CHECK(LaunchOwnProject(stream, static_cast<const float*>(w.untyped_data()),
                                   static_cast<const uint8_t*>(mask.untyped_data()),
                                   values->untyped_data(), static_cast<uint8_t*>(meta->untyped_data()),
                                   values_t->untyped_data(),
                                   static_cast<uint8_t*>(meta_t->untyped_data()), n, k, false));
  return ffi::Error::Success();
}

static ffi::Error OwnMvueImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer dz,
                              ffi::AnyBuffer seed, ffi::Result<ffi::AnyBuffer> values,
                              ffi::Result<ffi::AnyBuffer> meta, int64_t block_groups) {
  if (block_groups != 0 && block_groups != 32 && block_groups != 64) {
    return InvalidArg("own_mvue: block_groups must be 0 (the kernel's choice), 32 or 64, got " +
                      std::to_string(block_groups));
  }
  auto dd = dz.dimensions();
  if (dz.element_type() != ffi::DataType::BF16 || dd.size() != 2) {
    return InvalidArg("own_mvue: dZ must be 2-D bfloat16 (M tokens, N features), got " +
                      DtypeName(dz.element_type()) + " " + DimsText(dz));
  }
  const int64_t m = dd[0], n = dd[1];
  S24_RETURN_IF_ERROR(OwnShape("own_mvue: dZ (M, N)", m, n));
  if (seed.element_type() != ffi::DataType::U32 || seed.element_count() != 2) {
    return InvalidArg("own_mvue: the seed must be uint32 of 2 words, got " +
                      DtypeName(seed.element_type()) + " " + DimsText(seed));
  }
  if (!Aligned16(dz.untyped_data())) return InvalidArg("own_mvue: dZ must be 16-byte aligned");
  S24_RETURN_IF_ERROR(OwnOut("own_mvue: values", *values, ffi::DataType::BF16, {n, m / 2}));
  S24_RETURN_IF_ERROR(OwnOut("own_mvue: meta", *meta, ffi::DataType::U8, {OwnMetaBytes(n, m)}));
  DeviceScope scope(device);
  S24C_CUDA_CHECK(scope.status());
  S24C_CUDA_CHECK(LaunchOwnMvue(stream, dz.untyped_data(),
                                static_cast<const uint32_t*>(seed.untyped_data()),
                                values->untyped_data(), static_cast<uint8_t*>(meta->untyped_data()),
                                m, n, static_cast<int>(block_groups), false));
  return ffi::Error::Success();
}

static ffi::Error OwnSwigluGradMvueImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer da,
                                        ffi::AnyBuffer h, ffi::AnyBuffer seed,
                                        ffi::Result<ffi::AnyBuffer> dh,
                                        ffi::Result<ffi::AnyBuffer> values,
                                        ffi::Result<ffi::AnyBuffer> meta) {
  auto dd = da.dimensions(), hd = h.dimensions();
  if (da.element_type() != ffi::DataType::BF16 || h.element_type() != ffi::DataType::BF16 ||
      dd.size() != 2 || hd.size() != 2 || hd[0] != dd[0] || hd[1] != 2 * dd[1]) {
    return InvalidArg("own_swiglu_grad_mvue: dA must be bfloat16 (M, F) and h = [x | gate] "
                      "bfloat16 (M, 2F), got " + DtypeName(da.element_type()) + " " + DimsText(da) +
                      " and " + DtypeName(h.element_type()) + " " + DimsText(h));
  }
  const int64_t m = dd[0], f = dd[1];
  // a block owns 64 features of each half: F itself a multiple of 64
  S24_RETURN_IF_ERROR(OwnShape("own_swiglu_grad_mvue: dA (M, F)", m, f));
  S24_RETURN_IF_ERROR(OwnShape("own_swiglu_grad_mvue: h (M, 2F)", m, 2 * f));
  if (seed.element_type() != ffi::DataType::U32 || seed.element_count() != 2) {
    return InvalidArg("own_swiglu_grad_mvue: the seed must be uint32 of 2 words, got " +
                      DtypeName(seed.element_type()) + " " + DimsText(seed));
  }
  if (!Aligned16(da.untyped_data()) || !Aligned16(h.untyped_data())) {
    return InvalidArg("own_swiglu_grad_mvue: dA and h must be 16-byte aligned");
  }
  S24_RETURN_IF_ERROR(OwnOut("own_swiglu_grad_mvue: dh", *dh, ffi::DataType::BF16, {m, 2 * f}));
  S24_RETURN_IF_ERROR(OwnOut("own_swiglu_grad_mvue: values", *values, ffi::DataType::BF16, {2 * f, m / 2}));
  S24_RETURN_IF_ERROR(OwnOut("own_swiglu_grad_mvue: meta", *meta, ffi::DataType::U8, {OwnMetaBytes(2 * f, m)}));
  DeviceScope scope(device);
  S24C_CUDA_CHECK(scope.status());
  S24C_CUDA_CHECK(LaunchOwnSwigluGradMvue(stream, da.untyped_data(), h.untyped_data(),
                                          dh->untyped_data(),
                                          static_cast<const uint32_t*>(seed.untyped_data()),
                                          values->untyped_data(),
                                          static_cast<uint8_t*>(meta->untyped_data()), m, f, false));
  return ffi::Error::Success();
}

}  // namespace s24c

S24C_DEFINE_HANDLER_SYMBOLS(s24c_own_project, s24c::OwnProjectImpl,
                            ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::DeviceOrdinal>()
                                .Arg<ffi::AnyBuffer>()
                                .Arg<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>());

S24C_DEFINE_HANDLER_SYMBOLS(s24c_own_mvue, s24c::OwnMvueImpl,
                            ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::DeviceOrdinal>()
                                .Arg<ffi::AnyBuffer>()
                                .Arg<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Attr<int64_t>("block_groups"));

S24C_DEFINE_HANDLER_SYMBOLS(s24c_own_swiglu_grad_mvue, s24c::OwnSwigluGradMvueImpl,
                            ffi::Ffi::Bind()
                                .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                .Ctx<ffi::DeviceOrdinal>()
                                .Arg<ffi::AnyBuffer>()
                                .Arg<ffi::AnyBuffer>()
                                .Arg<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>()
                                .Ret<ffi::AnyBuffer>());
