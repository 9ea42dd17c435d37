// The cuSPARSELt unit (spmm.cc): its FFI handlers and counters, for
// bindings.cc.

#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ffi_util.h"

namespace s24 {

// D = alpha * A_sparse @ op(B): the handler of s24_spmm / s24_spmm_graph.
ffi::Error SpmmImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer a, ffi::AnyBuffer b,
                    ffi::Result<ffi::AnyBuffer> d, ffi::Result<ffi::AnyBuffer> workspace,
                    int64_t m, int64_t k, int64_t transpose_b, int64_t d_col_major,
                    int64_t a_dtype, float alpha);

// cuSPARSELt's own compression (s24_lib_compress).
ffi::Error LibCompressImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer src,
                           ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> workspace);

// Plans built, algorithm searches run, matmuls launched (all devices).
int64_t NumPlans();
int64_t NumSearches();
int64_t NumMatmuls();

}  // namespace s24
