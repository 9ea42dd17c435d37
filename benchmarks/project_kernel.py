"""Time the one-pass weight projection of the cuSPARSELt backend against the two-pass path.

    python benchmarks/project_kernel.py --n 11008 --k 4096
    ncu --clock-control none --kernel-name regex:ProjectKernel --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis python benchmarks/project_kernel.py --calls 3

Per optimizer step and layer the backend builds the operands of the projected
weight W_s from the float32 master weight W (N, K). Timed here, back-to-back
jitted calls, median (timing.time_jax's "pipelined" mode):

* one pass (``ops.project_compress``): SR-STE's mask mode (W_s and W_s^T
  compressed) and S-STE's soft threshold (W_s compressed and dense);
* the two-pass path it replaces: XLA's projection + cast, then ``compress`` of
  W_s (and of W_s^T);
* an XLA copy of W (one float32 read + write), the bandwidth yardstick.

GB/s counts the bytes each must move: the one pass reads W (4 B per element,
+1 B of mask) and writes 1 + 1/8 B per compressed matrix (+2 B of dense W_s).
"""

from __future__ import annotations

import argparse

from timing import time_jax


def bench(fn, *args, calls: int) -> float:
    return time_jax(fn, args, reps=calls, rounds=5, warmup=1, mode="pipelined")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=11008, help="out features (rows of W)")
    p.add_argument("--k", type=int, default=4096, help="in features")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--calls", type=int, default=50)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import sparse24_jax as s24
    from sparse24_jax_kernels.cusparselt import layout, ops

    ops.load()
    n, k, dt = args.n, args.k, jnp.dtype(args.dtype)
    w = jax.random.normal(jax.random.key(0), (n, k), jnp.float32)
    mask = s24.transposable_mask_24(w)
    beta = s24.sste_scale(w)
    cw, cwt = layout.compressed_nbytes(n, k, dt), layout.compressed_nbytes(k, n, dt)

    one_mask = jax.jit(lambda w, m: ops.project_compress(w, m, dtype=dt, transpose_too=True))
    one_soft = jax.jit(lambda w, b: ops.project_compress(w, beta=b, dtype=dt, transpose_too=False))

    def two_mask(w, m):
        w_s = jnp.where(m, w, 0.0).astype(dt)
        return ops.compress(w_s), ops.compress(w_s, transpose=True)

    def two_soft(w, b):
        w_s = (b * s24.soft_threshold_24(w)).astype(dt)
        return ops.compress(w_s), w_s

    rows = [
        ("mask: one pass", bench(one_mask, w, mask, calls=args.calls), n * k * 5 + cw + cwt),
        ("mask: two passes", bench(jax.jit(two_mask), w, mask, calls=args.calls), n * k * 5 + cw + cwt),
        ("soft: one pass", bench(one_soft, w, beta, calls=args.calls), n * k * 6 + cw),
        ("soft: two passes", bench(jax.jit(two_soft), w, beta, calls=args.calls), n * k * 6 + cw),
        ("XLA copy of W", bench(jax.jit(lambda w: w * 2), w, calls=args.calls), n * k * 8),
    ]
    print(f"{jax.devices()[0].device_kind}: W {n} x {k} float32 -> {dt.name}")
    for name, t, nbytes in rows:  # bytes: the one pass's minimum (both paths do the same work)
        print(f"{name:18s} {t * 1e3:8.3f} ms  {nbytes / t / 1e9:6.0f} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
