"""One training configuration's step: throughput, MFU, and where the GPU time goes.

    python benchmarks/step_profile.py --config gpt2-774m --method srste --backend cusparselt \\
        --batch 4 --steps 10 --json out.json
    python benchmarks/step_profile.py --config gpt2-124m --method dense --batch 16 --json d.json
    # smoke test on CPU (no GPU kernels in the trace: it says so and still prints tok/s and MFU):
    JAX_PLATFORMS=cpu python benchmarks/step_profile.py --config tiny --steps 2 --warmup 1

What it does, in order:

1. Builds the model, optimizer and jitted step exactly as benchmarks/train_scaling.py does
   (benchmarks/train_step.py's ``prepare``: sparse24_train's init_state + make_train_step on
   cfg's mesh; random tokens, already on the devices). --batch is the global batch of one
   micro-batch (``batch_size``); a step is grad_accum micro-batches. The mesh is the config's
   (by default data parallel over all devices).
2. Runs --warmup steps (the first compiles), then times --steps steps with
   ``block_until_ready`` (benchmarks/timing.py's ``time_steps``): ms/step, tokens/s and

       MFU = flops_per_token * tokens/s / (peak_tflops * 1e12 * devices)

   with sparse24_train.model.flops_per_token: 6 * N + 12 * n_layer * n_embd * block_size
   (PaLM appendix B, as nanoGPT and sparse24-train's metrics.csv count it; N = trainable
   parameters without the position embeddings, the tied token embedding counted once).
   These are dense-equivalent FLOPs: a 2:4 FFN counts as dense, so a sparse step that
   does less arithmetic still has to be faster to score higher. peak_tflops: --peak-tflops,
   else the config's ``peak_tflops`` (989, an H100 SXM's dense bf16).
3. Records --profile-steps more steps under ``jax.profiler.trace(dir,
   create_perfetto_trace=True)`` and reads the ``perfetto_trace.json.gz`` it writes
   (``dir/plugins/profile/<run>/``; found with glob) with plain json/gzip.

Reading the trace (``gpu_breakdown``, a pure function of the loaded JSON, unit-tested):
the file is Chrome trace-event JSON, ``{"traceEvents": [...]}``, durations ``dur`` and times
``ts`` in microseconds. Metadata events (``"ph": "M"``) name processes and threads:
``process_name`` gives each pid a name, ``thread_name`` each (pid, tid). Assumptions (what
jax 0.10/0.11 write; checked on CPU, where the only process is ``/host:CPU``):

* device activity of GPU i is in the process whose name contains ``/device:GPU:`` (its
  pid is small, 1 + i; host processes have large pids);
* in that process, the CUDA streams are threads named ``Stream #<id>(...)``; their complete
  events (``"ph": "X"``) are kernels, memcpys and memsets. The profiler may also add
  derived lines to the same process ("XLA Modules", "XLA Ops", "Steps", "TensorFlow Ops",
  ...) that repeat the kernels' time; they are skipped. If a GPU process has no thread
  named ``Stream...``, every thread except those derived lines (by name, or by a tid of
  0xDEADBEEF or more, where xprof numbers them) is taken. The JSON output lists the threads
  taken and skipped, to check this on a new jax version.

Per step = summed over the profiled steps, divided by --profile-steps and by the number of
GPUs seen. "GPU idle before" charges each gap in a GPU's timeline (between its first and
last kernel) to the category of the kernel that ends the gap: where the GPU waited. "GPU
busy" is the union of the kernel intervals (kernels of several streams that overlap count
once); the per-category times are sums of kernel durations, and their % is of
the summed kernel time (equal to busy time when nothing overlaps, as on one compute stream).

Categories: the first rule whose substring occurs in the lower-cased kernel name wins, in
this order (RULES below):

1. "2:4 per-step kernels": this repo's CUDA kernels (namespace ``s24::``: the compression
   ``Compress24Kernel<...>``, plain, masked and MVUE; ``MvueTransposedKernel``; the one-pass
   weight projection ``ProjectKernel``; the FFN block's activation backward fused with the MVUE,
   ``ActGradMvueKernel``, which also does the activation backward that a dense step runs as
   an XLA fusion) and its Triton kernels (``compress24_kernel``, ``mvue24_kernel``,
   ``soft_threshold24_kernel``, ``transposable_mask_kernel``, ``gated_fwd/bwd_kernel``):
   names containing compress, mask, mvue, soft_threshold or gated_; and the CUTLASS library's
   own compressors (namespace ``s24c::``: ``OwnKernel<OwnProject>``, ``OwnKernel<OwnMvueBlock<32>>``). The mask *search* of the
   xla backend (every mask_interval steps, inside a lax.cond) is ordinary XLA code and lands
   in "dense GEMM"/"other"; it runs only on steps where a refresh is due.
2. "sparse GEMM (2:4)", whichever library runs it: cusparselt, sparse, spmma, spgemm,
   sp_gemm, and the ``sm80_sp``/``sm89_sp``/``sm90_sp``/``_sp_`` prefixes of xmma sparse kernels. The Triton
   backend's ``sparse24_matmul_kernel`` lands here too (its 2:4 GEMM, on dense tensor cores),
   and so do the CUTLASS backend's sm90 sparse GEMMs (their mangled names carry the
   collective's ``Sparse``).
3. "collectives/memcpy": nccl, memcpy, memset and the collective names (all-reduce,
   all-gather, reduce-scatter, all-to-all, collective-permute, sendrecv). XLA's own copy
   and transpose kernels (``copy_fusion`` ...) are not memcpys: they stay in "other".
4. "attention": flash, fmha, sdpa, attention, attn, softmax, cudnn. On a GPU in bf16 the
   model's attention is cuDNN's fused kernel (``attention = "auto"``: ``cudnn_generated_...
   sdpa...`` kernels, counted here). With ``attention = "xla"`` it is two batched GEMMs (cuBLAS
   kernels, which therefore count as "dense GEMM") plus mask/softmax fusions (named after
   their HLO ops, e.g. ``loop_*_fusion``/``input_reduce_fusion``, counted as "other"). Only
   when a kernel name says so (a Triton softmax fusion, cuDNN/flash kernels) or when the
   event's args carry the op name of the attention einsum (``...BNTS...`` or
   ``dot_product_attention``, in case the profiler records op names) is time attributed
   here. A "softmax" kernel may also be the loss's log-softmax over the vocabulary.
5. "dense GEMM": gemm, gemv, cublas, cutlass, xmma, nvjet, wgmma, matmul, splitkreduce:
   the attention projections, attention's two GEMMs, the LM head, dense FFNs, and the
   dense GEMMs that S-STE's input gradient or dense fine-tuning use.
6. "other (XLA fusions)": the rest (elementwise/reduction fusions, LayerNorm, GELU, loss,
   AdamW, copies/transposes, the mask search's non-GEMM parts).

Output: a markdown table (category, ms/step, % of GPU kernel time), GPU busy vs wall step
time (with a warning when the timed steps run over 5% longer than the profiled steps' GPU
span: first-step effects in the timed window), the top 15 kernels by time, and everything in
--json. On a machine without a GPU
(or if the profiler records no device activity) it says so and reports tok/s and MFU only.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import jax

# benchmarks/ itself: a script's directory is on sys.path already, but tests load this file by path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import time_steps  # noqa: E402
from train_step import flops_per_token, load_config, num_params, prepare  # noqa: E402  (the repo root too)

CATEGORIES = ("sparse GEMM (2:4)", "2:4 per-step kernels", "dense GEMM", "attention",
              "collectives/memcpy", "other (XLA fusions)")
OTHER = CATEGORIES[-1]

# First match wins, on the lower-cased kernel name (the module docstring explains each rule).
RULES = (
    ("2:4 per-step kernels", ("compress", "mask", "mvue", "soft_threshold", "gated_", "s24::", "s24c::")),
    ("sparse GEMM (2:4)", ("cusparselt", "sparse", "spmma", "spgemm", "sp_gemm", "sm80_sp",
                           "sm86_sp", "sm89_sp", "sm90_sp", "sm100_sp", "_sp_")),
    ("collectives/memcpy", ("nccl", "memcpy", "memset", "all-reduce", "allreduce", "all_reduce",
                            "all-gather", "allgather", "all_gather", "reduce-scatter", "reducescatter",
                            "reduce_scatter", "all-to-all", "alltoall", "all_to_all",
                            "collective-permute", "collective_permute", "sendrecv")),
    ("attention", ("flash", "fmha", "sdpa", "attention", "attn", "softmax", "cudnn")),
    ("dense GEMM", ("gemm", "gemv", "cublas", "cutlass", "xmma", "nvjet", "wgmma", "matmul",
                    "splitkreduce")),
)
# Op names of jax.nn.dot_product_attention's XLA path (its einsums are "BTNH,BSNH->BNTS" and
# "BNTS,BSNH->BTNH"), should the profiler put op names into a kernel event's args.
ATTENTION_OP = re.compile(r"BNTS|dot_product_attention")

# Lines the profiler may derive from the kernels and add to a device process: not kernels.
DERIVED_LINES = ("xla modules", "xla ops", "steps", "tensorflow ops", "tensorflow name scope",
                 "framework ops", "framework name scope", "source code", "xla tracem", "launch stats",
                 "async xla ops", "sparsecore")
DERIVED_TID_MIN = 0xDEADBEEF  # xprof numbers its derived lines from here; CUDA stream lines use stream ids


def classify(name: str, args: dict | None = None) -> str:
    """The category of one device kernel (see RULES and the module docstring)."""
    low = name.lower()
    cat = OTHER
    for category, needles in RULES:
        if any(n in low for n in needles):
            cat = category
            break
    if cat in ("dense GEMM", OTHER) and args:
        text = " ".join(v for v in args.values() if isinstance(v, str))
        if ATTENTION_OP.search(text):
            cat = "attention"
    return cat


def device_kernel_events(trace) -> tuple[list[dict], dict]:
    """The complete events of the GPU streams in a loaded perfetto/Chrome trace.

    Returns (events, info): info names the GPU processes and the threads taken and skipped.
    """
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else list(trace)
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") != "M":
            continue
        if e.get("name") == "process_name":
            procs[e.get("pid")] = str(e.get("args", {}).get("name", ""))
        elif e.get("name") == "thread_name":
            threads[(e.get("pid"), e.get("tid"))] = str(e.get("args", {}).get("name", ""))
    gpu_pids = {pid for pid, name in procs.items() if "/device:GPU:" in name}
    keep, skipped = set(), set()
    for pid in gpu_pids:
        tids = {tid for (p, tid) in threads if p == pid}
        tids |= {e.get("tid") for e in events if e.get("pid") == pid and e.get("ph") == "X"}
        streams = {t for t in tids if threads.get((pid, t), "").lower().startswith("stream")}
        for t in tids:
            tname = threads.get((pid, t), "").lower()
            if streams:
                ok = t in streams
            else:
                ok = not tname.startswith(DERIVED_LINES) and not (isinstance(t, int) and t >= DERIVED_TID_MIN)
            (keep if ok else skipped).add((pid, t))
    kernels = [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in keep
               and e.get("dur") is not None]
    info = dict(processes=sorted(procs.values()), gpu_processes=sorted(procs[p] for p in gpu_pids),
                threads=sorted(threads.get(k, str(k[1])) for k in keep),
                skipped_threads=sorted(threads.get(k, str(k[1])) for k in skipped))
    return kernels, info


def _union_us(intervals) -> float:
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def gpu_breakdown(trace, steps: int, top: int = 15) -> dict:
    """Per-step GPU time by category from a loaded trace (dict with "traceEvents", or the list).

    steps: how many training steps the trace holds. Times are per step and per GPU, in ms.
    Returns {"has_gpu": False, ...} when the trace holds no GPU kernel events.
    """
    kernels, info = device_kernel_events(trace)
    n_gpu = max(len(info["gpu_processes"]), 1)
    per_step = max(steps, 1) * n_gpu
    div = 1e3 * per_step  # us summed over steps and GPUs -> ms per step per GPU
    out = dict(info, steps=steps, n_gpus=len(info["gpu_processes"]), n_kernels=len(kernels),
               has_gpu=bool(kernels))
    if not kernels:
        return out
    cat_us, cat_n = defaultdict(float), defaultdict(int)
    per_name = defaultdict(lambda: [0.0, 0])
    by_pid = defaultdict(list)
    for e in kernels:
        name, dur = str(e.get("name", "")), float(e["dur"])
        cat = classify(name, e.get("args"))
        cat_us[cat] += dur
        cat_n[cat] += 1
        per_name[(name, cat)][0] += dur
        per_name[(name, cat)][1] += 1
        by_pid[e.get("pid")].append((float(e.get("ts", 0.0)), float(e.get("ts", 0.0)) + dur, cat))
    total_us = sum(cat_us.values())
    busy_us = sum(_union_us([iv[:2] for iv in ivs]) for ivs in by_pid.values())
    idle_us = _idle_before(by_pid.values())

    def row(n, c, us, k):
        return dict(name=n, category=c, ms_per_step=us / div, calls_per_step=k / per_step,
                    pct=100.0 * us / total_us if total_us else 0.0)

    ranked = sorted(per_name.items(), key=lambda kv: -kv[1][0])
    out.update(
        kernel_ms_per_step=total_us / div, busy_ms_per_step=busy_us / div,
        kernels_per_step=len(kernels) / per_step,
        idle_ms_per_step=sum(idle_us.values()) / div,
        categories={c: dict(ms_per_step=cat_us[c] / div, pct=100.0 * cat_us[c] / total_us if total_us else 0.0,
                            kernels_per_step=cat_n[c] / per_step, idle_before_ms_per_step=idle_us[c] / div,
                            top=[row(n, cc, us, k) for (n, cc), (us, k) in ranked if cc == c][:3])
                    for c in CATEGORIES},
        top_kernels=[row(n, c, us, k) for (n, c), (us, k) in ranked[:top]])
    return out


#: timed steps this much slower than the profiled steps' GPU span get a warning line
TIMING_GAP = 0.05


def timing_check(step_ms: float, prof: dict) -> str | None:
    """A warning when the timed steps (``step_ms``) took more than :data:`TIMING_GAP` longer
    than the profiled steps' GPU span per step (busy time plus the idle gaps between their
    kernels): then the timed window holds something the profiled one does not (first-step
    effects such as the allocator growing its pool or a late compilation, or host stalls
    between steps), and its tokens/s understate the steady state. None when they agree."""
    span = prof.get("busy_ms_per_step", 0.0) + prof.get("idle_ms_per_step", 0.0)
    if span <= 0 or step_ms <= span * (1 + TIMING_GAP):
        return None
    return (f"* **timing**: the timed steps took {step_ms:.2f} ms each, {100 * (step_ms / span - 1):.0f}% "
            f"more than the profiled steps' GPU span ({span:.2f} ms: busy + idle between kernels): "
            f"the timed window holds first-step effects or host stalls; time more steps or raise "
            f"--warmup before trusting its tokens/s")


def _idle_before(timelines) -> dict:
    """GPU idle time (us) between the first and last kernel of each GPU, each gap charged to
    the category of the kernel that ends it: a gap before a sparse GEMM is time the GPU waited
    for that launch (host-side work of the custom call, a cross-stream wait, ...)."""
    idle = defaultdict(float)
    for ivs in timelines:
        end = None
        for s, e, cat in sorted(ivs):
            if end is not None and s > end:
                idle[cat] += s - end
            end = e if end is None else max(end, e)
    return idle


def find_trace_file(trace_dir) -> tuple[Path | None, list[str]]:
    """The newest perfetto_trace.json.gz under trace_dir (else the *.trace.json.gz it is made
    from: the same events plus a metadata block); also the patterns searched."""
    patterns = [os.path.join(str(trace_dir), "**", "perfetto_trace.json.gz"),
                os.path.join(str(trace_dir), "**", "*.trace.json.gz")]
    for pat in patterns:
        found = glob.glob(pat, recursive=True)
        if found:
            return Path(max(found, key=os.path.getmtime)), patterns
    return None, patterns


def load_trace(path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _short(name: str, width: int = 96) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 3] + "..."


def report(result: dict) -> str:
    """The markdown printed at the end (result: main's dict)."""
    t = result["timing"]
    lines = [f"# step profile: {result['config']} {result['method']} (backend {result['backend']}), "
             f"{result['devices']} x {result['device_kind']}",
             "",
             f"{result['tokens_per_step']:,} tokens/step ({result['batch']} x {result['block_size']}"
             f"{' x ' + str(result['grad_accum']) if result['grad_accum'] > 1 else ''}), "
             f"{result['params_m']:.1f}M params (non-embedding), {result['flops_per_token'] / 1e9:.3f} GFLOP/token",
             "",
             f"* step: **{t['step_ms']:.2f} ms**, **{t['tok_per_s']:,.0f} tokens/s** "
             f"({t['steps']} timed steps after {t['warmup']} warm-up steps, {t['warmup_s']:.1f} s with compilation)",
             f"* MFU: **{100 * result['mfu']:.3g}%** = {result['flops_per_token'] / 1e9:.3f} GFLOP/token x tok/s / "
             f"({result['peak_tflops']:g} TFLOP/s x {result['devices']} device(s)); dense-equivalent FLOPs "
             f"(6N + 12 L d T)"]
    if result.get("peak_memory_gb") is not None:
        lines.append(f"* peak device memory: {result['peak_memory_gb']:.1f} GB")
    p = result.get("profile")
    if not p:
        lines.append("* no profile taken (--profile-steps 0)")
        return "\n".join(lines) + "\n"
    if p.get("error"):
        lines.append(f"* profile: {p['error']}")
    if not p.get("has_gpu"):
        lines.append(f"* profile: **no GPU kernel events in the trace** ({p.get('why', 'no /device:GPU: process')}; "
                     f"processes: {', '.join(p.get('processes', [])) or 'none'}): no GPU time breakdown. "
                     f"Trace: {p.get('trace_file') or 'not found'}")
        return "\n".join(lines) + "\n"
    wall = p["wall_ms_per_step"]
    check = timing_check(t["step_ms"], p)
    lines += ([check] if check else []) + [
              f"* GPU busy: **{p['busy_ms_per_step']:.2f} ms/step** of {t['step_ms']:.2f} ms wall "
              f"({100 * p['busy_ms_per_step'] / t['step_ms']:.0f}%; profiled steps took {wall:.2f} ms each); "
              f"summed kernel time {p['kernel_ms_per_step']:.2f} ms/step, {p['kernels_per_step']:.0f} kernels/step "
              f"on {p['n_gpus']} GPU(s), streams: {', '.join(p['threads'])}",
              f"* trace: {p['trace_file']}",
              "",
              "| category | ms/step | % of GPU kernel time | kernels/step | GPU idle before, ms/step |",
              "|---|---:|---:|---:|---:|"]
    for c in CATEGORIES:
        x = p["categories"][c]
        lines.append(f"| {c} | {x['ms_per_step']:.3f} | {x['pct']:.1f} | {x['kernels_per_step']:.0f} "
                     f"| {x.get('idle_before_ms_per_step', 0.0):.3f} |")
    lines.append(f"| **total (GPU busy: {p['busy_ms_per_step']:.3f}; wall step: {t['step_ms']:.3f})** | "
                 f"{p['kernel_ms_per_step']:.3f} | 100.0 | {p['kernels_per_step']:.0f} "
                 f"| {p.get('idle_ms_per_step', 0.0):.3f} |")
    lines += ["", "Slowest kernels of each category (ms/step, calls/step):", ""]
    for c in CATEGORIES:
        tops = p["categories"][c].get("top", [])
        if tops:
            lines.append(f"* {c}: " + "; ".join(f"`{_short(k['name'], 60)}` {k['ms_per_step']:.3f} "
                                                 f"({k['calls_per_step']:.0f})" for k in tops))
    lines += ["", f"Top {len(p['top_kernels'])} kernels by time:", "",
              "| kernel | category | ms/step | calls/step | % |", "|---|---|---:|---:|---:|"]
    for k in p["top_kernels"]:
        lines.append(f"| `{_short(k['name'])}` | {k['category']} | {k['ms_per_step']:.3f} | "
                     f"{k['calls_per_step']:.1f} | {k['pct']:.1f} |")
    return "\n".join(lines) + "\n"


def hlo_fusions(hlo_text: str, names) -> dict:
    """For each kernel name (e.g. ``loop_convert_multiply_fusion_35``), the fusion instruction
    of that name in the optimized HLO (output shape, the JAX op in its metadata) and the
    opcodes of the computation it calls. Kernel names are HLO names with '.' -> '_'."""
    instr = {}
    comps, cur = {}, None
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        head = re.match(r"\s*%?([\w.\-]+) [(].*[)] -> .* {$", line)
        if head and not line.startswith(" "):
            cur = comps.setdefault(head.group(1), [])
            continue
        if line.startswith("}"):
            cur = None
            continue
        if m:
            if cur is not None:
                op = re.search(r"\b([a-z][\w\-]*)\(", m.group(2))
                cur.append(op.group(1) if op else "?")
            if " fusion(" in m.group(2):
                instr[m.group(1).replace(".", "_")] = m.group(2)
    out = {}
    for n in names:
        rhs = instr.get(n)
        if rhs is None:
            continue
        calls = re.search(r"calls=%?([\w.\-]+)", rhs)
        meta = re.search(r'op_name="([^"]*)"', rhs)
        ops = comps.get(calls.group(1), []) if calls else []
        counts = defaultdict(int)
        for o in ops:
            counts[o] += 1
        out[n] = dict(shape=rhs.split(" fusion(")[0], op_name=meta.group(1) if meta else "",
                      ops=dict(sorted(counts.items(), key=lambda kv: -kv[1])))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="config name (tiny, gpt2-124m, ...) or .toml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--method", default=None, help="dense, srste, sste or ste (default: the config's)")
    p.add_argument("--backend", default=None, help="2:4 backend: xla, triton, cusparselt (default: the config's)")
    p.add_argument("--batch", type=int, default=None, help="sequences per micro-batch, global (default: the config's)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default 1)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
    p.add_argument("--profile-steps", type=int, default=3, help="steps recorded by the profiler (0: no trace)")
    p.add_argument("--trace-dir", help="where jax.profiler writes (default: a new temporary directory)")
    p.add_argument("--hlo-fusions", type=int, default=0, metavar="N",
                   help="print what the N slowest XLA fusions of the profile compute (their HLO: shape, "
                        "JAX op, opcodes); lowers and compiles the step once more")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s of one device for MFU (default: the config's peak_tflops)")
    p.add_argument("--top", type=int, default=15, help="kernels listed by time")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    logging.getLogger("sparse24_train").setLevel(logging.ERROR)

    base = load_config(args.config, list(args.overrides))
    total = args.warmup + args.steps + args.profile_steps
    cfg = dataclasses.replace(
        base, method=args.method or base.method, backend=args.backend or base.backend,
        batch_size=args.batch or base.batch_size, grad_accum=args.grad_accum,
        max_steps=max(base.max_steps, total + 1)).validate()
    peak = args.peak_tflops or cfg.peak_tflops

    mesh, graphdef, state, step, xs, ys = prepare(cfg)
    from flax import nnx
    n_params = num_params(nnx.merge(graphdef, state)[0])
    fpt = flops_per_token(cfg, n_params)
    devices = mesh.size
    print(f"# {args.config}: method {cfg.method}, backend {cfg.backend}, {n_params / 1e6:.1f}M params, "
          f"{cfg.tokens_per_step:,} tokens/step, {devices} device(s) of {jax.devices()[0].device_kind}",
          file=sys.stderr, flush=True)

    warmup_s, state, m = time_steps(step, state, xs, ys, args.warmup)
    dt, state, m = time_steps(step, state, xs, ys, args.steps, m)
    tok_s = args.steps * cfg.tokens_per_step / dt if args.steps else float("nan")
    timing = dict(steps=args.steps, warmup=args.warmup, warmup_s=warmup_s,
                  step_ms=1e3 * dt / max(args.steps, 1), tok_per_s=tok_s, loss=float(m["loss"]))
    print(f"compile + warm-up {timing['warmup_s']:.1f} s; {timing['step_ms']:.2f} ms/step, {tok_s:,.0f} tok/s",
          file=sys.stderr, flush=True)
    mem = None
    try:
        stats = jax.devices()[0].memory_stats() or {}
        mem = stats.get("peak_bytes_in_use")
    except Exception:  # CPU devices may not report memory
        pass

    result = dict(config=args.config, overrides=args.overrides, method=cfg.method,
                  backend=cfg.backend if cfg.method != "dense" else "-", batch=cfg.batch_size,
                  grad_accum=cfg.grad_accum, block_size=cfg.block_size, tokens_per_step=cfg.tokens_per_step,
                  devices=devices, device_kind=jax.devices()[0].device_kind, platform=jax.devices()[0].platform,
                  jax_version=jax.__version__, params_m=n_params / 1e6, flops_per_token=fpt,
                  peak_tflops=peak, mfu=fpt * tok_s / (peak * 1e12 * devices), timing=timing,
                  peak_memory_gb=None if mem is None else mem / 1e9,
                  mfu_formula="flops_per_token * tok/s / (peak_tflops * 1e12 * devices); flops_per_token = "
                              "6 * N + 12 * n_layer * n_embd * block_size (sparse24_train.model.flops_per_token)")

    if args.profile_steps > 0:
        trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix="step_profile_"))
        prof = dict(trace_dir=str(trace_dir))
        tp = time.perf_counter()
        try:
            with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
                for i in range(args.profile_steps):
                    with jax.profiler.StepTraceAnnotation("train", step_num=i):
                        state, m = step(state, xs, ys)
                jax.block_until_ready((state, m))
                wall = time.perf_counter() - tp
        except Exception as e:  # e.g. no CUPTI: keep the timing, say why there is no breakdown
            wall = time.perf_counter() - tp
            prof["error"] = f"jax.profiler.trace failed: {type(e).__name__}: {e}"
        prof["wall_ms_per_step"] = 1e3 * wall / args.profile_steps
        path, looked = find_trace_file(trace_dir)
        if path is None:
            prof.update(has_gpu=False, trace_file=None,
                        why=f"no trace file found; looked for {' and '.join(looked)}")
            print(f"step_profile: no perfetto_trace.json.gz found; looked for {' and '.join(looked)}",
                  file=sys.stderr)
        else:
            prof["trace_file"] = str(path)
            prof.update(gpu_breakdown(load_trace(path), args.profile_steps, top=args.top))
            if not prof["has_gpu"]:
                prof["why"] = ("no process named /device:GPU:* in the trace" if not prof["gpu_processes"]
                               else "the GPU processes hold no kernel events")
        result["profile"] = prof
        if args.hlo_fusions and prof.get("has_gpu"):
            names = [k["name"] for k in prof["top_kernels"] if k["category"] == OTHER][: args.hlo_fusions]
            hlo = step.lower(state, xs, ys).compile().as_text()
            result["hlo_fusions"] = hlo_fusions(hlo, names)

    text = report(result)
    print(text)
    for name, f in result.get("hlo_fusions", {}).items():
        print(f"- `{name}`: {f['shape']}; op {f['op_name'] or '?'}; ops {f['ops']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
