// CUTLASS's own sm90 2:4 compressor on the GPU, set up as CUTLASS's example
// 62_hopper_sparse_gemm does: the SparseConfig of a real sparse GEMM mainloop
// (CollectiveBuilder, OpClassSparseTensorOp), StructuredSparseCompressor run by
// TransformUniversalAdapter. Used by tests/gpu/test_cutlass_layout_gpu.py.
//
// nvcc -std=c++17 -arch=sm_90a -I<cutlass include> sm90_compress_gpu.cu
//
//   prog VARIANT compress M K < A.bin > out.bin
//       VARIANT: bf16_k128 | bf16_k64 | f16_k128 | e4m3_k128 (element, GEMM tile K)
//       A: M*K raw elements, row-major. out: u64 values bytes, u64 metadata
//       bytes, values, metadata; both buffers are filled with 0xA5 first, so
//       bytes the compressor does not write show.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/transform/device/transform_universal_adapter.hpp"
#include "cutlass/transform/kernel/sparse_gemm_compressor.hpp"

using namespace cute;
using ProblemShape = Shape<int, int, int, int>;

#define CUDA_OK(x)                                                                   \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      exit(4);                                                                       \
    }                                                                                \
  } while (0)

template <class ElementA, class TileK>
struct Variant {
  using TileShape = Shape<_128, _128, TileK>;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp,
      ElementA, cutlass::layout::RowMajor, 16 / sizeof(ElementA),
      ElementA, cutlass::layout::ColumnMajor, 16 / sizeof(ElementA),
      float, TileShape, Shape<_1, _1, _1>,
      cutlass::gemm::collective::StageCountAuto,
      cutlass::gemm::collective::KernelScheduleAuto>::CollectiveOp;
  using SparseConfig = typename Mainloop::SparseConfig;
  // the metadata atom layout.py assumes: 64 rows x min(tile K, 128) columns
  static_assert(int(typename SparseConfig::TensorEAtomM{}) == 64, "metadata atom rows");
  static_assert(int(typename SparseConfig::TensorEAtomK{}) == (int(TileK{}) < 128 ? int(TileK{}) : 128),
                "metadata atom columns");
  using StrideA = cutlass::gemm::TagToStrideA_t<cutlass::layout::RowMajor>;
  using Utility = cutlass::transform::kernel::StructuredSparseCompressorUtility<
      ProblemShape, ElementA, cutlass::layout::RowMajor, SparseConfig>;
  using Kernel = cutlass::transform::kernel::StructuredSparseCompressor<
      ProblemShape, ElementA, cutlass::layout::RowMajor, SparseConfig, cutlass::arch::Sm90>;
  using Compressor = cutlass::transform::device::TransformUniversalAdapter<Kernel>;

  static int run(int M, int K) {
    const size_t es = sizeof(ElementA);
    std::vector<uint8_t> hA(size_t(M) * K * es);
    if (fread(hA.data(), 1, hA.size(), stdin) != hA.size()) {
      fprintf(stderr, "expected %zu bytes of A on stdin\n", hA.size());
      return 2;
    }
    ProblemShape ps{M, 1, K, 1};
    StrideA dA{int64_t(K), _1{}, int64_t(M) * K};
    Utility util(ps, dA);
    const size_t ac_bytes = size_t(util.get_tensorA_m_physical()) * util.get_tensorA_k_physical() * es;
    const size_t e_bytes = size_t(util.get_metadata_m_physical()) * util.get_metadata_k_physical();
    if (ac_bytes != util.get_compressed_tensor_A_bytes() || e_bytes != util.get_tensor_E_bytes()) {
      fprintf(stderr, "size mismatch with the compressor utility\n");
      return 5;
    }
    void *dA_ptr, *dAC, *dE;
    CUDA_OK(cudaMalloc(&dA_ptr, hA.size()));
    CUDA_OK(cudaMalloc(&dAC, ac_bytes));
    CUDA_OK(cudaMalloc(&dE, e_bytes));
    CUDA_OK(cudaMemcpy(dA_ptr, hA.data(), hA.size(), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(dAC, 0xA5, ac_bytes));
    CUDA_OK(cudaMemset(dE, 0xA5, e_bytes));
    cutlass::KernelHardwareInfo hw_info;
    hw_info.device_id = 0;
    hw_info.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(0);
    typename Compressor::Arguments args{ps, {dA_ptr, dA, dAC, dE}, {hw_info}};
    Compressor op;
    size_t ws_size = Compressor::get_workspace_size(args);
    void* ws = nullptr;
    CUDA_OK(cudaMalloc(&ws, ws_size > 0 ? ws_size : 1));
    if (op.can_implement(args) != cutlass::Status::kSuccess) { fprintf(stderr, "can_implement failed\n"); return 3; }
    if (op.initialize(args, ws) != cutlass::Status::kSuccess) { fprintf(stderr, "initialize failed\n"); return 3; }
    if (op.run() != cutlass::Status::kSuccess) { fprintf(stderr, "run failed\n"); return 3; }
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<uint8_t> AC(ac_bytes), E(e_bytes);
    CUDA_OK(cudaMemcpy(AC.data(), dAC, ac_bytes, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(E.data(), dE, e_bytes, cudaMemcpyDeviceToHost));
    uint64_t header[2] = {ac_bytes, e_bytes};
    fwrite(header, 8, 2, stdout);
    fwrite(AC.data(), 1, AC.size(), stdout);
    fwrite(E.data(), 1, E.size(), stdout);
    cudaFree(dA_ptr); cudaFree(dAC); cudaFree(dE); cudaFree(ws);
    return 0;
  }
};

int main(int argc, char** argv) {
  if (argc != 5 || strcmp(argv[2], "compress")) {
    fprintf(stderr, "usage: %s bf16_k128|bf16_k64|f16_k128|e4m3_k128 compress M K\n", argv[0]);
    return 1;
  }
  const char* v = argv[1];
  int M = atoi(argv[3]), K = atoi(argv[4]);
  if (!strcmp(v, "bf16_k128")) return Variant<cutlass::bfloat16_t, _128>::run(M, K);
  if (!strcmp(v, "bf16_k64")) return Variant<cutlass::bfloat16_t, _64>::run(M, K);
  if (!strcmp(v, "f16_k128")) return Variant<cutlass::half_t, _128>::run(M, K);
  if (!strcmp(v, "e4m3_k128")) return Variant<cutlass::float_e4m3_t, _128>::run(M, K);
  fprintf(stderr, "unknown variant %s\n", v);
  return 1;
}
