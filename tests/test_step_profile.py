"""benchmarks/step_profile.py: the trace reader on a synthetic perfetto trace (exact per-category
totals), and a smoke run of the script on CPU (no GPU events: it says so and still reports)."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sparse24_train")

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def load_step_profile():
    # benchmarks/ is not a package: load the script by path (it puts benchmarks/ on sys.path for
    # its sibling modules timing and train_step), then leave sys.path as it was
    path = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("step_profile", ROOT / "benchmarks" / "step_profile.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = path
    return mod


def meta(pid, name, tid=None):
    if tid is None:
        return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def kernel(name, ts, dur, tid=13, pid=1, **args):
    e = {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}
    if args:
        e["args"] = args
    return e


# Two steps of one GPU: per step the compute stream runs the kernels below back to back, and a
# memcpy on a second stream overlaps the first 2 us of the dense GEMM. (name, dur_us, category)
STEP = [
    ("sm90_xmma_sparse_gemm_bf16bf16_bf16f32_f32_nt_n_tilesize128x128x64_warpgroupsize1x1x1", 100.0,
     "sparse GEMM (2:4)"),
    ("void Compress24Kernel<1, 2, true>(Compressor<1, 2, true>::Args)", 20.0, "2:4 per-step kernels"),
    ("mvue24_kernel", 5.0, "2:4 per-step kernels"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NTN", 200.0, "dense GEMM"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", 50.0, "dense GEMM"),
    ("triton_softmax_fusion_3", 15.0, "attention"),
    ("loop_multiply_fusion", 30.0, "other (XLA fusions)"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 6.0, "collectives/memcpy"),
]
MEMCPY = ("MemcpyD2D", 4.0)


def synthetic_trace():
    ev = [meta(1, "/device:GPU:0"), meta(1, "Stream #13(Compute)", 13), meta(1, "Stream #14(MemcpyD2D)", 14),
          meta(1, "XLA Ops", 10000), meta(1, "XLA Modules", 10001),
          meta(701, "/host:CPU"), meta(701, "python", 5)]
    for step in range(2):
        t = 1000.0 * step
        ev.append(kernel("jit_step", t, 500.0, tid=10001))              # derived line: skipped
        dense_start = None
        for name, dur, _ in STEP:
            if name.startswith("nvjet"):
                dense_start = t
            ev.append(kernel(name, t, dur))
            ev.append(kernel("fusion.%d" % len(ev), t, dur, tid=10000))  # derived line: skipped
            t += dur
        ev.append(kernel(MEMCPY[0], dense_start, MEMCPY[1], tid=14))     # overlaps the nvjet GEMM
        # an attention GEMM recognised by the op name in its args; and a plain fusion with unrelated args
        ev.append(kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_nn_n", t, 8.0,
                         tf_op="jit(step)/jvp(vmap(BTNH,BSNH->BNTS))/dot_general", hlo_op="fusion.7"))
        ev.append(kernel("input_reduce_fusion", t + 8.0, 2.0, hlo_op="reduce.3"))
        # host events, some with kernel-like names: ignored
        ev.append(kernel("nvjet_tst_host_side_launch", t, 999.0, tid=5, pid=701))
        ev.append(kernel("PjitFunction(step)", t, 1234.0, tid=5, pid=701))
    return {"displayTimeUnit": "ns", "traceEvents": ev}


def test_breakdown_exact_totals():
    sp = load_step_profile()
    out = sp.gpu_breakdown(synthetic_trace(), steps=2)
    assert out["has_gpu"] and out["n_gpus"] == 1 and out["gpu_processes"] == ["/device:GPU:0"]
    assert out["threads"] == ["Stream #13(Compute)", "Stream #14(MemcpyD2D)"]
    assert out["skipped_threads"] == ["XLA Modules", "XLA Ops"]
    want = {c: 0.0 for c in sp.CATEGORIES}
    for _, dur, cat in STEP:
        want[cat] += dur
    want["collectives/memcpy"] += MEMCPY[1]
    want["attention"] += 8.0
    want["other (XLA fusions)"] += 2.0
    total = sum(want.values())  # us per step
    assert total == 440.0
    for c in sp.CATEGORIES:
        assert out["categories"][c]["ms_per_step"] == pytest.approx(want[c] / 1e3, abs=1e-12), c
        assert out["categories"][c]["pct"] == pytest.approx(100 * want[c] / total)
    assert out["kernel_ms_per_step"] == pytest.approx(total / 1e3)
    assert out["busy_ms_per_step"] == pytest.approx((total - MEMCPY[1]) / 1e3)  # the memcpy overlapped
    assert out["kernels_per_step"] == len(STEP) + 3
    top = out["top_kernels"]
    assert top[0]["name"].startswith("nvjet") and top[0]["ms_per_step"] == pytest.approx(0.2)
    assert top[0]["calls_per_step"] == 1 and len(top) == len(STEP) + 3


def test_classifier_rules():
    sp = load_step_profile()
    c = sp.classify
    assert c("void Compress24Kernel<0, 1, false>(Compressor<0, 1, false>::Args)") == "2:4 per-step kernels"
    for name in ("compress24_kernel", "soft_threshold24_kernel", "transposable_mask_kernel", "gated_bwd_kernel",
                 # the cuSPARSELt library's other kernels (their names came out of a 774M profile)
                 "void s24::ProjectKernel<0, 0, true>(s24::Projector<0, 0, true>::Args)",
                 "void s24::ActGradMvueKernel<s24::GeluGradMvue<0> >(s24::GeluGradMvue<0>::Args)",
                 # the CUTLASS library's own compressors (names from a 774M profile)
                 "void s24c::OwnKernel<s24c::OwnProject>(s24c::OwnProject::Args)",
                 "void s24c::OwnKernel<s24c::OwnMvueBlock<32> >(s24c::OwnMvueArgs)"):
        assert c(name) == "2:4 per-step kernels", name
    for name in ("sm90_sp_gemm_bf16_tn", "cusparseLt::kernel", "sparse24_matmul_kernel"):
        assert c(name) == "sparse GEMM (2:4)", name
    for name in ("cutlass3x_sm90_tensorop_gemm_bf16", "ampere_bf16_s16816gemm_bf16_128x128", "splitKreduce_kernel",
                 "gemm_fusion_dot_12"):
        assert c(name) == "dense GEMM", name
    assert c("cudnn_generated_fort_native_sdpa_sm90") == "attention"
    assert c("Memset") == "collectives/memcpy"
    assert c("copy_fusion_2") == "other (XLA fusions)"   # an XLA transpose, not a memcpy
    assert c("loop_add_fusion", {"hlo_op": "add.1"}) == "other (XLA fusions)"


def test_fallbacks_without_stream_names_and_without_gpu():
    sp = load_step_profile()
    # no "Stream ..." thread names: every thread of the GPU process except the derived lines counts
    ev = [meta(3, "/device:GPU:0"), meta(3, "XLA Ops", 99), kernel("nvjet_a", 0, 10.0, tid=7, pid=3),
          kernel("fusion.1", 0, 10.0, tid=99, pid=3), kernel("step 0", 0, 50.0, tid=0xDEADBEEF + 1, pid=3)]
    out = sp.gpu_breakdown({"traceEvents": ev}, steps=1)
    assert out["has_gpu"] and out["kernel_ms_per_step"] == pytest.approx(0.01)
    assert out["categories"]["dense GEMM"]["ms_per_step"] == pytest.approx(0.01)
    # a CPU-only trace (what jax writes on a machine without a GPU)
    cpu = {"traceEvents": [meta(701, "/host:CPU"), kernel("PjitFunction(step)", 0, 5.0, tid=1, pid=701)]}
    out = sp.gpu_breakdown(cpu, steps=3)
    assert not out["has_gpu"] and out["processes"] == ["/host:CPU"] and out["gpu_processes"] == []
    # a missing trace file: where it looked is reported
    path, looked = sp.find_trace_file(ROOT / "no-such-dir")
    assert path is None and any("perfetto_trace.json.gz" in x for x in looked)


@pytest.mark.slow
def test_script_smoke_cpu(tmp_path):
    # the tiny config shrunk, 2 timed steps, one profiled step; on CPU there are no GPU kernels
    r = subprocess.run(
        [sys.executable, "benchmarks/step_profile.py", "--config", "tiny", "--set", "n_layer=1",
         "--set", "n_embd=64", "--set", "n_head=2", "--set", "block_size=32", "--batch", "4",
         "--method", "srste", "--steps", "2", "--warmup", "1", "--profile-steps", "1",
         "--trace-dir", str(tmp_path / "trace"), "--json", str(tmp_path / "p.json")],
        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "tokens/s" in r.stdout and "MFU" in r.stdout
    assert "no GPU kernel events" in r.stdout
    res = json.loads((tmp_path / "p.json").read_text())
    assert res["timing"]["tok_per_s"] > 0 and res["mfu"] > 0 and res["tokens_per_step"] == 4 * 32
    assert res["profile"]["has_gpu"] is False and res["profile"]["trace_file"].endswith("perfetto_trace.json.gz")


def test_idle_charged_to_the_kernel_that_ends_the_gap():
    """Each step's kernels run back to back; the only gap is between the steps (step 0 ends at
    436 us, step 1 starts at 1000 us) and ends at step 1's first kernel, the sparse GEMM."""
    sp = load_step_profile()
    out = sp.gpu_breakdown(synthetic_trace(), steps=2)
    gap_ms = (1000.0 - 436.0) / 1e3 / 2  # per step
    assert out["idle_ms_per_step"] == pytest.approx(gap_ms)
    for c in sp.CATEGORIES:
        want = gap_ms if c == "sparse GEMM (2:4)" else 0.0
        assert out["categories"][c]["idle_before_ms_per_step"] == pytest.approx(want, abs=1e-12), c
    dense = out["categories"]["dense GEMM"]["top"]
    assert [k["name"][:5] for k in dense] == ["nvjet", "sm90_"] and dense[0]["ms_per_step"] == pytest.approx(0.2)


def test_timing_check_flags_timed_steps_slower_than_the_gpu_span():
    """Numbers of two H200 runs (docs/BENCHMARKS.md section 10): GPT-2 1558M SR-STE, 10 timed
    steps at 186.7 ms against a profiled GPU span of 169.7 + 2.7 ms, is flagged; 774M, whose
    timed and profiled steps agree, and a run without a GPU profile are not."""
    sp = load_step_profile()
    msg = sp.timing_check(186.73, {"busy_ms_per_step": 169.66, "idle_ms_per_step": 2.70})
    assert msg is not None and "186.73 ms" in msg and "8%" in msg and "--warmup" in msg
    assert sp.timing_check(172.80, {"busy_ms_per_step": 172.25, "idle_ms_per_step": 1.83}) is None
    assert sp.timing_check(100.0, {}) is None

