"""One FFN block, forward + backward, with a profiler window around one warm call: what
Nsight Compute (ncu) needs to read the hardware counters of each sparse GEMM, fused
epilogue and per-step 2:4 kernel of the block, beside XLA's dense GEMMs of the same block.

    ncu --clock-control none --profile-from-start off --kernel-name regex:'device_kernel|OwnKernel|nvjet' \\
        --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis \\
        --section SourceCounters -o ffn python benchmarks/ncu_ffn.py --shape gpt2-774m --backend cutlass

The block is ffn_block.py's (``sparse24_ffn`` with the backend's fused activation, GELU,
h = 4d, M tokens) and XLA's dense block. Each is compiled and run once outside the window
(XLA's autotuning and the first-call setup launch kernels that would otherwise be
profiled), then run once inside it: cuProfilerStart / cuProfilerStop on the primary
context, which is the one XLA uses. Without ncu the window does nothing, so the script
also runs on its own (it prints the block times of the warm calls, not a benchmark).

What we learned getting ncu to run on an H200 (jax 0.11.2, ncu of the CUDA 13 image, 2026-11-30):

* With XLA's command buffers (CUDA graphs) on, ncu connected to the process and the
  process died with a segmentation fault; a tiny JAX program without custom calls ran.
  With command buffers off the same run worked (the only other change was the
  --kernel-name regex, which cannot matter before a kernel runs). So this script turns
  command buffers off before it imports jax, XLA's
  (``--xla_gpu_enable_command_buffer=``, appended to $XLA_FLAGS) and the CUTLASS
  library's graph-safe twins (``$SPARSE24_CUTLASS_CMD_BUFFER=0``); ``--command-buffers``
  leaves both as they are. The kernels are the same ones a training step launches.
* ncu matches ``--kernel-name`` against the short function name: ``device_kernel`` for
  every CUTLASS GEMM (the template arguments are in the full name only), ``OwnKernel``
  for the compressors, ``nvjet_*`` for cuBLAS's dense GEMMs.
* ``--profile-from-start off`` needs the window; with ``--no-window`` use
  ``--profile-from-start on`` and ``--launch-skip`` / ``--launch-count``, or ncu profiles
  nothing.
* ``--clock-control none`` keeps the GPU's own clocks: under ncu's default lock (base
  clock) the GEMMs run at a clock a training step never sees. In a step the GPU sits at
  its power cap (about 700 W) with the SM clock at 1.4-1.65 GHz (nvidia-smi dmon).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

from shapes import SHAPES


def profiler_window():
    """(start, stop) callables around the CUDA driver's profiler API on device 0's
    primary context; no-ops (with a note) where libcuda is not there."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        print(f"no libcuda ({err}): the profiler window is a no-op", file=sys.stderr)
        return (lambda: None), (lambda: None)
    ctx = ctypes.c_void_p()
    dev = ctypes.c_int()

    def check(rc, what):
        if rc != 0:
            raise RuntimeError(f"{what} returned CUDA error {rc}")

    def start():
        check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        check(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        check(cuda.cuProfilerStart(), "cuProfilerStart")

    def stop():
        check(cuda.cuProfilerStop(), "cuProfilerStop")

    return start, stop


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="gpt2-774m", choices=list(SHAPES))
    p.add_argument("--m", type=int, default=16384, help="tokens")
    p.add_argument("--backend", default="cutlass")
    p.add_argument("--no-dense", dest="dense", action="store_false", help="leave XLA's dense block out")
    p.add_argument("--no-window", dest="window", action="store_false",
                   help="no cuProfilerStart/Stop (for ncu --profile-from-start on with --launch-skip/"
                        "--launch-count instead)")
    p.add_argument("--command-buffers", action="store_true",
                   help="leave XLA's and the CUTLASS library's command buffers as they are "
                        "(ncu crashed with them on: see above)")
    args = p.parse_args(argv)

    if not args.command_buffers:  # before jax is imported: XLA reads its flags once
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer=").strip()
        os.environ["SPARSE24_CUTLASS_CMD_BUFFER"] = "0"

    import jax

    from ffn_block import block_operands, ffn_block, jax_block

    call = block_operands(args.shape, "gelu", args.m)
    blocks = {f"sparse ({args.backend}, fused GELU)": jax.jit(ffn_block("gelu", args.backend, True))}
    if args.dense:
        blocks["XLA dense"] = jax.jit(jax_block("gelu", None))
    for name, fn in blocks.items():  # compile, autotune, first-call setup: outside the window
        jax.block_until_ready(fn(*call))
    start, stop = profiler_window() if args.window else ((lambda: None), (lambda: None))
    for name, fn in blocks.items():
        jax.block_until_ready(fn(*call))
        start()
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*call))
        dt = time.perf_counter() - t0
        stop()
        print(f"{args.shape} M={args.m} {name}: one call {1e3 * dt:.2f} ms (under the profiler)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
