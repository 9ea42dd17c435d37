// One instance of gemm_epilogue.cuh: compiled by build.py once per (config,
// fused epilogue) with -DS24C_EPILOGUE, -DS24C_TILE_M/N/K, -DS24C_CLUSTER_M/N,
// -DS24C_SCHEDULE, -DS24C_EPI_TILE_M/N and -DS24C_EPI_STAGES_C/D (the epilogue's
// shared-memory layout, gemm_epilogue.cuh EpilogueShape; all 0: CUTLASS's auto
// one) and -DS24C_CONFIG. Its static initialiser registers it with
// epilogue_bindings.cc's table.

#include <type_traits>

#include "gemm_epilogue.cuh"

#if !defined(S24C_EPILOGUE) || !defined(S24C_TILE_M) || !defined(S24C_TILE_N) ||        \
    !defined(S24C_TILE_K) || !defined(S24C_CLUSTER_M) || !defined(S24C_CLUSTER_N) ||        \
    !defined(S24C_SCHEDULE) || !defined(S24C_CONFIG) || !defined(S24C_EPI_TILE_M) ||        \
    !defined(S24C_EPI_TILE_N) || !defined(S24C_EPI_STAGES_C) || !defined(S24C_EPI_STAGES_D)
#error "epilogue_instance.cu is compiled by sparse24_jax_kernels.cutlass.build with -DS24C_* flags"
#endif

namespace {

using G = s24c::SparseEpiGemm<S24C_EPILOGUE, S24C_TILE_M, S24C_TILE_N, S24C_TILE_K,
                              S24C_CLUSTER_M, S24C_CLUSTER_N, S24C_SCHEDULE, S24C_EPI_TILE_M,
                              S24C_EPI_TILE_N, S24C_EPI_STAGES_C, S24C_EPI_STAGES_D>;

// The weight operand is compress.cu's format, as for the plain instances.
static_assert(std::is_same_v<G::SparseConfig, s24c::CompressorConfig>,
              "this config's compressed-A format differs from compress.cu's (tile K must be 128)");

// CUTLASS checks the kernel's shared memory only at launch (cudaFuncSetAttribute):
// an epilogue shape that leaves no room fails here instead.
static_assert(G::Kernel::SharedStorageSize <= 232448,
              "the kernel's shared memory exceeds sm90's 227 KB: a smaller epilogue tile or "
              "fewer epilogue stages (build.py Config.epi_*)");

const bool registered = s24c::EpiRegistry::Add(G::Describe(S24C_CONFIG, S24C_EPILOGUE));

}  // namespace
