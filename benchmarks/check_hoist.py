"""Does XLA compress the weights once per optimizer step under gradient accumulation?

With ``grad_accum`` micro-batches the training step runs a ``lax.scan`` whose
body calls ``sparse24_linear`` on the same (loop-invariant) weights every
micro-step. The compression of ``W_s`` and ``W_s.T`` (custom calls of the
cuSPARSELt backend) then only needs to run once per step, if XLA hoists it out
of the while loop. This script compiles such a step and counts, in the
optimized HLO, the compression custom calls inside the loop body and outside::

    python benchmarks/check_hoist.py --backend cusparselt [--accum 4]

Prints one line per custom-call target: ``inside loop`` / ``outside loop``,
for ``sparse24_linear`` as is and with ``prepared=`` (the weights compressed
by ``prepare_sparse24_weight`` before the loop, as the training step does).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict


def custom_calls_by_loop(hlo: str) -> dict[str, dict[str, int]]:
    """{target: {"inside": n, "outside": n}} for every custom call of the
    optimized HLO text, "inside" meaning reachable from a while loop's body or
    condition (through fusions, calls and nested loops)."""
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and not line.startswith(" "):
            name = m.group(1)
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    edges = defaultdict(set)
    loop_roots = set()
    for c, lines in comps.items():
        for ln in lines:
            for key in ("calls", "to_apply", "body", "condition", "branch_computations"):
                for m in re.finditer(key + r"=\{?([%\w.\-, ]+)\}?", ln):
                    for t in m.group(1).split(","):
                        t = t.strip().lstrip("%")
                        if t:
                            edges[c].add(t)
                            if key in ("body", "condition"):
                                loop_roots.add(t)
    inside = set()
    stack = list(loop_roots)
    while stack:
        c = stack.pop()
        if c in inside:
            continue
        inside.add(c)
        stack.extend(edges.get(c, ()))
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"inside": 0, "outside": 0})
    for c, lines in comps.items():
        for ln in lines:
            m = re.search(r'custom_call_target="([^"]+)"', ln)
            if m:
                out[m.group(1)]["inside" if c in inside else "outside"] += 1
    return dict(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cusparselt")
    p.add_argument("--accum", type=int, default=4)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per micro-batch")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import sparse24_jax as s24

    d, h = args.d, 4 * args.d
    k = jax.random.key(0)
    w1 = jax.random.normal(k, (h, d), jnp.float32) * 0.02
    w2 = jax.random.normal(jax.random.fold_in(k, 1), (d, h), jnp.float32) * 0.02
    m1, m2 = s24.transposable_mask_24(w1), s24.transposable_mask_24(w2)
    xs = jax.random.normal(jax.random.fold_in(k, 2), (args.accum, args.tokens, d), jnp.bfloat16)

    def loss(w1, w2, x, key, p1, p2):
        k1, k2 = jax.random.split(key)
        a = jax.nn.gelu(s24.sparse24_linear(x, w1, m1, key=k1, backend=args.backend, prepared=p1))
        y = s24.sparse24_linear(a, w2, m2, key=k2, backend=args.backend, prepared=p2)
        return jnp.mean(y.astype(jnp.float32) ** 2)

    def make_step(prepare: bool):
        def step(w1, w2, xs, key):
            p1 = p2 = None
            if prepare:  # once per optimizer step, outside the loop
                p1 = s24.prepare_sparse24_weight(w1, m1, backend=args.backend, dtype=jnp.bfloat16)
                p2 = s24.prepare_sparse24_weight(w2, m2, backend=args.backend, dtype=jnp.bfloat16)

            def micro(acc, xk):
                x, i = xk
                g = jax.grad(loss, argnums=(0, 1))(w1, w2, x, jax.random.fold_in(key, i), p1, p2)
                return jax.tree.map(jnp.add, acc, g), None

            zeros = (jnp.zeros_like(w1), jnp.zeros_like(w2))
            return jax.lax.scan(micro, zeros, (xs, jnp.arange(args.accum)))[0]

        return step

    print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}, backend {args.backend}, "
          f"grad_accum {args.accum}: custom calls in the optimized HLO")
    for prepare in (False, True):
        compiled = jax.jit(make_step(prepare)).lower(w1, w2, xs, jax.random.key(1)).compile()
        counts = custom_calls_by_loop(compiled.as_text())
        print(f"## sparse24_linear {'with prepared= (prepare_sparse24_weight outside the loop)' if prepare else 'as is'}")
        for target, c in sorted(counts.items()):
            print(f"{target:45s} inside loop {c['inside']:3d}   outside loop {c['outside']:3d}")
        weights = {t: c for t, c in counts.items() if t.endswith("_compress") and "mvue" not in t}
        hoisted = bool(weights) and all(c["inside"] == 0 for c in weights.values())
        print("weight compression outside the micro-batch loop:", "yes" if hoisted else "NO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
