// CUTLASS's own sm90 2:4 compressor (SM90StructuredSparseCompressor, a CUDA
// kernel) and metadata layout (Sm90GemmSparseConfig::fill_layoutE), evaluated
// on the CPU: built with g++ (no __CUDACC__), CuTe's CUTE_DEVICE functions are
// plain inline host functions, so the kernel body runs as written with one
// std::thread per CUDA thread, blockIdx/threadIdx as thread_local variables and
// __syncthreads as a std::barrier. Used by tests/test_cutlass_layout.py.
//
// g++ -std=c++20 -DELT=cutlass::bfloat16_t -DTILEK=128 -I<cutlass include> \
//     -I<cuda>/include -I<cuda>/include/cccl sm90_compress_host.cpp -pthread
//
//   prog compress M K < A.bin > out.bin   A: M*K raw elements, row-major.
//       out: u64 values bytes, u64 metadata bytes, values, metadata. Bytes the
//       compressor does not write keep the fill 0xA5.
//   prog layout M K > out.bin             out: i64 byte offset of metadata byte
//       (m, kb) for m < roundup(M, 64), kb < roundup(K, TILEK)/8, row-major,
//       from CuTe's fill_layoutE (the layout the GEMM's TMA reads).
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include <cuda_runtime.h>  // dim3

static thread_local dim3 blockIdx;
static thread_local dim3 threadIdx;
static dim3 gridDim, blockDim;
static std::barrier<>* g_barrier = nullptr;
static inline void __syncthreads() { g_barrier->arrive_and_wait(); }

#include "cutlass/gemm/collective/builders/sm90_sparse_config.inl"
#include "cutlass/transform/kernel/sm90_sparse_gemm_compressor.hpp"

#ifndef ELT
#define ELT cutlass::bfloat16_t
#endif
#ifndef TILEK
#define TILEK 128
#endif

using ElementA = ELT;
using SparseConfig = cutlass::Sm90GemmSparseConfig<cute::sparse_elem<2, ElementA>, cute::GMMA::Major::K,
                                                   cute::sparse_elem<8, uint8_t>, cute::Int<TILEK>>;
using ProblemShape = cute::Shape<int, int, int, int>;
using Kernel = cutlass::transform::kernel::SM90StructuredSparseCompressor<ProblemShape, ElementA,
                                                                           cutlass::layout::RowMajor, SparseConfig>;

static int compress(int M, int K) {
  const size_t es = sizeof(ElementA);
  std::vector<uint8_t> A(size_t(M) * K * es);
  if (fread(A.data(), 1, A.size(), stdin) != A.size()) {
    fprintf(stderr, "expected %zu bytes of A on stdin\n", A.size());
    return 2;
  }
  ProblemShape ps{M, 1, K, 1};
  const size_t ac_bytes = size_t(cute::cosize(SparseConfig::fill_layoutA(ps))) * es / 2;  // sparse_elem<2>
  const size_t e_bytes = size_t(cute::cosize(SparseConfig::fill_layoutE(ps))) / 8;        // sparse_elem<8, u8>
  std::vector<uint8_t> AC(ac_bytes, 0xA5), E(e_bytes, 0xA5);
  typename Kernel::Arguments args{
      ps, {A.data(), typename Kernel::StrideA{int64_t(K), cute::_1{}, int64_t(M) * K}, AC.data(), E.data()}, {}};
  if (Kernel::can_implement(args) != cutlass::Status::kSuccess) {
    fprintf(stderr, "CUTLASS: can_implement failed for %d x %d\n", M, K);
    return 3;
  }
  auto params = Kernel::to_underlying_arguments(args);
  gridDim = Kernel::get_grid_shape(params);
  blockDim = Kernel::get_block_shape();
  std::vector<uint8_t> smem(Kernel::SharedStorageSize + 128);
  for (unsigned z = 0; z < gridDim.z; ++z)
    for (unsigned y = 0; y < gridDim.y; ++y)
      for (unsigned x = 0; x < gridDim.x; ++x) {
        std::barrier<> bar(blockDim.x);
        g_barrier = &bar;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < blockDim.x; ++t)
          threads.emplace_back([&, t] {
            blockIdx = dim3(x, y, z);
            threadIdx = dim3(t, 0, 0);
            Kernel::run(params, smem.data());
          });
        for (auto& th : threads) th.join();
      }
  uint64_t header[2] = {ac_bytes, e_bytes};
  fwrite(header, 8, 2, stdout);
  fwrite(AC.data(), 1, AC.size(), stdout);
  fwrite(E.data(), 1, E.size(), stdout);
  return 0;
}

static int layout(int M, int K) {
  ProblemShape ps{M, 1, K, 1};
  // The metadata tensor as the compressor and the GEMM see it: logical (m, k)
  // coordinates over sparse_elem<8, uint8_t>, recast to bytes.
  auto lE = cute::recast_layout<cute::sparse_elem<8, uint8_t>, uint8_t>(SparseConfig::fill_layoutE(ps));
  const int me = cutlass::round_up(M, 64), kb_n = cutlass::round_up(K, TILEK) / 8;
  std::vector<int64_t> off;
  off.reserve(size_t(me) * kb_n);
  for (int m = 0; m < me; ++m)
    for (int kb = 0; kb < kb_n; ++kb) off.push_back(int64_t(lE(m, kb, 0)));
  fwrite(off.data(), 8, off.size(), stdout);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s compress|layout M K\n", argv[0]);
    return 1;
  }
  int M = atoi(argv[2]), K = atoi(argv[3]);
  if (!strcmp(argv[1], "compress")) return compress(M, K);
  if (!strcmp(argv[1], "layout")) return layout(M, K);
  fprintf(stderr, "unknown mode %s\n", argv[1]);
  return 1;
}
