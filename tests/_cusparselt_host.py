"""The cuSPARSELt library's FFI calls replaced by host callbacks with the same
semantics, for CPU tests of the backend (shared by the cusparselt test modules)."""

from __future__ import annotations

import numpy as np

from sparse24_jax_kernels.cusparselt import layout


def host_ops(monkeypatch, ops_mod):
    """Replace the FFI calls by host callbacks with the same semantics: the
    compression kernels by their emulation, the cuSPARSELt product by numpy
    on the decompressed operand. Exercises the backend's shapes, padding and
    layouts (not cuSPARSELt itself) on the CPU."""
    import jax
    import jax.numpy as jnp

    def cb(fn, shape, dtype, *args):
        return jax.pure_callback(fn, jax.ShapeDtypeStruct(shape, dtype), *args)

    def compress(a, *, transpose=False):
        m, k = (a.shape[1], a.shape[0]) if transpose else a.shape
        n = layout.compressed_nbytes(m, k, a.dtype)
        return cb(lambda a: ops_mod.emulate_compress(np.asarray(a), transpose=transpose),
                  (n,), jnp.uint8, a)

    def mvue_compress(key_or_seed, a, *, transpose=False):
        seed = ops_mod.seed_from_key(key_or_seed)
        m, k = (a.shape[1], a.shape[0]) if transpose else a.shape
        n = layout.compressed_nbytes(m, k, a.dtype)
        return cb(lambda s, a: ops_mod.emulate_compress(np.asarray(a), mode="mvue",
                                                        transpose=transpose, seed=np.asarray(s)),
                  (n,), jnp.uint8, seed, a)

    def project_compress(w, mask=None, beta=None, *, dtype, transpose_too):
        mode, _ = ops_mod.project_mode(w, mask, beta, dtype, transpose_too)
        n, k = w.shape
        dt = jnp.dtype(dtype)
        buf = jax.ShapeDtypeStruct((layout.compressed_nbytes(n, k, dt),), jnp.uint8)
        if mode == "soft":
            def soft(w, b):
                return ops_mod.emulate_project_compress(np.asarray(w), beta=np.asarray(b), dtype=dt,
                                                        transpose_too=False)

            out = (buf, jax.ShapeDtypeStruct((n, k), dt))
            return tuple(jax.pure_callback(soft, out, w, jnp.asarray(beta, jnp.float32)))

        def masked(w, m):
            got = ops_mod.emulate_project_compress(np.asarray(w), np.asarray(m), dtype=dt,
                                                   transpose_too=transpose_too)
            return got if transpose_too else got[0]

        if not transpose_too:
            return jax.pure_callback(masked, buf, w, mask), None
        out = (buf, jax.ShapeDtypeStruct((layout.compressed_nbytes(k, n, dt),), jnp.uint8))
        return tuple(jax.pure_callback(masked, out, w, mask))

    def spmm(a_buf, b, *, m, k, transpose_b, d_col_major, out_dtype=None, alpha=1.0):
        n = b.shape[0] if transpose_b else b.shape[1]
        out_dtype = jnp.dtype(out_dtype or b.dtype)

        def host(a_buf, b):
            a = layout.decompress(np.asarray(a_buf), m, k, np.asarray(b).dtype).astype(np.float32)
            bf = np.asarray(b).astype(np.float32)
            d = alpha * (a @ (bf.T if transpose_b else bf))
            return (d.T if d_col_major else d).astype(out_dtype)

        return cb(host, (n, m) if d_col_major else (m, n), out_dtype, a_buf, b)

    monkeypatch.setattr(ops_mod, "load", lambda: None)
    monkeypatch.setattr(ops_mod, "compress", compress)
    monkeypatch.setattr(ops_mod, "mvue_compress", mvue_compress)
    monkeypatch.setattr(ops_mod, "project_compress", project_compress)
    monkeypatch.setattr(ops_mod, "spmm", spmm)
