// The cuSPARSELt unit: one handle per device, a plan cache keyed by the
// matmul's shapes, types and layouts, the algorithm search (once per key,
// never under CUDA-graph capture), the matmul itself (s24_spmm), and
// cuSPARSELt's own compression (s24_lib_compress, which shares the handle).
// Host-only C++.

#include "spmm.h"

#include <cuda_runtime.h>
#include <cusparseLt.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "ffi_util.h"
#include "layout.cuh"

namespace s24 {

// ---------------------------------------------------------------------------
// cuSPARSELt state: one handle per device, plans cached per key
// ---------------------------------------------------------------------------

// type_a / type_b: cudaDataType of the sparse A and the dense B, separately
// (fp8 recipes mix e4m3 and e5m2 operands).
struct PlanKey {
  int64_t m, n, k;
  int type_a, type_b, type_d;
  bool transpose_b, d_col_major;
  bool operator==(const PlanKey& o) const {
    return m == o.m && n == o.n && k == o.k && type_a == o.type_a && type_b == o.type_b &&
           type_d == o.type_d && transpose_b == o.transpose_b && d_col_major == o.d_col_major;
  }
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& p) const {
    size_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(static_cast<uint64_t>(p.m));
    mix(static_cast<uint64_t>(p.n));
    mix(static_cast<uint64_t>(p.k));
    mix(static_cast<uint64_t>(p.type_a));
    mix(static_cast<uint64_t>(p.type_b));
    mix(static_cast<uint64_t>(p.type_d));
    mix(p.transpose_b ? 1u : 0u);
    mix(p.d_col_major ? 1u : 0u);
    return h;
  }
};

struct Plan {
  cusparseLtMatDescriptor_t mat_a, mat_b, mat_c;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0;
  size_t compressed_size = 0;
  bool searched = false;
};

struct DeviceState {
  cusparseLtHandle_t handle;
  std::mutex mu;  // guards plans and every use of handle / plans
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;
};

// Never destroyed: handles and plans live as long as the process (tearing
// them down at exit could race the CUDA runtime's own teardown).
static std::mutex g_devices_mu;
static std::unordered_map<int, DeviceState*>* g_devices = nullptr;
// The same states by ordinal, published once created: every matmul looks its
// device up here with one atomic load, no lock and no hash (ordinals beyond
// the array take the map).
constexpr int kFastDevices = 64;
static std::atomic<DeviceState*> g_fast_devices[kFastDevices] = {};
static std::atomic<int64_t> g_num_plans{0};
static std::atomic<int64_t> g_num_searches{0};
static std::atomic<int64_t> g_num_matmuls{0};

static bool SearchEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("SPARSE24_CUSPARSELT_SEARCH");
    return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0));
  }();
  return enabled;
}

// The device's state, creating the handle on first use (call with the
// device current).
static ffi::Error GetDeviceState(int device, DeviceState** out) {
  const bool fast = device >= 0 && device < kFastDevices;
  if (fast) {
    DeviceState* known = g_fast_devices[device].load(std::memory_order_acquire);
    if (known != nullptr) {
      *out = known;
      return ffi::Error::Success();
    }
  }
  std::lock_guard<std::mutex> lock(g_devices_mu);
  if (g_devices == nullptr) g_devices = new std::unordered_map<int, DeviceState*>();
  auto it = g_devices->find(device);
  if (it != g_devices->end()) {
    *out = it->second;
    if (fast) g_fast_devices[device].store(it->second, std::memory_order_release);
    return ffi::Error::Success();
  }
  auto* state = new DeviceState();
  cusparseStatus_t s = cusparseLtInit(&state->handle);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    delete state;
    return LtError("cusparseLtInit", s);
  }
  (*g_devices)[device] = state;
  if (fast) g_fast_devices[device].store(state, std::memory_order_release);
  *out = state;
  return ffi::Error::Success();
}

// Builds a plan for D (m x n) = A (m x k, compressed, row-major) @ op(B).
// B is stored row-major as (n, k) with op = T when transpose_b, else as
// (k, n) with op = N. D is (m, n), column-major when d_col_major (that is,
// the row-major (n, m) array D^T), else row-major.
static ffi::Error CreatePlan(const cusparseLtHandle_t* h, const PlanKey& key, Plan* p) {
  const auto ta = static_cast<cudaDataType>(key.type_a);
  const auto tb = static_cast<cudaDataType>(key.type_b);
  const auto td = static_cast<cudaDataType>(key.type_d);
  const uint32_t align = 16;
  cusparseStatus_t s = cusparseLtStructuredDescriptorInit(
      h, &p->mat_a, key.m, key.k, key.k, align, ta, CUSPARSE_ORDER_ROW,
      CUSPARSELT_SPARSITY_50_PERCENT);
  if (s != CUSPARSE_STATUS_SUCCESS) return LtError("cusparseLtStructuredDescriptorInit(A)", s);
  if (key.transpose_b) {
    s = cusparseLtDenseDescriptorInit(h, &p->mat_b, key.n, key.k, key.k, align, tb,
                                      CUSPARSE_ORDER_ROW);
  } else {
    s = cusparseLtDenseDescriptorInit(h, &p->mat_b, key.k, key.n, key.n, align, tb,
                                      CUSPARSE_ORDER_ROW);
  }
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&p->mat_a);
    return LtError("cusparseLtDenseDescriptorInit(B)", s);
  }
  if (key.d_col_major) {
    s = cusparseLtDenseDescriptorInit(h, &p->mat_c, key.m, key.n, key.m, align, td,
                                      CUSPARSE_ORDER_COL);
  } else {
    s = cusparseLtDenseDescriptorInit(h, &p->mat_c, key.m, key.n, key.n, align, td,
                                      CUSPARSE_ORDER_ROW);
  }
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&p->mat_b);
    cusparseLtMatDescriptorDestroy(&p->mat_a);
    return LtError("cusparseLtDenseDescriptorInit(D)", s);
  }
  auto destroy_descs = [&] {
    cusparseLtMatDescriptorDestroy(&p->mat_c);
    cusparseLtMatDescriptorDestroy(&p->mat_b);
    cusparseLtMatDescriptorDestroy(&p->mat_a);
  };
  s = cusparseLtMatmulDescriptorInit(
      h, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
      key.transpose_b ? CUSPARSE_OPERATION_TRANSPOSE : CUSPARSE_OPERATION_NON_TRANSPOSE,
      &p->mat_a, &p->mat_b, &p->mat_c, &p->mat_c, CUSPARSE_COMPUTE_32F);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    destroy_descs();
    return LtError("cusparseLtMatmulDescriptorInit", s);
  }
  s = cusparseLtMatmulAlgSelectionInit(h, &p->alg, &p->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    destroy_descs();
    return LtError("cusparseLtMatmulAlgSelectionInit", s);
  }
  s = cusparseLtMatmulPlanInit(h, &p->plan, &p->matmul, &p->alg);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatmulAlgSelectionDestroy(&p->alg);
    destroy_descs();
    return LtError("cusparseLtMatmulPlanInit", s);
  }
  size_t compressed_buffer = 0;
  s = cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace);
  if (s == CUSPARSE_STATUS_SUCCESS) {
    s = cusparseLtSpMMACompressedSize2(h, &p->mat_a, &p->compressed_size, &compressed_buffer);
  }
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatmulPlanDestroy(&p->plan);
    cusparseLtMatmulAlgSelectionDestroy(&p->alg);
    destroy_descs();
    return LtError("cusparseLtMatmulGetWorkspace / cusparseLtSpMMACompressedSize2", s);
  }
  return ffi::Error::Success();
}

// Workspace comes as an extra uint8 output of the call: XLA allocates it with
// the other buffers (the canonical way for cuBLASLt and cuDNN calls too). The
// FFI scratch allocator returned nothing on jax 0.11.2 / H100 (seen
// 2026-11-23), and an output buffer is also safe under command buffers.
static ffi::Error TakeWorkspace(ffi::Result<ffi::AnyBuffer>& ws, size_t bytes, void** out) {
  *out = nullptr;
  if (bytes == 0) return ffi::Error::Success();
  if (ws->element_type() != ffi::DataType::U8 || ws->size_bytes() < bytes) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "sparse24 cuSPARSELt: needs " + std::to_string(bytes) +
                          " bytes of workspace but the call has " + std::to_string(ws->size_bytes()) +
                          ": raise SPARSE24_CUSPARSELT_WORKSPACE_MB");
  }
  *out = ws->untyped_data();
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// The matmul: validate, get or create the plan, search once, run
// ---------------------------------------------------------------------------

// One matmul's validated shapes and types.
struct SpmmCall {
  int a_dt;  // kernel dtype code of A's values
  int64_t m, n, k;
  cudaDataType tb, td;
  bool transpose_b, d_col_major;
  ffi::DataType b_type, d_type;  // B's and D's buffer types, for the request text

  PlanKey Key() const {
    return PlanKey{m, n, k, static_cast<int>(KernelCudaDtype(a_dt)), static_cast<int>(tb),
                   static_cast<int>(td), transpose_b, d_col_major};
  }
};

// What a matmul asked cuSPARSELt for, appended to its errors: a refusal of a
// type combination (NOT_SUPPORTED, INVALID_VALUE, ...) must say which types.
// Built only when there is an error to append it to: every call used to
// format it (a dozen string appends and heap allocations) for nothing.
static std::string SpmmRequestText(const SpmmCall& c) {
  return std::string("sparse A ") + KernelDtypeName(c.a_dt) + " x dense B " +
         DtypeName(c.b_type) + " -> D " + DtypeName(c.d_type) +
         ", compute float32, m=" + std::to_string(c.m) + ", n=" + std::to_string(c.n) +
         ", k=" + std::to_string(c.k) + (c.transpose_b ? ", opB=T" : ", opB=N") +
         (c.d_col_major ? ", D column-major" : ", D row-major");
}

static ffi::Error WithRequest(ffi::Error e, const SpmmCall& call) {
  if (e.success()) return e;
  return ffi::Error(e.errc().value_or(ffi::ErrorCode::kInternal),
                    e.message() + " [asked for: " + SpmmRequestText(call) + "]");
}

// The operands of one cusparseLtMatmul (or its search).
struct MatmulOperands {
  cudaStream_t stream;
  const void* a;
  const void* b;
  void* d;
  float alpha;
};

// The element types of s24_spmm's operands: A's code (a_dtype), B's and D's
// cudaDataType.
static ffi::Error CheckSpmmTypes(const ffi::AnyBuffer& b, const ffi::AnyBuffer& d,
                                 int64_t a_dtype, int* a_dt_out, cudaDataType* tb_out,
                                 cudaDataType* td_out) {
  if (a_dtype < 0 || a_dtype >= kNumDtypes) {
    return InvalidArg("a_dtype = " + std::to_string(a_dtype) + " is not a dtype code of the "
                      "sparse operand (0 bfloat16, 1 float16, 2 float8_e4m3fn, 3 float8_e5m2); "
                      "call ops.spmm(..., a_dtype=...)");
  }
  const int a_dt = static_cast<int>(a_dtype);
  const int es = KernelDtypeBytes(a_dt);
  int b_dt, b_es;
  if (!KernelDtype(b.element_type(), &b_dt, &b_es)) {
    return InvalidArg("the dense operand must be bfloat16, float16, float8_e4m3fn or float8_e5m2, "
                      "got " + DtypeName(b.element_type()));
  }
  // Mixed types only among the fp8 ones (the question of e4m3 x e5m2 GEMMs);
  // a 16-bit A with another B has no cuSPARSELt kernel, and the buffer layout
  // follows A's element size.
  if (b_es != es || (es == 2 && b_dt != a_dt)) {
    return InvalidArg(std::string("the sparse operand is ") + KernelDtypeName(a_dt) +
                      " but the dense one is " + DtypeName(b.element_type()) +
                      ": 16-bit operands must have the same type, fp8 ones may mix e4m3 and "
                      "e5m2 (cast one operand)");
  }
  if (!CudaDtype(d.element_type(), td_out)) {
    return InvalidArg("the output must be bfloat16, float16, float8_e4m3fn, float8_e5m2 or "
                      "float32, got " + DtypeName(d.element_type()));
  }
  CudaDtype(b.element_type(), tb_out);  // cannot fail: KernelDtype took it
  *a_dt_out = a_dt;
  return ffi::Error::Success();
}

// The shapes and alignment of s24_spmm's operands (A's values of a_dt); n out.
static ffi::Error CheckSpmmShapes(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b,
                                  const ffi::AnyBuffer& d, int64_t m, int64_t k, bool transpose_b,
                                  bool d_col_major, int a_dt, int64_t* n_out) {
  const int es = KernelDtypeBytes(a_dt);
  auto bd = b.dimensions();
  if (bd.size() != 2) return InvalidArg("dense operand must be 2-D, got " + DimsText(b));
  const int64_t n = transpose_b ? bd[0] : bd[1];
  const int64_t bk = transpose_b ? bd[1] : bd[0];
  if (bk != k) {
    return InvalidArg("dense operand " + DimsText(b) + " does not match the sparse operand's k = " +
                      std::to_string(k) + (transpose_b ? " (expected (n, k))" : " (expected (k, n))"));
  }
  auto dd = d.dimensions();
  const int64_t d0 = d_col_major ? n : m, d1 = d_col_major ? m : n;
  if (dd.size() != 2 || dd[0] != d0 || dd[1] != d1) {
    return InvalidArg("output must have shape (" + std::to_string(d0) + ", " + std::to_string(d1) +
                      "), got " + DimsText(d));
  }
  if (a.element_type() != ffi::DataType::U8 || a.dimensions().size() != 1 ||
      static_cast<int64_t>(a.element_count()) != CompressedBytes(m, k, es)) {
    return InvalidArg("compressed operand must be uint8 of shape (" +
                      std::to_string(CompressedBytes(m, k, es)) + ",) for a " + std::to_string(m) +
                      " x " + std::to_string(k) + " " + KernelDtypeName(a_dt) + " matrix, got " +
                      DimsText(a));
  }
  if (k % 32 != 0 || m % 8 != 0 || n % 8 != 0) {
    return InvalidArg("shapes m=" + std::to_string(m) + ", n=" + std::to_string(n) +
                      ", k=" + std::to_string(k) + " are not aligned: k must be a multiple of 32, "
                      "m and n of 8 (pad, or use backend='xla' or 'triton')");
  }
  if (!Aligned16(a.untyped_data()) || !Aligned16(b.untyped_data()) ||
      !Aligned16(d.untyped_data())) {
    return InvalidArg("buffers must be 16-byte aligned");
  }
  *n_out = n;
  return ffi::Error::Success();
}

// Checks the operands of s24_spmm (see SpmmImpl): types first, then shapes.
static ffi::Error ValidateSpmm(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b,
                               const ffi::AnyBuffer& d, int64_t m, int64_t k, bool transpose_b,
                               bool d_col_major, int64_t a_dtype, SpmmCall* call) {
  int a_dt;
  cudaDataType tb, td;
  S24_RETURN_IF_ERROR(CheckSpmmTypes(b, d, a_dtype, &a_dt, &tb, &td));
  int64_t n;
  S24_RETURN_IF_ERROR(CheckSpmmShapes(a, b, d, m, k, transpose_b, d_col_major, a_dt, &n));
  *call = SpmmCall{a_dt, m, n, k, tb, td, transpose_b, d_col_major, b.element_type(),
                   d.element_type()};
  return ffi::Error::Success();
}

// The plan of the call's key, created (and cached) on first use. Call with
// state->mu held.
static ffi::Error GetOrCreatePlan(DeviceState* state, const SpmmCall& call, Plan** out) {
  const PlanKey key = call.Key();
  auto it = state->plans.find(key);
  if (it != state->plans.end()) {
    *out = it->second.get();
    return ffi::Error::Success();
  }
  auto fresh = std::make_unique<Plan>();
  S24_RETURN_IF_ERROR(WithRequest(CreatePlan(&state->handle, key, fresh.get()), call));
  *out = fresh.get();
  state->plans.emplace(key, std::move(fresh));
  g_num_plans.fetch_add(1);
  return ffi::Error::Success();
}

// Our kernels' buffer size (CompressedBytes) must be the plan's: otherwise
// this cuSPARSELt's layout is not the one we write.
static ffi::Error CheckCompressedSize(const Plan& plan, const SpmmCall& call, int64_t a_bytes) {
  if (plan.compressed_size == static_cast<size_t>(a_bytes)) return ffi::Error::Success();
  return ffi::Error::Internal(
      "sparse24 cuSPARSELt: this cuSPARSELt expects a compressed buffer of " +
      std::to_string(plan.compressed_size) + " bytes for a " + std::to_string(call.m) + " x " +
      std::to_string(call.k) + " " + KernelDtypeName(call.a_dt) + " matrix but sparse24 writes " +
      std::to_string(a_bytes) +
      ": the compressed layout this library assumes (verified on cuSPARSELt 0.8) does not "
      "hold for this version; use backend='xla' or 'triton'");
}

// Once per key, outside graph capture: time the algorithms on the real
// operands (D is overwritten by the matmul that follows anyway). Extra
// workspace for safety. Call with state->mu held. Whether the stream is
// being captured is asked only here, while the key is still unsearched: a
// searched plan (every call after the first per key) skips that runtime call.
static ffi::Error SearchOnce(DeviceState* state, Plan* plan, const MatmulOperands& op,
                             ffi::Result<ffi::AnyBuffer>& workspace, const SpmmCall& call) {
  if (plan->searched || !SearchEnabled()) return ffi::Error::Success();
  const cudaStream_t stream = op.stream;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  S24_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return ffi::Error::Success();
  const float beta = 0.f;
  void* ws = nullptr;
  S24_RETURN_IF_ERROR(TakeWorkspace(workspace, plan->workspace, &ws));
  cudaStream_t streams[1] = {op.stream};
  cusparseStatus_t s = cusparseLtMatmulSearch(&state->handle, &plan->plan, &op.alpha, op.a, op.b,
                                              &beta, op.d, op.d, ws, streams, 1);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    return WithRequest(LtError("cusparseLtMatmulSearch", s), call);
  }
  s = cusparseLtMatmulGetWorkspace(&state->handle, &plan->plan, &plan->workspace);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    return WithRequest(LtError("cusparseLtMatmulGetWorkspace", s), call);
  }
  plan->searched = true;
  g_num_searches.fetch_add(1);
  return ffi::Error::Success();
}

// The matmul with the plan's algorithm (beta = 0). Call with state->mu held.
static ffi::Error RunMatmul(DeviceState* state, Plan* plan, const MatmulOperands& op,
                            ffi::Result<ffi::AnyBuffer>& workspace, const SpmmCall& call) {
  const float beta = 0.f;
  void* ws = nullptr;
  S24_RETURN_IF_ERROR(TakeWorkspace(workspace, plan->workspace, &ws));
  cudaStream_t streams[1] = {op.stream};
  const cusparseStatus_t s = cusparseLtMatmul(&state->handle, &plan->plan, &op.alpha, op.a, op.b,
                                              &beta, op.d, op.d, ws, streams, 1);
  if (s != CUSPARSE_STATUS_SUCCESS) return WithRequest(LtError("cusparseLtMatmul", s), call);
  g_num_matmuls.fetch_add(1);
  return ffi::Error::Success();
}

// D = A_sparse @ op(B) (see CreatePlan for the layouts); alpha scales the
// product (beta = 0). a_dtype: the kernel dtype code (kBF16 ...) of the values
// in the compressed buffer `a`; B's type is its buffer's. cuSPARSELt decides
// which (A, B) fp8 pairs it runs; its refusals come back as errors naming the
// status and both types.
ffi::Error SpmmImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer a, ffi::AnyBuffer b,
                    ffi::Result<ffi::AnyBuffer> d, ffi::Result<ffi::AnyBuffer> workspace,
                    int64_t m, int64_t k, int64_t transpose_b, int64_t d_col_major,
                    int64_t a_dtype, float alpha) {
  SpmmCall call;
  S24_RETURN_IF_ERROR(
      ValidateSpmm(a, b, *d, m, k, transpose_b != 0, d_col_major != 0, a_dtype, &call));
  if (call.m == 0 || call.n == 0) return ffi::Error::Success();

  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  DeviceState* state = nullptr;
  S24_RETURN_IF_ERROR(GetDeviceState(device, &state));

  std::lock_guard<std::mutex> lock(state->mu);
  Plan* plan = nullptr;
  S24_RETURN_IF_ERROR(GetOrCreatePlan(state, call, &plan));
  S24_RETURN_IF_ERROR(CheckCompressedSize(*plan, call, static_cast<int64_t>(a.element_count())));
  const MatmulOperands op{stream, a.untyped_data(), b.untyped_data(), d->untyped_data(), alpha};
  S24_RETURN_IF_ERROR(SearchOnce(state, plan, op, workspace, call));
  return RunMatmul(state, plan, op, workspace, call);
}

// ---------------------------------------------------------------------------
// cuSPARSELt's own compression
// ---------------------------------------------------------------------------

// cuSPARSELt's own compression of a dense (m, k) row-major 2:4 matrix, into
// the same uint8 buffer shape as ours (tests compare them byte for byte).
ffi::Error LibCompressImpl(cudaStream_t stream, int32_t device, ffi::AnyBuffer src,
                           ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> workspace) {
  cudaDataType t;
  int kdt, es;
  if (!KernelDtype(src.element_type(), &kdt, &es) || !CudaDtype(src.element_type(), &t)) {
    return InvalidArg("compression supports bfloat16, float16, float8_e4m3fn and float8_e5m2 "
                      "inputs, got " + DtypeName(src.element_type()));
  }
  auto sd = src.dimensions();
  if (sd.size() != 2) return InvalidArg("compression input must be 2-D, got " + DimsText(src));
  const int64_t m = sd[0], k = sd[1];
  if (out->element_type() != ffi::DataType::U8 || out->dimensions().size() != 1 ||
      static_cast<int64_t>(out->element_count()) != CompressedBytes(m, k, es)) {
    return InvalidArg("compressed output must be uint8 of shape (" +
                      std::to_string(CompressedBytes(m, k, es)) + ",), got " + DimsText(*out));
  }
  if (m == 0 || k == 0) return ffi::Error::Success();
  DeviceScope scope(device);
  S24_CUDA_CHECK(scope.status());
  DeviceState* state = nullptr;
  S24_RETURN_IF_ERROR(GetDeviceState(device, &state));
  std::lock_guard<std::mutex> lock(state->mu);
  cusparseLtMatDescriptor_t desc;
  S24_LT_CHECK(cusparseLtStructuredDescriptorInit(&state->handle, &desc, m, k, k, 16, t,
                                                  CUSPARSE_ORDER_ROW,
                                                  CUSPARSELT_SPARSITY_50_PERCENT));
  size_t size = 0, buffer = 0;
  cusparseStatus_t s = cusparseLtSpMMACompressedSize2(&state->handle, &desc, &size, &buffer);
  if (s != CUSPARSE_STATUS_SUCCESS) {
    cusparseLtMatDescriptorDestroy(&desc);
    return LtError("cusparseLtSpMMACompressedSize2", s);
  }
  if (size != static_cast<size_t>(out->element_count())) {
    cusparseLtMatDescriptorDestroy(&desc);
    return ffi::Error::Internal("sparse24 cuSPARSELt: the library's compressed size is " +
                                std::to_string(size) + " bytes, the layout formula gives " +
                                std::to_string(out->element_count()));
  }
  void* buf = nullptr;
  ffi::Error e = TakeWorkspace(workspace, buffer, &buf);
  if (!e.success()) {
    cusparseLtMatDescriptorDestroy(&desc);
    return e;
  }
  s = cusparseLtSpMMACompress2(&state->handle, &desc, 1, CUSPARSE_OPERATION_NON_TRANSPOSE,
                               src.untyped_data(), out->untyped_data(), buf, stream);
  cusparseLtMatDescriptorDestroy(&desc);
  if (s != CUSPARSE_STATUS_SUCCESS) return LtError("cusparseLtSpMMACompress2", s);
  return ffi::Error::Success();
}

int64_t NumPlans() { return g_num_plans.load(); }
int64_t NumSearches() { return g_num_searches.load(); }
int64_t NumMatmuls() { return g_num_matmuls.load(); }

}  // namespace s24
