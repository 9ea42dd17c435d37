// Instantiates the fused activation-backward + MVUE kernels
// (act_grad_kernels.cuh) for every (activation, 16-bit dtype) and dispatches
// a call to one of them, launched or emulated on the host. Device code only:
// no XLA header (bindings.cc holds the handler).

#include "act_grad.h"
#include "act_grad_kernels.cuh"

namespace s24 {

template <typename K>
static cudaError_t Run(cudaStream_t stream, bool emulate, const typename K::Args& args) {
  if (emulate) {
    K::Emulate(args);
    return cudaSuccess;
  }
  ActGradMvueKernel<K><<<K::Grid(args.m, args.k), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

template <int DT>
static cudaError_t LaunchDt(int kind, cudaStream_t stream, const void* da, const void* z,
                            void* dz, const uint32_t* seed, uint8_t* out, int64_t tokens,
                            int64_t z_cols, bool emulate) {
  const auto* dw = static_cast<const uint32_t*>(da);
  const auto* zw = static_cast<const uint32_t*>(z);
  auto* dzw = static_cast<uint32_t*>(dz);
  switch (kind) {
    case kActGelu:
      return Run<GeluGradMvue<DT>>(stream, emulate, {dw, zw, dzw, seed, out, z_cols, tokens});
    case kActSwiglu:
      return Run<SwigluGradMvue<DT>>(stream, emulate, {dw, zw, dzw, seed, out, z_cols, tokens});
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchActGradMvue(int kind, cudaStream_t stream, int dt, const void* da,
                              const void* z, void* dz, const uint32_t* seed, uint8_t* out,
                              int64_t tokens, int64_t z_cols, bool emulate) {
  if (!ActGradTakes(kind, tokens, z_cols)) return cudaErrorInvalidValue;
  switch (dt) {
    case kBF16:
      return LaunchDt<kBF16>(kind, stream, da, z, dz, seed, out, tokens, z_cols, emulate);
    case kF16:
      return LaunchDt<kF16>(kind, stream, da, z, dz, seed, out, tokens, z_cols, emulate);
    default:
      return cudaErrorInvalidValue;  // 16-bit types only (the handler checks first)
  }
}

}  // namespace s24
