// The compression kernels' host interface: plain C++, for the units that
// launch them (bindings.cc) without compiling device code. The kernels are in
// compress_kernels.cuh, instantiated and dispatched by compress.cu.

#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace s24 {

// What a compression does to A before it writes the compressed format
// (emulation.py's MODES mirrors them).
enum : int { kModePlain = 0, kModeMask = 1, kModeMvue = 2 };

// Rows of A per block (one metadata row block): the grid's y dimension
// (at most 65535) counts them.
constexpr int kTileRows = 64;

// The rows of A must be a multiple of this (and the 2:4 axis of 32): every
// 1-byte (fp8) type needs 32 (docs/algorithms.md, section 7).
inline int64_t CompressRowMultiple(int es) { return es == 2 ? 8 : 32; }

// Writes the compressed buffer `out` (CompressedBytes(m, k, es) bytes) of A
// (m x k) with `mode` (kModePlain, kModeMask: `mask` applied first, kModeMvue:
// MVUE 2:4 seeded by `seed`, uint32[2]). A is `src` itself (trans = false,
// (m, k) row-major) or its transpose (trans = true, src (k, m) row-major).
// dt: a dtype code (kBF16 ...). The caller has checked the shapes and dt.
// emulate = true runs the kernels' code on the host instead (host pointers,
// stream unused): the CPU tests' view of the kernels.
cudaError_t LaunchCompress(int mode, cudaStream_t stream, int dt, bool trans, const void* src,
                           const uint8_t* mask, const uint32_t* seed, uint8_t* out, int64_t m,
                           int64_t k, bool emulate);

}  // namespace s24
