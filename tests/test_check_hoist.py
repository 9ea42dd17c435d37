"""benchmarks/check_hoist.py's HLO reading: custom calls inside vs outside a loop."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from check_hoist import custom_calls_by_loop  # noqa: E402


def test_counts_calls_inside_and_outside_a_scan():
    def f(w, xs):
        # one callback on the loop-invariant operand (outside), one per step (inside);
        # callbacks have side effects, so XLA never moves them
        cw = jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(w.shape, w.dtype), w)

        def body(c, x):
            y = jax.pure_callback(lambda a: np.asarray(a) + 1, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
            return c + jnp.sum(y * cw), None

        return jax.lax.scan(body, 0.0, xs)[0]

    text = jax.jit(f).lower(jnp.ones(4), jnp.ones((3, 4))).compile().as_text()
    counts = custom_calls_by_loop(text)
    assert len(counts) == 1
    (c,) = counts.values()
    assert c == {"inside": 1, "outside": 1}


def test_no_loop_means_outside():
    text = """HloModule m

ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4] parameter(0)
  ROOT %c = f32[4] custom-call(%p), custom_call_target="sparse24_cusparselt_compress"
}
"""
    assert custom_calls_by_loop(text) == {"sparse24_cusparselt_compress": {"inside": 0, "outside": 1}}
