// Our own CUTLASS-format compressors (own_compress.cuh) as plain C++ for the
// host units (own_bindings.cc): no CUTLASS, no XLA header.

#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace s24c {

// Both axes of every operand a multiple of this (whole 64-row metadata blocks,
// 16-byte value rows); the grid's y dimension counts 64-row blocks.
constexpr int64_t kOwnShapeAlign = 64;
constexpr int64_t kOwnMaxRows = 65535ll * 64;

// W (n, k) float32 row-major, mask (n, k) bytes (non-zero keeps) ->
// W_s = where(mask, W, +0) in bf16 as CUTLASS's (values (n, k/2), meta) and
// W_s^T as (values_t (k, n/2), meta_t). Pointers 16-byte aligned.
// emulate: run the kernel's code on the host (host pointers; stream unused).
cudaError_t LaunchOwnProject(cudaStream_t stream, const float* w, const uint8_t* mask,
                             void* values, uint8_t* meta, void* values_t, uint8_t* meta_t,
                             int64_t n, int64_t k, bool emulate);

// dZ (m tokens, n features) bf16 row-major, seed uint32[2] -> MVUE of
// S(dZ^T) (n, m), 2:4 along m, as CUTLASS's (values (n, m/2), meta), with the
// cuSPARSELt MVUE kernel's randomness. m * n / 4 < 2^32.
// block_groups: token groups per block, 32 or 64 (the same bytes), or 0 for
// kOwnMvueBlockGroups; anything else is cudaErrorInvalidValue.
cudaError_t LaunchOwnMvue(cudaStream_t stream, const void* dz, const uint32_t* seed,
                          void* values, uint8_t* meta, int64_t m, int64_t n, int block_groups,
                          bool emulate);

// The MVUE's default block: 32 token groups, faster than 64 at every GPT-2 shape
// measured on an H200 (own_compress.cuh, OwnMvueBlock).
constexpr int kOwnMvueBlockGroups = 32;

// SwiGLU's backward and the MVUE of its result in one pass (own_act_grad.cuh,
// OwnSwigluGradMvue): dA (m tokens, f) and h = [x | gate] (m, 2f) bf16
// row-major, seed uint32[2] -> dh = [dA silu(gate), dA x silu'(gate)] (m, 2f)
// bf16 and the MVUE of dh^T (2f, m), 2:4 along m, as CUTLASS's (values (2f,
// m/2), meta): byte for byte LaunchOwnMvue's of that dh with the same seed.
// m and f multiples of 64, 2f * m / 4 < 2^32; else cudaErrorInvalidValue.
cudaError_t LaunchOwnSwigluGradMvue(cudaStream_t stream, const void* da, const void* h, void* dh,
                                    const uint32_t* seed, void* values, uint8_t* meta, int64_t m,
                                    int64_t f, bool emulate);

}  // namespace s24c
