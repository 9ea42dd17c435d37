// The XLA FFI plumbing the GEMM handlers share (bindings.cc: s24c_gemm, plain
// products; epilogue_bindings.cc: s24c_gemm_epi, fused epilogues): the operand
// checks of D = A_sparse @ B in CUTLASS's terms, running a registered instance
// with its error mapping, and the C exports' instance info and workspace size.
// Host-only C++.

#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "compress.h"
#include "ffi_util.h"
#include "products.h"

#define S24C_EXPORT __attribute__((visibility("default")))

namespace s24c {

// Multiples we ask of the problem (README "Shapes"). CUTLASS itself needs only
// TMA's 16-byte alignment (its can_implement) and pads the metadata to its
// (64, 128) atom (CompressedSizes counts the padding); we keep the sparse
// operand's rows (Mc) at 64 (whole metadata atoms), its 2:4 axis (Kc) at 64
// (GPT-2's 1600 is 12.5 x 128: the residue path is tested) and the dense
// operand's free axis (Nc) at 16 (8 bf16 / 4 float32 for TMA; 16 keeps both).
constexpr int64_t kMultM = 64, kMultK = 64, kMultN = 16;

inline ffi::Error CheckMultiples(const std::string& what, int64_t mc, int64_t nc, int64_t kc,
                                 const char* fallback) {
  if (mc % kMultM || kc % kMultK || nc % kMultN || mc <= 0 || nc <= 0 || kc <= 0) {
    return InvalidArg(what + ": CUTLASS problem (Mc, Nc, Kc) = (" + std::to_string(mc) + ", " +
                      std::to_string(nc) + ", " + std::to_string(kc) +
                      ") needs Mc % 64 == 0 (sparse operand rows), Kc % 64 == 0 (its 2:4 axis) "
                      "and Nc % 16 == 0; pad the operands or " + fallback);
  }
  if (mc > INT32_MAX || nc > INT32_MAX || kc > INT32_MAX) {
    return InvalidArg(what + ": extents must fit in int32");
  }
  return ffi::Error::Success();
}

// The metadata of CUTLASS's compressed rows x cols operand (ops.compress's).
inline ffi::Error CheckMeta(const ffi::AnyBuffer& meta, int64_t rows, int64_t cols) {
  const CompressSizes s = CompressedSizes(static_cast<int>(rows), static_cast<int>(cols));
  if (meta.element_type() != ffi::DataType::U8 || meta.dimensions().size() != 1 ||
      static_cast<int64_t>(meta.element_count()) != s.meta_bytes) {
    return InvalidArg("metadata must be uint8 of shape (" + std::to_string(s.meta_bytes) +
                      ",) for a " + std::to_string(rows) + " x " + std::to_string(cols) +
                      " sparse operand, got " + DtypeName(meta.element_type()) + " " +
                      DimsText(meta) + " (make it with ops.compress)");
  }
  return ffi::Error::Success();
}

inline ffi::Error Expect2D(const std::string& name, const ffi::AnyBuffer& b, ffi::DataType t,
                           int64_t r, int64_t c) {
  auto d = b.dimensions();
  if (b.element_type() != t || d.size() != 2 || d[0] != r || d[1] != c) {
    return InvalidArg(name + " must be " + DtypeName(t) + " (" + std::to_string(r) + ", " +
                      std::to_string(c) + "), got " + DtypeName(b.element_type()) + " " +
                      DimsText(b));
  }
  if (!Aligned16(b.untyped_data())) return InvalidArg(name + " must be 16-byte aligned");
  return ffi::Error::Success();
}

// How a handler's operands map onto CUTLASS's D (Mc x Nc) = A (Mc x Kc) @ B.
struct ProblemForm {
  const char* what;    // e.g. "fwd (Z = X @ W_s^T)", for messages
  const char* b_name;  // the dense operand
  const char* d_name;  // the output
  bool b_mn_major;     // B given (Kc, Nc) row-major (dw); else (Nc, Kc): K-major
  ffi::DataType d_type;
  const char* fallback;  // what to use instead, for the multiples' message
};

// Checks values, meta, b and d against `form` and sets call's (m, n, k).
// D is (Mc, Nc) row-major for an MN-major B, else (Nc, Mc): column-major Mc x Nc.
inline ffi::Error CheckProblem(const ProblemForm& form, const ffi::AnyBuffer& values,
                               const ffi::AnyBuffer& meta, const ffi::AnyBuffer& b,
                               const ffi::AnyBuffer& d, GemmCall* call) {
  auto vd = values.dimensions();
  auto bd = b.dimensions();
  if (vd.size() != 2 || bd.size() != 2) {
    return InvalidArg(std::string(form.what) + ": values and the dense operand must be 2-D, got " +
                      DimsText(values) + " and " + DimsText(b));
  }
  const int64_t mc = vd[0], kc = 2 * vd[1];  // the sparse operand, dense shape
  const int64_t nc = form.b_mn_major ? bd[1] : bd[0];
  S24_RETURN_IF_ERROR(CheckMultiples(form.what, mc, nc, kc, form.fallback));
  if (form.b_mn_major) {
    S24_RETURN_IF_ERROR(Expect2D(form.b_name, b, ffi::DataType::BF16, kc, nc));
    S24_RETURN_IF_ERROR(Expect2D(form.d_name, d, form.d_type, mc, nc));
  } else {
    S24_RETURN_IF_ERROR(Expect2D(form.b_name, b, ffi::DataType::BF16, nc, kc));
    S24_RETURN_IF_ERROR(Expect2D(form.d_name, d, form.d_type, nc, mc));
  }
  S24_RETURN_IF_ERROR(Expect2D("values", values, ffi::DataType::BF16, mc, kc / 2));
  S24_RETURN_IF_ERROR(CheckMeta(meta, mc, kc));
  if (!Aligned16(meta.untyped_data())) return InvalidArg("metadata must be 16-byte aligned");
  call->m = static_cast<int>(mc);
  call->n = static_cast<int>(nc);
  call->k = static_cast<int>(kc);
  return ffi::Error::Success();
}

// Runs `inst` on the checked call (its m, n, k and any operands of its own
// set): the device, stream, operand pointers and workspace from the handler's
// buffers; CUTLASS's status as an FFI error naming `label`.
template <class Call>
ffi::Error RunInstance(const Instance<Call>& inst, Call& call, cudaStream_t stream,
                       int32_t device, const ffi::AnyBuffer& values, const ffi::AnyBuffer& meta,
                       const ffi::AnyBuffer& b, ffi::Result<ffi::AnyBuffer>& d,
                       ffi::Result<ffi::AnyBuffer>& workspace, const std::string& label) {
  DeviceScope scope(device);
  S24C_CUDA_CHECK(scope.status());
  S24C_CUDA_CHECK(SmCount(device, &call.sm_count));
  call.device = device;
  call.stream = stream;
  call.a_values = values.untyped_data();
  call.a_meta = meta.untyped_data();
  call.b = b.untyped_data();
  call.d = d->untyped_data();
  call.workspace = workspace->untyped_data();
  call.workspace_bytes = workspace->size_bytes();
  const int s = inst.run(call);
  if (s != kOk) {
    if (s == kErrLaunch) S24C_CUDA_CHECK(cudaGetLastError());
    return ffi::Error::Internal(std::string(kLibrary) + ": " + label + ": " + StatusText(s) +
                                " (workspace " + std::to_string(call.workspace_bytes) +
                                " bytes, needs " + std::to_string(inst.workspace_bytes(call)) +
                                ")");
  }
  return ffi::Error::Success();
}

// The C exports' view of a table (s24c_*_info): instance i's config name into
// name (buflen bytes) and 7 ints: kind, tile m/n/k, cluster m/n, schedule
// (0 cooperative, 1 pingpong). 0, or -1.
template <class Call>
int InstanceInfo(int i, char* name, int buflen, int* info) {
  const Instance<Call>* g = Registry<Call>::At(i);
  if (g == nullptr || buflen <= 0) return -1;
  std::strncpy(name, g->config, static_cast<size_t>(buflen) - 1);
  name[buflen - 1] = '\0';
  const int v[7] = {g->kind,      g->tile_m,    g->tile_n,  g->tile_k,
                    g->cluster_m, g->cluster_n, g->schedule};
  std::memcpy(info, v, sizeof(v));
  return 0;
}

// s24c_*_workspace_bytes: workspace bytes of (config, kind) for CUTLASS's
// (m, n, k); -1 when no such instance, -2 when CUTLASS cannot implement the
// problem. sm_count <= 0: the current device's (what the handler passes), or
// without a GPU kNoGpuSmCount: the stream-K scheduler divides by the SM count
// (0 killed the process with SIGFPE), and its workspace grows with it, so a
// program traced on a machine without a GPU is sized for the largest Hopper
// part (H100 / H200 SXM: 132 SMs) and has enough on any of them.
constexpr int kNoGpuSmCount = 132;

template <class Call>
int64_t InstanceWorkspace(const char* config, int kind, int m, int n, int k, int sm_count) {
  const Instance<Call>* g = Registry<Call>::Find(config, kind);
  if (g == nullptr) return -1;
  if (sm_count <= 0) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || SmCount(device, &sm_count) != cudaSuccess) {
      cudaGetLastError();  // no GPU here: clear the error
      sm_count = kNoGpuSmCount;
    }
  }
  Call c;
  c.m = m;
  c.n = n;
  c.k = k;
  c.sm_count = sm_count;
  if (g->can_implement(c) != 0) return -2;
  return static_cast<int64_t>(g->workspace_bytes(c));
}

}  // namespace s24c
