// Launches (or emulates on the host) our own CUTLASS-format compressors
// (own_compress.cuh). Includes no CUTLASS and no XLA header: a quick unit.
// Its C exports s24c_emulate_own_project / _mvue / _swiglu_grad_mvue run the
// kernels' code on the CPU (tests/test_cutlass_own_compress.py builds this
// unit alone into a small host library for them).

#include "own_compress.h"

#include "own_act_grad.cuh"
#include "own_compress.cuh"

namespace s24c {

// Kernel K on args (K::Grid of args.m, args.k), or its code on the host (emulate).
template <typename K>
static cudaError_t RunOwn(cudaStream_t stream, const typename K::Args& args, bool emulate) {
  if (emulate) {
    OwnEmulate<K>(args);
    return cudaSuccess;
  }
  OwnKernel<K><<<K::Grid(args.m, args.k), kOwnThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

static bool OwnShapeOk(int64_t rows, int64_t cols) {
  return rows > 0 && cols > 0 && rows % kOwnShapeAlign == 0 && cols % kOwnShapeAlign == 0 &&
         rows <= kOwnMaxRows && rows * cols / 4 < (int64_t(1) << 32);
}

cudaError_t LaunchOwnProject(cudaStream_t stream, const float* w, const uint8_t* mask,
                             void* values, uint8_t* meta, void* values_t, uint8_t* meta_t,
                             int64_t n, int64_t k, bool emulate) {
  if (!OwnShapeOk(n, k) || k > kOwnMaxRows) return cudaErrorInvalidValue;
  const OwnProject::Args args{w, mask, static_cast<uint32_t*>(values), meta,
                              static_cast<uint32_t*>(values_t), meta_t, n, k};
  return RunOwn<OwnProject>(stream, args, emulate);
}

cudaError_t LaunchOwnMvue(cudaStream_t stream, const void* dz, const uint32_t* seed,
                          void* values, uint8_t* meta, int64_t m, int64_t n, int block_groups,
                          bool emulate) {
  // A = dZ^T: n rows (features), m columns (tokens, the 2:4 axis)
  if (!OwnShapeOk(n, m) || (block_groups != 0 && block_groups != 32 && block_groups != 64)) {
    return cudaErrorInvalidValue;
  }
  const OwnMvueArgs args{static_cast<const uint32_t*>(dz), seed, static_cast<uint32_t*>(values), meta, n, m};
  if (block_groups == 64) return RunOwn<OwnMvueBlock<64>>(stream, args, emulate);
  return RunOwn<OwnMvueBlock<kOwnMvueBlockGroups>>(stream, args, emulate);
}

cudaError_t LaunchOwnSwigluGradMvue(cudaStream_t stream, const void* da, const void* h, void* dh,
                                    const uint32_t* seed, void* values, uint8_t* meta, int64_t m,
                                    int64_t f, bool emulate) {
  // A = dh^T: 2f rows (features of both halves), m columns (tokens, the 2:4 axis); the gate
  // half's rows start at f, on a 64-row tile (a block writes one tile of each half)
  if (f % kOwnShapeAlign != 0 || !OwnShapeOk(2 * f, m)) return cudaErrorInvalidValue;
  const OwnSwigluGradArgs args{static_cast<const uint32_t*>(da), static_cast<const uint32_t*>(h),
                               static_cast<uint32_t*>(dh), seed, static_cast<uint32_t*>(values),
                               meta, 2 * f, m};
  return RunOwn<OwnSwigluGradMvue>(stream, args, emulate);
}

}  // namespace s24c

extern "C" {

#define S24C_OWN_EXPORT __attribute__((visibility("default")))

// Host emulation (host pointers): 0, or -1 for a shape the kernels do not take.
S24C_OWN_EXPORT int s24c_emulate_own_project(const float* w, const uint8_t* mask, void* values,
                                             uint8_t* meta, void* values_t, uint8_t* meta_t,
                                             int64_t n, int64_t k) {
  return s24c::LaunchOwnProject(nullptr, w, mask, values, meta, values_t, meta_t, n, k, true) ==
                 cudaSuccess
             ? 0
             : -1;
}

S24C_OWN_EXPORT int s24c_emulate_own_mvue(const void* dz, const uint32_t* seed, void* values,
                                          uint8_t* meta, int64_t m, int64_t n, int block_groups) {
  return s24c::LaunchOwnMvue(nullptr, dz, seed, values, meta, m, n, block_groups, true) == cudaSuccess
             ? 0
             : -1;
}

S24C_OWN_EXPORT int s24c_emulate_own_swiglu_grad_mvue(const void* da, const void* h, void* dh,
                                                      const uint32_t* seed, void* values, uint8_t* meta,
                                                      int64_t m, int64_t f) {
  return s24c::LaunchOwnSwigluGradMvue(nullptr, da, h, dh, seed, values, meta, m, f, true) == cudaSuccess
             ? 0
             : -1;
}

}  // extern "C"
