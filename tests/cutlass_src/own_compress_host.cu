// The CPU tests' build of our own CUTLASS-format compressors: the library's
// unit itself (kernels/cutlass/csrc/own_compress.cu, with its
// s24c_emulate_own_* exports), plus the cuSPARSELt MVUE kernel's emulation
// (the randomness ours must reproduce). Built with nvcc as a host library by
// tests/_cutlass_own.py; no GPU, no CUTLASS headers needed.

#include "own_compress.cu"

extern "C" __attribute__((visibility("default"))) int s24c_test_cusparselt_mvue(
    const void* dz, const uint32_t* seed, uint8_t* out, int64_t m, int64_t n) {
  // cuSPARSELt's buffer of A = dZ^T (n x m, 2:4 along m), as compress.cu's
  // LaunchOrEmulate emulates it for kModeMvue, transposed input
  using K = s24::MvueTransposed<s24::kBF16>;
  if (!K::Takes(n, m)) return -1;
  const K::Args args{static_cast<const uint32_t*>(dz), seed, out, n, m};
  K::Emulate(args);
  return 0;
}

// OwnMetaByte (the fused MVUE epilogue's metadata address, 32-bit) for each (row, group)
// of an operand of `rows` rows and `cols` columns (2:4 axis): out[r * cols/4 + g].
extern "C" __attribute__((visibility("default"))) void s24c_test_own_meta_byte(
    uint32_t* out, int64_t rows, int64_t cols) {
  const uint32_t meta_rows = static_cast<uint32_t>(s24cutlass::MetaRows(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < cols / 4; ++g) {
      out[r * (cols / 4) + g] = s24c::OwnMetaByte(static_cast<uint32_t>(r), static_cast<uint32_t>(g), meta_rows);
    }
  }
}
