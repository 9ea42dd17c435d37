// One instance of gemm_epilogue.cuh: compiled by build.py once per (config,
// fused epilogue) with -DS24C_EPILOGUE, -DS24C_TILE_M/N/K, -DS24C_CLUSTER_M/N,
// -DS24C_SCHEDULE and -DS24C_CONFIG. Its static initialiser registers it with
// epilogue_bindings.cc's table.

#include <type_traits>

#include "gemm_epilogue.cuh"

#if !defined(S24C_EPILOGUE) || !defined(S24C_TILE_M) || !defined(S24C_TILE_N) || \
    !defined(S24C_TILE_K) || !defined(S24C_CLUSTER_M) || !defined(S24C_CLUSTER_N) || \
    !defined(S24C_SCHEDULE) || !defined(S24C_CONFIG)
#error "epilogue_instance.cu is compiled by sparse24_jax_kernels.cutlass.build with -DS24C_* flags"
#endif

namespace {

using G = s24c::SparseEpiGemm<S24C_EPILOGUE, S24C_TILE_M, S24C_TILE_N, S24C_TILE_K,
                              S24C_CLUSTER_M, S24C_CLUSTER_N, S24C_SCHEDULE>;

// The weight operand is compress.cu's format, as for the plain instances.
static_assert(std::is_same_v<G::SparseConfig, s24c::CompressorConfig>,
              "this config's compressed-A format differs from compress.cu's (tile K must be 128)");

const bool registered = s24c::EpiRegistry::Add(G::Describe(S24C_CONFIG, S24C_EPILOGUE));

}  // namespace
