// Host build of kernels/cutlass/csrc/sm90_layout.cuh (g++, or nvcc -x cu, where
// its functions are __host__ __device__): a compressor and a packed-format
// converter made of its functions, compared with layout.py by
// tests/test_cutlass_layout.py.
//
//   prog offsets M K ES TILEK          > i64 byte offsets of (row, byte col), padded extent, row-major
//   prog compress M K ES TILEK < A     > u64 nv, u64 ne, values, metadata (CUTLASS's buffers)
//   prog packed M K ES TILEK < V META  > the same, from sparse24_jax.packing's (values, meta)
// ES 2 (bf16/fp16), 1 (fp8); ES -1: int8 (no -0).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "sm90_layout.cuh"

using namespace s24cutlass;

#if defined(__CUDACC__)
// Built by nvcc: the functions must also compile as device code (never launched).
__global__ void DeviceUse(const uint16_t* a, uint16_t* v, uint8_t* meta, int64_t m) {
  uint16_t v0, v1;
  uint8_t c = GroupCode<2>(a, v0, v1);
  c = PackedToCutlass<2>(c, v0, v1, v0, v1);
  v[0] = v0;
  v[1] = v1;
  meta[MetaByteOffset(threadIdx.x, 0, m, 2) + ValuesCols(m, 2) + MetaBytes(m, m, kDefaultTileK)] = c;
}
#endif

template <int kEs, bool kNeg0>
static int run(const char* mode, int64_t M, int64_t K, int tile_k) {
  using T = typename Bits<kEs, kNeg0>::T;
  const int64_t kv2 = ValuesCols(K, kEs), G = K / 4, KB = (G + 1) / 2;
  std::vector<T> values(size_t(M * kv2), T(0));
  std::vector<uint8_t> meta(size_t(MetaBytes(M, K, tile_k)), 0);
  std::vector<uint8_t> codes(size_t(M * G));
  if (!strcmp(mode, "compress")) {
    std::vector<T> a(size_t(M * K));
    if (fread(a.data(), sizeof(T), a.size(), stdin) != a.size()) return 2;
    for (int64_t r = 0; r < M; ++r)
      for (int64_t g = 0; g < G; ++g) {
        T v0, v1;
        uint8_t c = GroupCode<kEs, kNeg0>(&a[size_t(r * K + 4 * g)], v0, v1);
        if (c == 0xFF) { fprintf(stderr, "not 2:4 at row %lld group %lld\n", (long long)r, (long long)g); return 3; }
        values[size_t(r * kv2 + 2 * g)] = v0;
        values[size_t(r * kv2 + 2 * g + 1)] = v1;
        codes[size_t(r * G + g)] = c;
      }
  } else if (!strcmp(mode, "packed")) {
    std::vector<T> pv(size_t(M * K / 2));
    std::vector<uint8_t> pm(size_t(M * KB));
    if (fread(pv.data(), sizeof(T), pv.size(), stdin) != pv.size()) return 2;
    if (fread(pm.data(), 1, pm.size(), stdin) != pm.size()) return 2;
    for (int64_t r = 0; r < M; ++r)
      for (int64_t g = 0; g < G; ++g) {
        uint8_t p = (pm[size_t(r * KB + g / 2)] >> (4 * (g % 2))) & 0xF;
        T v0, v1;
        codes[size_t(r * G + g)] = PackedToCutlass<kEs, kNeg0>(p, pv[size_t(r * K / 2 + 2 * g)],
                                                               pv[size_t(r * K / 2 + 2 * g + 1)], v0, v1);
        values[size_t(r * kv2 + 2 * g)] = v0;
        values[size_t(r * kv2 + 2 * g + 1)] = v1;
      }
  } else {
    return 1;
  }
  for (int64_t r = 0; r < M; ++r)
    for (int64_t g = 0; g < G; ++g)
      meta[size_t(MetaByteOffset(r, g / 2, M, kEs, tile_k))] |= uint8_t(codes[size_t(r * G + g)] << (4 * (g % 2)));
  uint64_t h[2] = {values.size() * sizeof(T), meta.size()};
  fwrite(h, 8, 2, stdout);
  fwrite(values.data(), sizeof(T), values.size(), stdout);
  fwrite(meta.data(), 1, meta.size(), stdout);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 6) { fprintf(stderr, "usage: %s offsets|compress|packed M K ES TILEK\n", argv[0]); return 1; }
  const char* mode = argv[1];
  int64_t M = atoll(argv[2]), K = atoll(argv[3]);
  int es = atoi(argv[4]), tile_k = atoi(argv[5]);
  if (!strcmp(mode, "offsets")) {
    int e = es < 0 ? 1 : es;
    std::vector<int64_t> off;
    for (int64_t r = 0; r < MetaRows(M); ++r)
      for (int64_t kb = 0; kb < MetaCols(K, tile_k) / 8; ++kb) off.push_back(MetaByteOffset(r, kb, M, e, tile_k));
    fwrite(off.data(), 8, off.size(), stdout);
    return 0;
  }
  if (es == 2) return run<2, true>(mode, M, K, tile_k);
  if (es == 1) return run<1, true>(mode, M, K, tile_k);
  if (es == -1) return run<1, false>(mode, M, K, tile_k);
  return 1;
}
