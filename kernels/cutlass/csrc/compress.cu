// CUTLASS's own sm90 structured-sparse compressor (as example
// 62_hopper_sparse_gemm uses it): a dense, already 2:4-pruned bf16 operand A
// (rows x cols, row-major, 2:4 along cols) -> CUTLASS's compressed values
// (rows x cols/2 bf16) and metadata (sparse-wgmma order, uint8).
//
// The format depends only on the element type, A's majorness (K-major) and
// min(tile K, 128) (Sm90GemmSparseConfig); every instance the build makes has
// tile K = 128, so one compressor serves all configs and products
// (gemm_kernel.cuh asserts its SparseConfig is this one).

#include <cuda_runtime.h>

#include "compress.h"
#include "cutlass/transform/device/transform_universal_adapter.hpp"
#include "cutlass/transform/kernel/sparse_gemm_compressor.hpp"
#include "gemm_kernel.cuh"

namespace s24c {

namespace {

using Ref = SparseGemm<kFwd, 128, 128, 128, 1, 1, kCooperative>;
using SparseConfig = CompressorConfig;
using ElementA = Ref::ElementA;
using LayoutATag = cutlass::layout::RowMajor;
using ProblemShape = Ref::ProblemShape;
using StrideA = cutlass::gemm::TagToStrideA_t<LayoutATag>;
using Utility = cutlass::transform::kernel::StructuredSparseCompressorUtility<
    ProblemShape, ElementA, LayoutATag, SparseConfig>;
using Kernel = cutlass::transform::kernel::StructuredSparseCompressor<
    ProblemShape, ElementA, LayoutATag, SparseConfig, cutlass::arch::Sm90>;
using Compressor = cutlass::transform::device::TransformUniversalAdapter<Kernel>;

Utility MakeUtility(int rows, int cols) {
  ProblemShape ps = cute::make_tuple(rows, 1, cols, 1);
  StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(rows, cols, 1));
  return Utility(ps, sa);
}

}  // namespace

CompressSizes CompressedSizes(int rows, int cols) {
  Utility u = MakeUtility(rows, cols);
  CompressSizes s;
  s.value_bytes = static_cast<int64_t>(u.get_compressed_tensor_A_bytes());
  s.meta_bytes = static_cast<int64_t>(u.get_tensor_E_bytes());
  s.value_rows = u.get_tensorA_m_physical();
  s.value_cols = u.get_tensorA_k_physical();
  s.workspace_bytes = static_cast<int64_t>(Kernel::SharedStorageSize);
  return s;
}

int LaunchCompress(cudaStream_t stream, int device, int sm_count, const void* dense, int rows,
                   int cols, void* values, void* meta, void* workspace) {
  ProblemShape ps = cute::make_tuple(rows, 1, cols, 1);
  StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(rows, cols, 1));
  cutlass::KernelHardwareInfo hw;
  hw.device_id = device;
  hw.sm_count = sm_count;
  typename Compressor::Arguments args{ps, {dense, sa, values, meta}, {hw}};
  Compressor op;
  if (op.can_implement(args) != cutlass::Status::kSuccess) return kErrCannotImplement;
  if (op.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return kErrInitialize;
  if (op.run(stream) != cutlass::Status::kSuccess) return kErrLaunch;
  return cudaGetLastError() == cudaSuccess ? kOk : kErrLaunch;
}

}  // namespace s24c
