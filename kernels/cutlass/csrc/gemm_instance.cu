// One instance of gemm_kernel.cuh: compiled by build.py once per (config,
// product) with -DS24C_PRODUCT, -DS24C_TILE_M/N/K, -DS24C_CLUSTER_M/N,
// -DS24C_SCHEDULE, -DS24C_STREAMK and -DS24C_CONFIG (the config's name, a
// string literal). Its static initialiser registers it with registry.cc's table.

#include <type_traits>

#include "gemm_kernel.cuh"

#if !defined(S24C_PRODUCT) || !defined(S24C_TILE_M) || !defined(S24C_TILE_N) || \
    !defined(S24C_TILE_K) || !defined(S24C_CLUSTER_M) || !defined(S24C_CLUSTER_N) ||  \
    !defined(S24C_SCHEDULE) || !defined(S24C_STREAMK) || !defined(S24C_CONFIG)
#error "gemm_instance.cu is compiled by sparse24_jax_kernels.cutlass.build with -DS24C_* flags"
#endif

namespace {

using G = s24c::SparseGemm<S24C_PRODUCT, S24C_TILE_M, S24C_TILE_N, S24C_TILE_K, S24C_CLUSTER_M,
                           S24C_CLUSTER_N, S24C_SCHEDULE, S24C_STREAMK != 0>;

// compress.cu's single compressor serves every instance: same A format.
static_assert(std::is_same_v<G::SparseConfig, s24c::CompressorConfig>,
              "this config's compressed-A format differs from compress.cu's (tile K must be 128)");

const bool registered = s24c::GemmRegistry::Add(G::Describe(S24C_CONFIG, S24C_PRODUCT));

}  // namespace
