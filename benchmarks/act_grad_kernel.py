"""Time the fused activation-backward + MVUE kernel of the cuSPARSELt backend against the
unfused pair it replaces (XLA's activation backward, then the MVUE kernel), for ncu.

    python benchmarks/act_grad_kernel.py --kind gelu --f 3072 --m 16384
    ncu --clock-control none --kernel-name regex:ActGrad --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight python benchmarks/act_grad_kernel.py --calls 3

Prints the median time of back-to-back jitted calls and the bandwidth over the bytes
each moves (fused: read dA and Z, write dZ and the compressed buffer), next to an XLA
copy of Z.
"""

from __future__ import annotations

import argparse

from timing import time_jax


def bench(fn, *args, calls: int) -> float:
    """Median seconds per call of back-to-back jitted calls (timing.time_jax's "pipelined" mode)."""
    return time_jax(fn, args, reps=calls, rounds=5, warmup=1, mode="pipelined")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("gelu", "swiglu"), default="gelu")
    p.add_argument("--f", type=int, default=3072, help="features of dA (H; F for swiglu)")
    p.add_argument("--m", type=int, default=16384, help="tokens")
    p.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    p.add_argument("--calls", type=int, default=50)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from sparse24_jax.ffn import activation_vjp
    from sparse24_jax_kernels.cusparselt import layout, ops

    ops.load()
    dt = jnp.dtype(args.dtype)
    cols = 2 * args.f if args.kind == "swiglu" else args.f
    z = jax.random.normal(jax.random.key(0), (args.m, cols), dt)
    da = jax.random.normal(jax.random.key(1), (args.m, args.f), dt)
    seed = jnp.array([1, 2], jnp.uint32)
    fused = jax.jit(lambda d, z, s: ops.act_grad_mvue_compress(args.kind, d, z, s))

    def unfused(d, z, s):
        dz = activation_vjp(args.kind, z, d)
        return dz, ops.mvue_compress(s, dz, transpose=True)

    copy = jax.jit(lambda z: z * 2)  # one read + one write of Z
    t = bench(fused, da, z, seed, calls=args.calls)
    tu = bench(jax.jit(unfused), da, z, seed, calls=args.calls)
    tc = bench(copy, z, calls=args.calls)
    buf = layout.compressed_nbytes(cols, args.m, dt)
    nbytes = (da.size + 2 * z.size) * dt.itemsize + buf  # read dA, Z; write dZ, buffer
    print(f"{jax.devices()[0].device_kind}: {args.kind}, Z {args.m} x {cols} {args.dtype}")
    print(f"fused {t * 1e3:.3f} ms ({nbytes / t / 1e9:.0f} GB/s); unfused {tu * 1e3:.3f} ms "
          f"(x{tu / t:.2f}); XLA copy of Z {tc * 1e3:.3f} ms ({2 * z.size * dt.itemsize / tc / 1e9:.0f} GB/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
