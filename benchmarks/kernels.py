"""Benchmark the Triton kernels against their XLA references at GPT-2 / LLaMA FFN shapes.

For each FFN shape (d, 4d) and M = 16384 tokens it times, after warm-up:

* the transposable mask search of the layer's two FFN weights (the recipe runs
  it every 40 steps) and the compression of W and W.T (every optimizer step),
  (``compress_both``: both from one read of W; the two single-output passes
  are timed too), vs XLA's transposable_mask_24 and compress_24, and their cost per step over
  all layers (compression + mask search / 40) as % of an (estimated) step;
* MVUE + compress of dZ.T for both FFN GEMMs, vs XLA's mvue_24 + compress_24,
  and vs one read + write (a copy) of dZ;
* fused GEGLU and SwiGLU forward + backward on the (M, 2*4d) GEMM output
  (row-major and transposed), vs XLA's reference (forward and backward jitted
  apart, as in a training step, and together) and vs a copy of the same bytes
  (8 M 4d elements; see bench_gated);
* the three 2:4 GEMMs (Triton) vs XLA's dense dots, in TFLOP/s.

Every time is per call with calls issued back to back (``bench_stream``): the
device time a training step pays, without a host round trip per call. The mask
search and the compressions take less time than dispatching a jitted program,
so they are timed as the slope over 8 calls in one program (``per_call``).
Both are in benchmarks/timing.py, with the other benchmarks' harnesses.
GB/s counts the bytes a kernel must move (inputs read once, outputs written
once); % of bandwidth divides by the device's nominal HBM bandwidth (H100
SXM 3.35 TB/s, H200 4.8 TB/s; --hbm-gbs to override) and by a measured copy.

    python benchmarks/kernels.py [--json out.json] [--shapes 124M,350M] [--dtype bfloat16]

Targets (printed as pass/fail): mask search (every 40 steps) + compression
(every step) of all FFN weights < 1% of a training step; MVUE + compress within 2x of a copy; gated act fwd +
bwd within 1.3x of a copy of the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

import sparse24_jax as s24

from timing import bench_stream, per_call  # benchmarks/timing.py, beside this script

# name: (d_model, d_ff, n_layer, params)
SHAPES = {
    "124M": (768, 3072, 12, 124e6),
    "350M": (1024, 4096, 24, 350e6),
    "774M": (1280, 5120, 36, 774e6),
    "1558M": (1600, 6400, 48, 1558e6),
    "7B": (4096, 11008, 32, 6.7e9),
}
NOMINAL_HBM_GBS = {"H100": 3350.0, "H200": 4800.0}
NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}
# The recipe (docs/algorithms.md, configs/gpt2-*.toml mask_interval): the transposable
# mask is searched every 40 optimizer steps, W and W.T are compressed every step.
MASK_INTERVAL = 40


def bench_gated(m, f, dt, key):
    """Fused GEGLU / SwiGLU forward + backward on the (M, 2F) up-projection
    output, vs XLA's reference and vs a copy of the same bytes.

    Bytes: forward reads h (2MF) and writes y (MF); backward reads h and dy
    (3MF) and writes dh (2MF): 8MF elements, the minimum for two passes (the
    activation is recomputed, not saved). The copy baseline moves exactly that
    many bytes: one read and one write of an (M, 4F) array. (Until 2026-11 the
    baseline was a copy of h alone, 4MF: even a perfect kernel read 2x "a copy".)

    XLA is timed two ways: ``xla_joint``, forward and backward in one jit,
    where XLA fuses them into one pass that reads h once (6MF, which a
    training step cannot do: the two passes are separated by the rest of the
    network), and ``xla``, two jitted functions, the training-step situation.
    Ours (the jax-triton kernels, two launches) is timed as one jit of
    ``jax.vjp``: its custom_vjp runs the forward and the backward kernel.
    Every time is per call with calls issued back to back (bench_stream), so
    host dispatch (tens of us) does not count against the shorter kernels.
    """
    from sparse24_jax_kernels.triton import gated  # noqa: PLC0415

    es = jnp.dtype(dt).itemsize
    k1, k2, k3 = jax.random.split(key, 3)
    h = jax.random.normal(k1, (m, 2 * f), dt)
    ht = jnp.asarray(h.T)  # the transposed (2F, M) layout
    dy = jax.random.normal(k2, (m, f), dt)
    buf = jax.random.normal(k3, (m, 4 * f), dt)  # 8MF bytes through a copy
    copy = jax.jit(lambda a: a + a)

    def fb(fn):
        def f_(h, dy):
            y, vjp = jax.vjp(fn, h)
            return y, vjp(dy)[0]

        return jax.jit(f_)

    def ref(kind):
        return lambda h: s24.gated_activation(h, kind)

    out = {}
    t_copy = bench_stream(copy, buf)
    bytes_g = 8 * m * f * es
    for kind in ("geglu", "swiglu"):
        t = bench_stream(fb(lambda h, kind=kind: gated.gated_act(h, kind)), h, dy)
        t_t = bench_stream(fb(lambda h, kind=kind: gated.gated_act(h, kind, transposed=True)), ht, dy)
        t_joint = bench_stream(fb(ref(kind)), h, dy)
        r_fwd = jax.jit(ref(kind))
        r_bwd = jax.jit(lambda h, dy, kind=kind: jax.vjp(ref(kind), h)[1](dy)[0])
        t_sep = bench_stream(r_fwd, h) + bench_stream(r_bwd, h, dy)
        out.update({
            f"{kind}_ms": t * 1e3, f"{kind}_transposed_ms": t_t * 1e3,
            f"{kind}_xla_ms": t_sep * 1e3, f"{kind}_xla_joint_ms": t_joint * 1e3,
            f"{kind}_gbs": bytes_g / t / 1e9, f"{kind}_vs_copy": t / t_copy,
            f"{kind}_transposed_vs_copy": t_t / t_copy, f"{kind}_xla_vs_copy": t_sep / t_copy,
        })
    # names the table and the targets read (GEGLU is the issue's target)
    out.update(
        gated_ms=out["geglu_ms"], gated_transposed_ms=out["geglu_transposed_ms"], gated_xla_ms=out["geglu_xla_ms"],
        gated_xla_joint_ms=out["geglu_xla_joint_ms"], gated_copy_ms=t_copy * 1e3, gated_gbs=out["geglu_gbs"],
        gated_vs_copy=max(out["geglu_vs_copy"], out["geglu_transposed_vs_copy"]),
        gated_copy_gbs=2 * m * 4 * f * es / t_copy / 1e9,
    )
    return out


def gated_markdown(rows) -> str:
    """The gated-activation table: ms of forward + backward and the ratio to a
    copy of the same bytes (8MF elements)."""
    out = [
        "| model | F | copy of 8MF ms (GB/s) | kind | ours ms (transposed) | / copy (transposed) "
        "| XLA fwd, bwd jitted apart ms (/ copy) | XLA fwd+bwd in one jit ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for kind in ("geglu", "swiglu"):
            out.append(
                f"| {r['model']} | {r['d_ff']} | {r['gated_copy_ms']:.3f} ({r['gated_copy_gbs']:.0f}) | {kind} "
                f"| {r[kind + '_ms']:.3f} ({r[kind + '_transposed_ms']:.3f}) "
                f"| {r[kind + '_vs_copy']:.2f}x ({r[kind + '_transposed_vs_copy']:.2f}x) "
                f"| {r[kind + '_xla_ms']:.3f} ({r[kind + '_xla_vs_copy']:.2f}x) | {r[kind + '_xla_joint_ms']:.3f} |"
            )
    return "\n".join(out)


def _device_numbers(args):
    kind = jax.devices()[0].device_kind
    hbm = args.hbm_gbs or next((v for k, v in NOMINAL_HBM_GBS.items() if k in kind), None)
    tfl = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in kind), None)
    return kind, hbm, tfl


def run(args):
    from sparse24_jax_kernels.triton import compress, mask_search, mvue  # noqa: PLC0415

    dt = jnp.dtype(args.dtype)
    es = dt.itemsize
    kind, hbm, tfl = _device_numbers(args)
    m = args.tokens
    rows = []
    key = jax.random.key(0)
    copy = jax.jit(lambda a: a + a)  # one read, one write, the floor for any pass
    for name in args.shapes.split(","):
        d, f, n_layer, params = SHAPES[name]
        r = {"model": name, "d": d, "d_ff": f, "tokens": m}
        w1 = jax.random.normal(key, (f, d), jnp.float32)  # up-projection (N=4d, K=d)
        w2 = jax.random.normal(key, (d, f), jnp.float32)  # down-projection (N=d, K=4d)
        dz1 = jax.random.normal(key, (m, f), dt)
        dz2 = jax.random.normal(key, (m, d), dt)
        if args.only == "gated":  # the gated activation alone (a short device run)
            r.update(bench_gated(m, f, dt, key))
            rows.append(r)
            print(f"done {name}", file=sys.stderr, flush=True)
            continue

        # --- mask search (every MASK_INTERVAL steps) and compression of W and W.T
        # (every optimizer step), both FFN weights. Timed back to back
        # (bench_stream): the device time a step pays, without one host
        # round trip per call (tens of us, the size of these kernels).
        def tri_compress(w, msk):  # what the triton backend runs every step: both from one read
            return compress.compress_both(w, msk, dtype=dt)

        def tri_compress_apart(w, msk):  # the two single-output kernels, for comparison
            return compress.compress(w, msk, dtype=dt), compress.compress(w, msk, transpose=True, dtype=dt)

        def xla_compress(w, msk):
            ws = w.astype(dt)
            return s24.compress_24(ws, msk), s24.compress_24(ws.T, msk.T)

        # Per-call device time of these short kernels (tens of us) by the slope over copies:
        # back-to-back jitted calls would time the host's dispatch of each call instead.
        t_mask = sum(per_call(mask_search.transposable_mask, w) for w in (w1, w2))
        t_maskx = sum(per_call(s24.transposable_mask_24, w) for w in (w1, w2))
        msk1, msk2 = s24.transposable_mask_24(w1), s24.transposable_mask_24(w2)
        t_c = per_call(tri_compress, w1, msk1) + per_call(tri_compress, w2, msk2)
        t_cx = per_call(xla_compress, w1, msk1) + per_call(xla_compress, w2, msk2)
        t_ca = per_call(tri_compress_apart, w1, msk1) + per_call(tri_compress_apart, w2, msk2)
        wb = d * f  # elements of one weight
        bytes_mask = 2 * (wb * 4 + wb)  # read fp32 W, write the uint8 mask (both weights)
        # read fp32 W + mask once, write 2 packed copies (values + metadata), both weights
        bytes_c = 2 * (wb * 5 + 2 * (wb // 2 * es + wb // 8))
        # training step estimate: 6 * params * tokens FLOPs at 40% of dense peak
        step_s = args.step_ms / 1e3 if args.step_ms else 6 * params * m / ((tfl or 989.0) * 1e12 * 0.4)
        per_step = n_layer * (t_c + t_mask / MASK_INTERVAL)  # the recipe's cost per step
        r.update(
            mask_ms=t_mask * 1e3, mask_xla_ms=t_maskx * 1e3, mask_gbs=bytes_mask / t_mask / 1e9,
            compress_ms=t_c * 1e3, compress_xla_ms=t_cx * 1e3, compress_gbs=bytes_c / t_c / 1e9,
            compress_apart_ms=t_ca * 1e3,
            step_ms_est=step_s * 1e3,
            recipe_all_layers_pct_step=100 * per_step / step_s,
            every_step_all_layers_pct_step=100 * n_layer * (t_c + t_mask) / step_s,
            compress_all_layers_pct_step=100 * n_layer * t_c / step_s,
        )

        # --- MVUE + compress of dZ.T, both GEMMs
        mv = jax.jit(mvue.mvue_compress)
        mvx = jax.jit(lambda k, z: s24.compress_24(*(lambda s: (s, s != 0))(s24.mvue_24(k, z.T))))
        t_mv = bench_stream(mv, key, dz1) + bench_stream(mv, key, dz2)
        t_mvx = bench_stream(mvx, key, dz1) + bench_stream(mvx, key, dz2)
        t_cp = bench_stream(copy, dz1) + bench_stream(copy, dz2)
        n_el = m * (d + f)
        bytes_mv = n_el * es + n_el // 2 * es + n_el // 8
        r.update(
            mvue_ms=t_mv * 1e3, mvue_xla_ms=t_mvx * 1e3, mvue_copy_ms=t_cp * 1e3,
            mvue_gbs=bytes_mv / t_mv / 1e9, mvue_vs_copy=t_mv / t_cp,
        )

        # --- gated act fwd + bwd
        r.update(bench_gated(m, f, dt, key))

        # --- GEMMs
        x = jax.random.normal(key, (m, d), dt)
        ws = jnp.where(msk1, w1, 0).astype(dt)  # (4d, d)
        be = s24.get_backend("triton")
        w_op = jax.jit(lambda w: be.prepare_weight(w, transposable=True))(ws)
        g = jax.jit(be.prune_grad)(key, dz1)
        flops = 2 * m * d * f
        t_f = bench_stream(jax.jit(be.matmul_fwd), x, w_op)
        t_dx = bench_stream(jax.jit(be.matmul_dx), dz1, w_op)
        t_dw = bench_stream(jax.jit(be.matmul_dw), g, x)
        dense = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype)  # noqa: E731
        t_fx = bench_stream(jax.jit(lambda x, w: dense(x, w.T)), x, ws)
        t_dxx = bench_stream(jax.jit(lambda z, w: dense(z, w)), dz1, ws)
        t_dwx = bench_stream(jax.jit(lambda z, x: jnp.dot(z.T, x, preferred_element_type=jnp.float32)), dz1, x)
        r.update(
            gemm_fwd_tflops=flops / t_f / 1e12, gemm_fwd_dense_tflops=flops / t_fx / 1e12,
            gemm_dx_tflops=flops / t_dx / 1e12, gemm_dx_dense_tflops=flops / t_dxx / 1e12,
            gemm_dw_tflops=flops / t_dw / 1e12, gemm_dw_dense_tflops=flops / t_dwx / 1e12,
        )
        if hbm:
            r.update(
                mask_pct_hbm=100 * r["mask_gbs"] / hbm,
                compress_pct_hbm=100 * r["compress_gbs"] / hbm,
                mvue_pct_hbm=100 * r["mvue_gbs"] / hbm,
                gated_pct_hbm=100 * r["gated_gbs"] / hbm,
            )
        r["copy_gbs"] = r["gated_copy_gbs"]  # the (M, 8d) copy of bench_gated
        rows.append(r)
        print(f"done {name}", file=sys.stderr, flush=True)
    return {"device": kind, "dtype": str(dt), "hbm_gbs_nominal": hbm, "rows": rows}


def markdown(res) -> str:
    out = [f"device: {res['device']}, dtype {res['dtype']}, nominal HBM {res['hbm_gbs_nominal']} GB/s", ""]
    if res["rows"] and "mask_ms" not in res["rows"][0]:  # --only gated
        return "\n".join(out + ["Gated activations, forward + backward (bench_gated):", "",
                                 gated_markdown(res["rows"])])
    out.append(
        "| model | mask search ms (XLA) | compress W, W.T ms (XLA; two passes) | mask / compress GB/s "
        "| recipe per step, all layers: % step | every step: % step | MVUE ms (XLA) "
        "| MVUE / copy | MVUE GB/s (% HBM) | GEGLU f+b ms (T layout, XLA) | GEGLU / copy of 8MF "
        "| fwd / dx / dw TFLOP/s (dense XLA) |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        pct = r.get("mvue_pct_hbm")
        pct_s = f"{pct:.0f}%" if pct is not None else "?"
        out.append(
            f"| {r['model']} ({r['d']}x{r['d_ff']}) "
            f"| {r['mask_ms']:.3f} ({r['mask_xla_ms']:.3f}) "
            f"| {r['compress_ms']:.3f} ({r['compress_xla_ms']:.3f}; {r.get('compress_apart_ms', float('nan')):.3f}) "
            f"| {r['mask_gbs']:.0f} / {r['compress_gbs']:.0f} "
            f"| {r['recipe_all_layers_pct_step']:.3f}% | {r['every_step_all_layers_pct_step']:.2f}% "
            f"| {r['mvue_ms']:.3f} ({r['mvue_xla_ms']:.3f}) | {r['mvue_vs_copy']:.2f}x "
            f"| {r['mvue_gbs']:.0f} ({pct_s}) "
            f"| {r['gated_ms']:.3f} ({r['gated_transposed_ms']:.3f}, {r['gated_xla_ms']:.3f}) "
            f"| {r['gated_vs_copy']:.2f}x "
            f"| {r['gemm_fwd_tflops']:.0f} / {r['gemm_dx_tflops']:.0f} / {r['gemm_dw_tflops']:.0f} "
            f"({r['gemm_fwd_dense_tflops']:.0f} / {r['gemm_dx_dense_tflops']:.0f} / {r['gemm_dw_dense_tflops']:.0f}) |"
        )
    out.append("")
    out.append(f"Targets (recipe: mask search every {MASK_INTERVAL} steps, W and W.T compressed every step):")
    for r in res["rows"]:
        out.append(
            f"- {r['model']}: mask search + compression of all FFN weights "
            f"{r['recipe_all_layers_pct_step']:.3f}% of a step (est. {r['step_ms_est']:.1f} ms) "
            f"[{'PASS' if r['recipe_all_layers_pct_step'] < 1 else 'FAIL'} < 1%; both every step: "
            f"{r['every_step_all_layers_pct_step']:.2f}%]; MVUE {r['mvue_vs_copy']:.2f}x a copy "
            f"[{'PASS' if r['mvue_vs_copy'] <= 2 else 'FAIL'} <= 2x]; GEGLU f+b {r['gated_vs_copy']:.2f}x a copy "
            f"[{'PASS' if r['gated_vs_copy'] <= 1.3 else 'FAIL'} <= 1.3x, worse layout, copy of the same bytes]"
        )
    out += ["", "Gated activations, forward + backward (bench_gated):", "", gated_markdown(res["rows"])]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ",".join(SHAPES))
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--step-ms", type=float, default=None, help="measured training step time (default: estimate)")
    p.add_argument("--hbm-gbs", type=float, default=None, help="nominal HBM bandwidth in GB/s")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    p.add_argument("--only", choices=["all", "gated"], default="all", help="gated: only the gated activations")
    args = p.parse_args(argv)
    res = run(args)
    md = markdown(res)
    print(md)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
