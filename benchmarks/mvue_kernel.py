"""Time the MVUE + compression kernel of the cuSPARSELt backend by itself, for ncu.

    python benchmarks/mvue_kernel.py --n 4096 --m 16384
    ncu --clock-control none --kernel-name regex:Mvue --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight python benchmarks/mvue_kernel.py --calls 3

Prints the median time of back-to-back calls (a jitted call per launch, no loop harness that
touches dZ) next to an XLA copy of dZ, and the bandwidth over one read of dZ plus one write of
the compressed buffer.
"""

from __future__ import annotations

import argparse

from timing import time_jax


def bench(fn, *args, calls: int) -> float:
    """Median seconds per call of back-to-back jitted calls (timing.time_jax's "pipelined" mode)."""
    return time_jax(fn, args, reps=calls, rounds=5, warmup=1, mode="pipelined")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096, help="features (rows of dZ.T)")
    p.add_argument("--m", type=int, default=16384, help="tokens")
    p.add_argument("--calls", type=int, default=50)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from sparse24_jax_kernels.cusparselt import layout, ops

    ops.load()
    dz = jax.random.normal(jax.random.key(0), (args.m, args.n), jnp.bfloat16)
    seed = jnp.array([1, 2], jnp.uint32)
    mvue = jax.jit(lambda s, d: ops.mvue_compress(s, d, transpose=True))
    copy = jax.jit(lambda d: d * 2)  # one read + one write of dZ
    t = bench(mvue, seed, dz, calls=args.calls)
    tc = bench(copy, dz, calls=args.calls)
    nbytes = args.m * args.n * 2 + layout.compressed_nbytes(args.n, args.m, jnp.dtype(jnp.bfloat16))
    print(f"{jax.devices()[0].device_kind}: dZ {args.m} x {args.n} bf16")
    print(f"MVUE+compress {t * 1e3:.3f} ms ({nbytes / t / 1e9:.0f} GB/s); "
          f"XLA copy of dZ {tc * 1e3:.3f} ms ({2 * dz.size * 2 / tc / 1e9:.0f} GB/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
