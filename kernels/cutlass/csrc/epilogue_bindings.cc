// XLA FFI handler and C exports of the fused-epilogue GEMMs (epilogue.h,
// gemm_epilogue.cuh), and the table their instances register into. A host
// unit of its own so the plain GEMMs' units (bindings.cc, registry.cc) stay
// as they are.
//   * s24c_gemm_epi  attribute `epilogue` (0 fwd_gelu, 1 dx_dgelu), `config`:
//       fwd_gelu: values (N, K/2), meta, X (M, K), bias (N,) or (0,) bf16
//                 -> H (M, N) = gelu(Z), Z (M, N) = X @ W_s^T + bias, workspace
//       dx_dgelu: values (K, N/2), meta, dY (M, N), Z1 (M, K) bf16
//                 -> dZ1 (M, K) = (dY @ W_s) * gelu'(Z1), workspace

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "compress.h"
#include "epilogue.h"
#include "ffi_util.h"
#include "products.h"

namespace s24c {

static std::vector<EpiInstance>& EpiTable() {
  static std::vector<EpiInstance> table;
  return table;
}

bool RegisterEpi(const EpiInstance& inst) {
  EpiTable().push_back(inst);
  return true;
}

const EpiInstance* FindEpi(const char* config, int epilogue) {
  for (const EpiInstance& g : EpiTable()) {
    if (g.epilogue == epilogue && std::strcmp(g.config, config) == 0) return &g;
  }
  return nullptr;
}

int NumEpis() { return static_cast<int>(EpiTable().size()); }

const EpiInstance* EpiAt(int i) {
  if (i < 0 || i >= NumEpis()) return nullptr;
  return &EpiTable()[i];
}

namespace {

// As bindings.cc (README "Shapes").
constexpr int64_t kMultM = 64, kMultK = 64, kMultN = 16;

ffi::Error Check2D(const char* name, const ffi::AnyBuffer& b, int64_t r, int64_t c) {
  auto d = b.dimensions();
  if (b.element_type() != ffi::DataType::BF16 || d.size() != 2 || d[0] != r || d[1] != c) {
    return InvalidArg(std::string(name) + " must be bfloat16 (" + std::to_string(r) + ", " +
                      std::to_string(c) + "), got " + DtypeName(b.element_type()) + " " +
                      DimsText(b));
  }
  if (!Aligned16(b.untyped_data())) return InvalidArg(std::string(name) + " must be 16-byte aligned");
  return ffi::Error::Success();
}

const char* EpiName(int64_t e) { return e == kFwdGelu ? "fwd_gelu" : "dx_dgelu"; }

ffi::Error EpiImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer values, ffi::AnyBuffer meta,
                   ffi::AnyBuffer b, ffi::AnyBuffer extra, ffi::Result<ffi::AnyBuffer> d,
                   ffi::Result<ffi::AnyBuffer> aux_out, ffi::Result<ffi::AnyBuffer> workspace,
                   int64_t epilogue, std::string_view config) {
  if (epilogue != kFwdGelu && epilogue != kDxDgelu) {
    return InvalidArg("epilogue must be 0 (fwd_gelu) or 1 (dx_dgelu), got " +
                      std::to_string(epilogue));
  }
  const char* what = EpiName(epilogue);
  auto vd = values.dimensions();
  auto bd = b.dimensions();
  if (vd.size() != 2 || bd.size() != 2) {
    return InvalidArg(std::string(what) + ": values and the dense operand must be 2-D, got " +
                      DimsText(values) + " and " + DimsText(b));
  }
  const int64_t mc = vd[0], kc = 2 * vd[1], nc = bd[0];
  if (mc % kMultM || kc % kMultK || nc % kMultN || mc <= 0 || nc <= 0 || kc <= 0 ||
      mc > INT32_MAX || nc > INT32_MAX || kc > INT32_MAX) {
    return InvalidArg(std::string(what) + ": CUTLASS problem (Mc, Nc, Kc) = (" +
                      std::to_string(mc) + ", " + std::to_string(nc) + ", " + std::to_string(kc) +
                      ") needs Mc % 64 == 0 (weight rows), Kc % 64 == 0 (its 2:4 axis) and "
                      "Nc % 16 == 0 (tokens); pad the operands or use the unfused path");
  }
  S24_RETURN_IF_ERROR(Check2D(epilogue == kFwdGelu ? "fwd_gelu: X" : "dx_dgelu: dY", b, nc, kc));
  S24_RETURN_IF_ERROR(Check2D("values", values, mc, kc / 2));
  const CompressSizes s = CompressedSizes(static_cast<int>(mc), static_cast<int>(kc));
  if (meta.element_type() != ffi::DataType::U8 || meta.dimensions().size() != 1 ||
      static_cast<int64_t>(meta.element_count()) != s.meta_bytes || !Aligned16(meta.untyped_data())) {
    return InvalidArg("metadata must be 16-byte aligned uint8 of shape (" +
                      std::to_string(s.meta_bytes) + ",), got " + DtypeName(meta.element_type()) +
                      " " + DimsText(meta) + " (make it with ops.compress)");
  }
  S24_RETURN_IF_ERROR(Check2D("output", *d, nc, mc));
  const void* bias = nullptr;
  void* aux = nullptr;
  if (epilogue == kFwdGelu) {
    S24_RETURN_IF_ERROR(Check2D("fwd_gelu: pre-activation output", *aux_out, nc, mc));
    aux = aux_out->untyped_data();
    auto ed = extra.dimensions();
    if (extra.element_type() != ffi::DataType::BF16 || ed.size() != 1 ||
        (ed[0] != 0 && ed[0] != mc)) {
      return InvalidArg("fwd_gelu: bias must be bfloat16 (" + std::to_string(mc) +
                        ",) or (0,) for none, got " + DtypeName(extra.element_type()) + " " +
                        DimsText(extra));
    }
    if (ed[0] == mc) {
      if (!Aligned16(extra.untyped_data())) return InvalidArg("fwd_gelu: bias must be 16-byte aligned");
      bias = extra.untyped_data();
    }
  } else {
    S24_RETURN_IF_ERROR(Check2D("dx_dgelu: Z1 (the first linear's pre-activation)", extra, nc, mc));
    aux = const_cast<void*>(extra.untyped_data());
  }
  const std::string name(config);
  const EpiInstance* inst = FindEpi(name.c_str(), static_cast<int>(epilogue));
  if (inst == nullptr) {
    return InvalidArg("no fused " + std::string(what) + " instance '" + name +
                      "' in this build (epilogue_ops.epilogue_configs() lists them)");
  }
  DeviceScope scope(device);
  S24C_CUDA_CHECK(scope.status());
  EpiCall call;
  call.m = static_cast<int>(mc);
  call.n = static_cast<int>(nc);
  call.k = static_cast<int>(kc);
  S24C_CUDA_CHECK(SmCount(device, &call.sm_count));
  call.device = device;
  call.stream = stream;
  call.a_values = values.untyped_data();
  call.a_meta = meta.untyped_data();
  call.b = b.untyped_data();
  call.d = d->untyped_data();
  call.aux = aux;
  call.bias = bias;
  call.workspace = workspace->untyped_data();
  call.workspace_bytes = workspace->size_bytes();
  const int st = inst->run(call);
  if (st != kOk) {
    if (st == kErrLaunch) S24C_CUDA_CHECK(cudaGetLastError());
    return ffi::Error::Internal(std::string("sparse24 CUTLASS: ") + name + " " + what + ": " +
                                StatusText(st) + " (workspace " +
                                std::to_string(call.workspace_bytes) + " bytes, needs " +
                                std::to_string(inst->workspace_bytes(call)) + ")");
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace s24c

XLA_FFI_DEFINE_HANDLER_SYMBOL(s24c_gemm_epi, s24c::EpiImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()   // values
                                  .Arg<ffi::AnyBuffer>()   // meta
                                  .Arg<ffi::AnyBuffer>()   // X or dY
                                  .Arg<ffi::AnyBuffer>()   // bias (fwd_gelu) or Z1 (dx_dgelu)
                                  .Ret<ffi::AnyBuffer>()   // H or dZ1
                                  .Ret<ffi::AnyBuffer>()   // Z (fwd_gelu) or a (16,) dummy
                                  .Ret<ffi::AnyBuffer>()   // workspace
                                  .Attr<int64_t>("epilogue")
                                  .Attr<std::string_view>("config"));

extern "C" {

#define S24C_EXPORT __attribute__((visibility("default")))

S24C_EXPORT int s24c_num_epis(void) { return s24c::NumEpis(); }

// Fused instance i: its config name into name and 7 ints: epilogue, tile
// m/n/k, cluster m/n, schedule. 0, or -1.
S24C_EXPORT int s24c_epi_info(int i, char* name, int buflen, int* info) {
  const s24c::EpiInstance* g = s24c::EpiAt(i);
  if (g == nullptr || buflen <= 0) return -1;
  std::strncpy(name, g->config, static_cast<size_t>(buflen) - 1);
  name[buflen - 1] = '\0';
  const int v[7] = {g->epilogue, g->tile_m,    g->tile_n,  g->tile_k,
                    g->cluster_m, g->cluster_n, g->schedule};
  std::memcpy(info, v, sizeof(v));
  return 0;
}

// Workspace bytes of (config, epilogue) for CUTLASS's (m, n, k); -1 when no
// such instance, -2 when CUTLASS cannot implement the problem.
S24C_EXPORT int64_t s24c_epi_workspace_bytes(const char* config, int epilogue, int m, int n,
                                             int k, int sm_count) {
  const s24c::EpiInstance* g = s24c::FindEpi(config, epilogue);
  if (g == nullptr) return -1;
  if (sm_count <= 0) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || s24c::SmCount(device, &sm_count) != cudaSuccess) {
      cudaGetLastError();
      sm_count = 0;
    }
  }
  s24c::EpiCall c;
  c.m = m;
  c.n = n;
  c.k = k;
  c.sm_count = sm_count;
  if (g->can_implement(c) != 0) return -2;
  return static_cast<int64_t>(g->workspace_bytes(c));
}

}  // extern "C"
