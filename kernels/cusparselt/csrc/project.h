// The weight side in one pass (issue #17, item 3): the host interface of
// project.cu, plain C++ for bindings.cc. Once per optimizer step and layer the
// backend needs the compressed W_s (and W_s^T, or the dense W_s) of the
// projected float32 master weight; done in steps that is an XLA pass
// (project + cast: reads 4 B + 1 B, writes 2 B per element) and one or two
// compressions (each reads those 2 B again). One kernel reads W once.

#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace s24 {

// What the projection of W is (emulation.py's PROJECT_MODES mirrors them).
//   kProjectMask: W_s = where(mask, W, +0) rounded to the output dtype (SR-STE,
//     STE); writes W_s compressed and, when asked, W_s^T compressed.
//   kProjectSoft: W_s = beta * soft_threshold_24(W) along K, in float32, rounded
//     (S-STE); writes W_s compressed and the dense W_s (W_s^T is not 2:4).
enum : int { kProjectMask = 0, kProjectSoft = 1 };

// The shapes it takes: N and K multiples of this (what the backend requires);
// the grid's y dimension counts 128-row tiles, at most 65535 of them.
constexpr int kProjectAlign = 64;
constexpr int64_t kProjectMaxRows = 65535ll * 128;

// W (n, k) float32 row-major; dt: kBF16 or kF16 (16-bit outputs only).
// kProjectMask: `mask` (n, k) bytes (non-zero keeps); `out_t` (W_s^T's buffer)
//   or null for W_s alone; `dense` unused.
// kProjectSoft: `beta` one float32 (device memory); `dense` (n, k) in dt;
//   `out_t` must be null.
// `out`: CompressedBytes(n, k, 2) bytes, `out_t`: CompressedBytes(k, n, 2).
// Every pointer 16-byte aligned except beta; the caller has checked shapes,
// dt and mode. emulate = true runs the kernel's code on the host (host
// pointers, stream unused): the CPU tests' view of it.
cudaError_t LaunchProject(int mode, cudaStream_t stream, int dt, const float* w,
                          const uint8_t* mask, const float* beta, uint8_t* out, uint8_t* out_t,
                          void* dense, int64_t n, int64_t k, bool emulate);

}  // namespace s24
