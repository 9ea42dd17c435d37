// Instantiates the compression kernels (compress_kernels.cuh) for every
// (dtype, mode, A or A^T) and dispatches a call to one of them, launched or
// emulated on the host. Like every unit with device code (project.cu too), it
// includes no XLA header, so the device passes of the build stay small.

#include "compress.h"
#include "compress_kernels.cuh"

namespace s24 {

template <int DT, int MODE, bool TRANS>
static cudaError_t LaunchOrEmulate(cudaStream_t stream, bool emulate, const void* src,
                                   const uint8_t* mask, const uint32_t* seed, uint8_t* out,
                                   int64_t m, int64_t k) {
  // the dedicated MVUE kernel moves 16-bit pairs as 32-bit words: 16-bit types only
  if constexpr (MODE == kModeMvue && TRANS && sizeof(typename DTraits<DT>::Bits) == 2) {
    using K = MvueTransposed<DT>;
    if (K::Takes(m, k)) {
      typename K::Args args{static_cast<const uint32_t*>(src), seed, out, m, k};
      if (emulate) {
        K::Emulate(args);
        return cudaSuccess;
      }
      MvueTransposedKernel<DT><<<K::Grid(m, k), kThreads, 0, stream>>>(args);
      return cudaGetLastError();
    }
  }
  using C = Compressor<DT, MODE, TRANS>;
  typename C::Args args{static_cast<const typename C::Bits*>(src), mask, seed, out, m, k};
  if (emulate) {
    C::Emulate(args);
    return cudaSuccess;
  }
  Compress24Kernel<DT, MODE, TRANS><<<C::Grid(m, k), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

template <int DT, int MODE>
static cudaError_t LaunchCompressT(cudaStream_t stream, bool emulate, bool trans,
                                   const void* src, const uint8_t* mask, const uint32_t* seed,
                                   uint8_t* out, int64_t m, int64_t k) {
  if (trans) return LaunchOrEmulate<DT, MODE, true>(stream, emulate, src, mask, seed, out, m, k);
  return LaunchOrEmulate<DT, MODE, false>(stream, emulate, src, mask, seed, out, m, k);
}

template <int MODE>
static cudaError_t LaunchCompressMode(cudaStream_t stream, int dt, bool trans, const void* src,
                                      const uint8_t* mask, const uint32_t* seed, uint8_t* out,
                                      int64_t m, int64_t k, bool emulate) {
  switch (dt) {
    case kBF16:
      return LaunchCompressT<kBF16, MODE>(stream, emulate, trans, src, mask, seed, out, m, k);
    case kF16:
      return LaunchCompressT<kF16, MODE>(stream, emulate, trans, src, mask, seed, out, m, k);
    case kE4M3:
      return LaunchCompressT<kE4M3, MODE>(stream, emulate, trans, src, mask, seed, out, m, k);
    case kE5M2:
      return LaunchCompressT<kE5M2, MODE>(stream, emulate, trans, src, mask, seed, out, m, k);
    default:
      return cudaErrorInvalidValue;  // callers validate dt first (KernelDtype)
  }
}

cudaError_t LaunchCompress(int mode, cudaStream_t stream, int dt, bool trans, const void* src,
                           const uint8_t* mask, const uint32_t* seed, uint8_t* out, int64_t m,
                           int64_t k, bool emulate) {
  switch (mode) {
    case kModePlain:
      return LaunchCompressMode<kModePlain>(stream, dt, trans, src, mask, seed, out, m, k, emulate);
    case kModeMask:
      return LaunchCompressMode<kModeMask>(stream, dt, trans, src, mask, seed, out, m, k, emulate);
    case kModeMvue:
      return LaunchCompressMode<kModeMvue>(stream, dt, trans, src, mask, seed, out, m, k, emulate);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace s24
