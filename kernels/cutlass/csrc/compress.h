// CUTLASS's sm90 compressor (compress.cu) as plain C++ for the host units.

#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "products.h"

namespace s24c {

struct CompressSizes {
  int64_t value_bytes = 0;  // compressed values (bf16), value_rows x value_cols
  int64_t meta_bytes = 0;   // metadata (uint8)
  int value_rows = 0, value_cols = 0;
  int64_t workspace_bytes = 0;
};

// Buffer sizes for a rows x cols (2:4 along cols) bf16 operand.
CompressSizes CompressedSizes(int rows, int cols);

// dense: rows x cols bf16 row-major, 2:4-pruned along cols. Returns a GemmStatus.
int LaunchCompress(cudaStream_t stream, int device, int sm_count, const void* dense, int rows,
                   int cols, void* values, void* meta, void* workspace);

}  // namespace s24c
