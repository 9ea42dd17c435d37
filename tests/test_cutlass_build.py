"""CPU checks of the CUTLASS kernels' build module and Python layer (no nvcc run,
no CUTLASS compile, no GPU): the per-object cache keys, the errors that name the
fix, the configs, the operand shape checks, and that ``import sparse24_jax``
leaves the package alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparse24_jax_kernels.cutlass import build


def test_import_sparse24_jax_does_not_import_cutlass():
    code = ("import sys, sparse24_jax; "
            "print(any(m.startswith('sparse24_jax_kernels.cutlass') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_epilogue_ops_import_lazily():
    code = ("import sys; import sparse24_jax_kernels.cutlass.epilogue_ops as e; "
            "print('cutlass_library' in sys.modules, 'jax' in sys.modules, "
            "e.DEFAULT_EPILOGUE_CONFIG in e.EPILOGUES or e.DEFAULT_EPILOGUE_CONFIG)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    words = out.stdout.split()
    assert words[:2] == ["False", "False"] and words[2] in build.EPILOGUE_CONFIGS


def test_gemm_reference_of_dw_acc_is_the_sum_plus_dw():
    """ops.reference's dw_acc (the XLA twin the GPU test holds the kernel to) is the float32
    running sum plus the dw product; the sum is asked for dw_acc and refused elsewhere."""
    import jax.numpy as jnp
    import numpy as np
    import pytest

    from sparse24_jax_kernels.cutlass import ops

    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((8, 16)), jnp.bfloat16)   # S(dZ^T) (N, M)
    x = jnp.asarray(rng.standard_normal((16, 12)), jnp.bfloat16)  # X (M, K)
    acc = jnp.asarray(rng.standard_normal((8, 12)), jnp.float32)
    got = ops.reference("dw_acc", a, x, acc)
    assert got.dtype == jnp.float32 and got.shape == (8, 12)
    want = np.asarray(acc) + np.asarray(a, np.float32) @ np.asarray(x, np.float32)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(acc + ops.reference("dw", a, x)))
    with pytest.raises(ValueError, match="acc= .* for dw_acc"):
        ops.reference("dw_acc", a, x)
    with pytest.raises(ValueError, match="only for it"):
        ops.reference("dw", a, x, acc)


def test_epilogue_references_are_the_exact_gelu_and_its_derivative():
    """The fused kernels' XLA twins (CPU): fwd is jax.nn.gelu(approximate=False) of the
    float32 product plus bias and jax.grad of it there; dx_dgelu multiplies the float32
    product by the saved derivative."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sparse24_jax.ffn import activation_grad, activation_vjp
    from sparse24_jax_kernels.cutlass import epilogue_ops as epi

    gelu_grad = jax.vmap(jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False))))
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((8, 16)), jnp.bfloat16)
    x = jnp.asarray(rng.standard_normal((4, 16)), jnp.bfloat16)
    b = jnp.asarray(rng.standard_normal((8,)), jnp.bfloat16)
    h, g = epi.reference_fwd_gelu(w, x, b)
    assert h.dtype == g.dtype == jnp.bfloat16
    z32 = x.astype(jnp.float32) @ w.astype(jnp.float32).T + b.astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(g, np.float32), gelu_grad(z32), rtol=8e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(h, np.float32),
                               jax.nn.gelu(z32, approximate=False), rtol=8e-3, atol=1e-5)
    wt = jnp.asarray(rng.standard_normal((16, 8)), jnp.bfloat16)  # W_s^T (K, N)
    dy = jnp.asarray(rng.standard_normal((4, 8)), jnp.bfloat16)
    z1 = jnp.asarray(3 * rng.standard_normal((4, 16)), jnp.bfloat16)
    g1 = activation_grad("gelu", z1)
    d = epi.reference_dx_dgelu(wt, dy, g1)
    dh = dy.astype(jnp.float32) @ wt.astype(jnp.float32).T
    np.testing.assert_allclose(np.asarray(d, np.float32), dh * gelu_grad(z1.astype(jnp.float32)),
                               rtol=2e-2, atol=1e-2)
    np.testing.assert_array_equal(np.asarray(d, np.float32),
                                  np.asarray((dh * g1.astype(jnp.float32)).astype(jnp.bfloat16),
                                             np.float32))
    np.testing.assert_allclose(np.asarray(d, np.float32),
                               np.asarray(activation_vjp("gelu", z1, dh.astype(jnp.bfloat16)),
                                          np.float32), rtol=2e-2, atol=2e-2)


def test_package_imports_without_cutlass_or_gpu():
    code = ("import sys; import sparse24_jax_kernels.cutlass.ops as o; "
            "print('cutlass_library' in sys.modules, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "False"  # the wheel is found, never imported


def test_configs_have_tile_k_128_and_unique_names():
    """compress.cu's one compressor fits every instance only if tile K is 128 (the
    compressed format depends on min(tile K, 128)); gemm_instance.cu asserts it too."""
    names = [c.name for c in build._CONFIG_LIST]
    assert len(set(names)) == len(names) == len(build.CONFIGS)
    assert all(c.tile_k == 128 for c in build._CONFIG_LIST)
    assert all(c.schedule in ("coop", "pingpong") for c in build._CONFIG_LIST)
    # a config without products is a shaped fused epilogue's (below)
    assert all(c.scheduler in ("persistent", "streamk") and (c.products or c.shaped_epilogue)
               and set(c.products) <= set(build.PRODUCTS) for c in build._CONFIG_LIST)
    d = build.CONFIGS[names[0]].defines(2)
    assert "-DS24C_PRODUCT=2" in d and f'-DS24C_CONFIG="{names[0]}"' in d
    assert "-DS24C_STREAMK=0" in d
    sk = [c for c in build._CONFIG_LIST if c.scheduler == "streamk"]
    assert sk and all(c.name.endswith("_sk") and "-DS24C_STREAMK=1" in c.defines(2) for c in sk)


def test_fused_epilogue_units():
    """Each config of EPILOGUE_CONFIGS gets one epilogue_instance.cu object per fused
    epilogue of the FFN (and of dx_dgelu_mvue in MVUE_EPILOGUE_CONFIGS only), with
    S24C_EPILOGUE instead of S24C_PRODUCT; the plain headers are untouched by them
    (products.h and gemm_instance.cu do not include epilogue files)."""
    assert set(build.EPILOGUE_CONFIGS) <= set(build.CONFIGS)
    assert set(build.MVUE_EPILOGUE_CONFIGS) <= set(build.EPILOGUE_CONFIGS)
    assert build.EPILOGUES == {"fwd_gelu": 0, "dx_dgelu": 1, "dx_dgelu_mvue": 2}
    inc = Path("/nonexistent")
    units = {u.name: u for u in build._units(inc, inc, build._CONFIG_LIST)}
    assert "epilogue_bindings" in units
    for cfg in build._CONFIG_LIST:
        for e, eid in build.EPILOGUES.items():
            name = f"epi_{cfg.name}_{e}"
            built = cfg.name in build.EPILOGUE_CONFIGS and (
                e != "dx_dgelu_mvue" or cfg.name in build.MVUE_EPILOGUE_CONFIGS)
            assert (e in build.epilogues_of(cfg.name)) == built, name
            if not built:
                assert name not in units
                continue
            u = units[name]
            assert u.src.name == "epilogue_instance.cu"
            assert f"-DS24C_EPILOGUE={eid}" in u.flags
            assert not any(f.startswith("-DS24C_PRODUCT=") for f in u.flags)
            assert f'-DS24C_CONFIG="{cfg.name}"' in u.flags
    plain = {p.name for p in build.local_deps(build.CSRC / "gemm_instance.cu")}
    assert not plain & {"epilogue.h", "gemm_epilogue.cuh", "epilogue_mvue.cuh", "own_compress.cuh"}
    # the MVUE epilogue's group math (own_compress.cuh, cuSPARSELt's compress_kernels.cuh) is in
    # the fused units' keys: a change to the draw rebuilds them with own_compress.cu
    assert {"epilogue.h", "gemm_epilogue.cuh", "gemm_kernel.cuh", "epilogue_mvue.cuh",
            "own_compress.cuh", "compress_kernels.cuh"} <= {
        p.name for p in build.local_deps(build.CSRC / "epilogue_instance.cu")}


def test_shaped_epilogue_configs():
    """A shaped fused epilogue (Config.epi_*) is its own config, named after its plain config
    plus the shape (so a benchmark lists it beside the auto one), builds fused epilogues
    only, and its plain config has the plain products (the benchmark's "GEMM alone"). Its
    units pass the shape as -DS24C_EPI_*; the auto configs pass zeros."""
    shaped = [c for c in build._CONFIG_LIST if c.shaped_epilogue]
    assert shaped
    for c in shaped:
        assert c.products == () and c.name in build.EPILOGUE_CONFIGS, c.name
        assert c.name.startswith(c.plain_config + "_e") and c.name != c.plain_config
        assert {"fwd", "dx"} <= set(build.CONFIGS[c.plain_config].products), c.name
        assert c.epi_n % 16 == 0 and c.epi_m == (128 if c.schedule == "coop" else 64), c.name
    assert build.CONFIGS["t256x128x128_c1x1_coop_e128x16_sc3"].epi_stages_c == 3
    for c in build._CONFIG_LIST:
        if not c.shaped_epilogue:
            assert c.plain_config == c.name
    inc = Path("/nonexistent")
    units = {u.name: u for u in build._units(inc, inc, build._CONFIG_LIST)}
    for c in build._CONFIG_LIST:
        if c.name not in build.EPILOGUE_CONFIGS:
            continue
        flags = units[f"epi_{c.name}_dx_dgelu"].flags
        want = [f"-DS24C_EPI_TILE_M={c.epi_m}", f"-DS24C_EPI_TILE_N={c.epi_n}",
                f"-DS24C_EPI_STAGES_C={c.epi_stages_c}", f"-DS24C_EPI_STAGES_D={c.epi_stages_d}"]
        i = flags.index(want[0])
        assert flags[i:i + 4] == want, c.name
        assert not any(n.startswith(f"gemm_{c.name}_") for n in units) or not c.shaped_epilogue


def test_selected_configs_narrow_the_fused_units(monkeypatch):
    inc = Path("/nonexistent")
    other = [c for c in build._CONFIG_LIST if c.name not in build.EPILOGUE_CONFIGS][0]
    names = [u.name for u in build._units(inc, inc, [other])]
    assert not any(n.startswith("epi_") for n in names)


def test_selected_configs(monkeypatch):
    monkeypatch.delenv("SPARSE24_CUTLASS_CONFIGS", raising=False)
    assert build.selected_configs() == build._CONFIG_LIST
    first = build._CONFIG_LIST[0].name
    monkeypatch.setenv("SPARSE24_CUTLASS_CONFIGS", f" {first} ")
    assert [c.name for c in build.selected_configs()] == [first]
    monkeypatch.setenv("SPARSE24_CUTLASS_CONFIGS", f"{first},t9x9x9_c1x1_coop")
    with pytest.raises(build.BuildError, match="t9x9x9_c1x1_coop"):
        build.selected_configs()


def test_every_local_include_is_in_some_key():
    """A unit's key hashes the csrc headers it includes, transitively."""
    for src in sorted(build.CSRC.glob("*.c[cu]")):
        deps = build.local_deps(src)
        assert deps[0] == src or src in deps
        for p in deps:
            import re

            for inc in re.findall(r'^#include "([^"]+)"', p.read_text(), re.M):
                # as the preprocessor resolves it: the includer's folder first, then -I
                where = next((d / inc for d in (p.parent, build.CSRC, build.CUSPARSELT_CSRC)
                              if (d / inc).is_file()), None)
                if where is not None:
                    assert where in deps, f"{src.name}: {inc} (via {p.name}) unhashed"
    assert [p.name for p in build.local_deps(build.CSRC / "registry.cc")] == [
        "instance_table.h", "products.h", "registry.cc"]
    # our own compressors include the cuSPARSELt library's group math: hashed too
    own = build.local_deps(build.CSRC / "own_compress.cu")
    for name in ("group.cuh", "compress_kernels.cuh", "layout.cuh"):
        assert build.CUSPARSELT_CSRC / name in own, name
    assert build.CSRC / "sm90_layout.cuh" in own
    # the FFI host units share the cuSPARSELt library's ffi_common.h (on their include path)
    for cc in ("bindings.cc", "own_bindings.cc", "epilogue_bindings.cc"):
        assert build.CUSPARSELT_CSRC / "ffi_common.h" in build.local_deps(build.CSRC / cc), cc
    inc = Path("/nonexistent")
    for u in build._units(inc, inc, build._CONFIG_LIST[:1]):
        if u.src.suffix == ".cc":
            assert str(build.CUSPARSELT_CSRC) in u.flags, u.name


def _keys(inc, toolchain=b"toolchain"):
    units = build._units(inc, inc, build._CONFIG_LIST[:2])
    return {u.name: build._unit_key(u, toolchain) for u in units}


def test_a_changed_header_recompiles_only_its_units(tmp_path, monkeypatch):
    csrc = tmp_path / "csrc"
    shutil.copytree(build.CSRC, csrc)
    monkeypatch.setattr(build, "CSRC", csrc)
    lt_csrc = tmp_path / "cusparselt_csrc"
    shutil.copytree(build.CUSPARSELT_CSRC, lt_csrc)
    monkeypatch.setattr(build, "CUSPARSELT_CSRC", lt_csrc)
    inc = tmp_path / "cutlass_include"
    keys = _keys(inc)
    n_epi = len(build.EPILOGUES) * sum(
        c.name in build.EPILOGUE_CONFIGS for c in build._CONFIG_LIST[:2])
    assert n_epi >= 2  # the default config (t128x256x128_c1x1_coop) is in the first two
    # fwd, dx, dw each; dw_acc where built (not at 128x256: build._NO_DW_ACC)
    n_gemm = sum(len(c.products) for c in build._CONFIG_LIST[:2])
    assert all({"fwd", "dx", "dw"} <= set(c.products) for c in build._CONFIG_LIST[:2]) and n_gemm >= 6
    assert len(keys) == 6 + n_gemm + n_epi and len(set(keys.values())) == len(keys)
    # the fused epilogues' own header recompiles their units only
    with open(csrc / "gemm_epilogue.cuh", "a") as fh:
        fh.write("\n// changed\n")
    keys1 = _keys(inc)
    assert {n for n in keys if keys[n] != keys1[n]} == {n for n in keys if n.startswith("epi_")}
    with open(csrc / "gemm_kernel.cuh", "a") as fh:
        fh.write("\n// changed\n")
    keys2 = _keys(inc)
    changed = {n for n in keys if keys1[n] != keys2[n]}
    # the fused instances reuse gemm_kernel.cuh's schedule traits and compressor config
    assert changed == {n for n in keys if n.startswith(("gemm_", "epi_")) or n == "compress"}
    with open(csrc / "bindings.cc", "a") as fh:
        fh.write("\n// changed\n")
    keys3 = _keys(inc)
    assert {n for n in keys if keys2[n] != keys3[n]} == {"bindings"}
    with open(csrc / "epilogue_bindings.cc", "a") as fh:
        fh.write("\n// changed\n")
    keys3b = _keys(inc)
    assert {n for n in keys if keys3[n] != keys3b[n]} == {"epilogue_bindings"}
    keys3 = keys3b
    # the FFI helpers shared with the cuSPARSELt library: the host units that include them
    with open(lt_csrc / "ffi_common.h", "a") as fh:
        fh.write("\n// changed\n")
    keys3c = _keys(inc)
    assert {n for n in keys if keys3[n] != keys3c[n]} == {
        "bindings", "own_bindings", "epilogue_bindings"}
    keys3 = keys3c
    # a new toolchain (nvcc, CUTLASS release) recompiles everything
    keys4 = _keys(inc, b"other")
    assert all(keys3[n] != keys4[n] for n in keys)


def test_missing_nvcc_names_the_fix(monkeypatch):
    monkeypatch.delenv("SPARSE24_CUTLASS_KERNELS", raising=False)
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    with pytest.raises(build.BuildError, match="nvcc not found.*CUDA_HOME"):
        build.build()


def test_missing_cutlass_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE24_CUTLASS_DIR", str(tmp_path))
    with pytest.raises(build.BuildError, match="SPARSE24_CUTLASS_DIR.*cutlass.h"):
        build.find_cutlass()
    monkeypatch.delenv("SPARSE24_CUTLASS_DIR")
    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(build.BuildError, match="pip install nvidia-cutlass"):
        build.find_cutlass()


def test_cutlass_dir_override(monkeypatch, tmp_path):
    (tmp_path / "include" / "cutlass").mkdir(parents=True)
    (tmp_path / "include" / "cutlass" / "cutlass.h").write_text("")
    monkeypatch.setenv("SPARSE24_CUTLASS_DIR", str(tmp_path))
    with pytest.raises(build.BuildError, match="packed_stride.hpp"):
        build.find_cutlass()
    util = tmp_path / "tools" / "util" / "include" / "cutlass" / "util"
    util.mkdir(parents=True)
    (util / "packed_stride.hpp").write_text("")
    inc, uinc = build.find_cutlass()
    assert inc == (tmp_path / "include").resolve()
    assert uinc == (tmp_path / "tools" / "util" / "include").resolve()


def test_the_wheel_is_found_when_installed():
    if build.importlib.util.find_spec("cutlass_library") is None:
        pytest.skip("nvidia-cutlass is not installed here")
    inc, uinc = build.find_cutlass()
    assert (inc / "cutlass" / "gemm" / "collective" / "builders" / "sm90_sparse_gmma_builder.inl"
            ).is_file()


def test_prebuilt_library_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE24_CUTLASS_KERNELS", str(tmp_path / "nope.so"))
    with pytest.raises(build.BuildError, match="SPARSE24_CUTLASS_KERNELS.*not a file"):
        build.build()
    so = tmp_path / "lib.so"
    so.write_bytes(b"")
    monkeypatch.setenv("SPARSE24_CUTLASS_KERNELS", str(so))
    assert build.build() == so


def test_jobs_env(monkeypatch):
    monkeypatch.setenv("SPARSE24_CUTLASS_JOBS", "3")
    assert build._jobs() == 3
    monkeypatch.setenv("SPARSE24_CUTLASS_JOBS", "zero")
    with pytest.raises(build.BuildError, match="positive integer"):
        build._jobs()
    monkeypatch.delenv("SPARSE24_CUTLASS_JOBS")
    assert build._jobs() >= 1


# --- ops: shapes (pure Python, no library) ---------------------------------


def test_problem_shapes():
    from sparse24_jax_kernels.cutlass import ops

    # fwd: W_s (N=256, K=512), X (M=64, K) -> Z (M, N); CUTLASS (Mc, Nc, Kc) = (N, M, K)
    assert ops.problem("fwd", (256, 512), (64, 512)) == ((256, 64, 512), (64, 256), "bfloat16")
    # dx: W_s^T (K=512, N=256), dZ (M=64, N) -> dX (M, K)
    assert ops.problem("dx", (512, 256), (64, 256)) == ((512, 64, 256), (64, 512), "bfloat16")
    # dw: S(dZ^T) (N=256, M=128), X (M, K=512) -> dW (N, K) float32
    assert ops.problem(2, (256, 128), (128, 512)) == ((256, 512, 128), (256, 512), "float32")
    # GPT-2 1.5B: the 2:4 axis 1600 is a multiple of 64, not of 128
    assert ops.problem("fwd", (6400, 1600), (16384, 1600))[0] == (6400, 16384, 1600)


@pytest.mark.parametrize("args,match", [
    (("fwd", (96, 512), (64, 512)), "rows % 64"),
    (("fwd", (128, 96), (64, 96)), "2:4 axis % 64"),
    (("fwd", (128, 512), (40, 512)), "multiple of 16"),
    (("fwd", (128, 512), (64, 256)), "K = 512"),
    (("dx", (128, 512), (64, 256)), "N = 512"),
    (("dw", (128, 512), (256, 64)), "M = 512"),
    (("dw", (128, 512), (512, 8)), "multiple of 16"),
    (("up", (128, 512), (64, 512)), "product must be"),
    ((5, (128, 512), (64, 512)), "product must be"),
])
def test_problem_errors_name_the_fix(args, match):
    from sparse24_jax_kernels.cutlass import ops

    with pytest.raises(ValueError, match=match):
        ops.problem(*args)


def test_meta_nbytes_pads_to_the_metadata_atom():
    from sparse24_jax_kernels.cutlass import ops

    assert ops.meta_nbytes(64, 128) == 64 * 128 // 8
    assert ops.meta_nbytes(1600, 6400) == 1600 * 6400 // 8
    assert ops.meta_nbytes(6400, 1600) == 6400 * 1664 // 8  # 1600 -> 13 x 128


def test_meta_nbytes_matches_a_prebuilt_library():
    """Only with a prebuilt library ($SPARSE24_CUTLASS_KERNELS): CI never compiles CUTLASS.
    Its host-only size export runs without a GPU."""
    path = os.environ.get("SPARSE24_CUTLASS_KERNELS")
    if not path or not Path(path).is_file():
        pytest.skip("no prebuilt CUTLASS library (set SPARSE24_CUTLASS_KERNELS)")
    from sparse24_jax_kernels.cutlass import ops

    for rows, cols in [(64, 128), (128, 256), (1600, 6400), (6400, 1600), (192, 320)]:
        vbytes, mbytes, ws = ops.compressed_sizes(rows, cols)
        assert (vbytes, mbytes) == (rows * cols, ops.meta_nbytes(rows, cols)), (rows, cols)
    assert len(ops.instances()) == sum(len(c.products) for c in build.selected_configs())
    for name, p in build.PRODUCTS.items():  # the configs built for each product, by name or number
        want = sorted(c.name for c in build.selected_configs() if name in c.products)
        assert ops.configs(name) == ops.configs(p) == want
    with pytest.raises(ValueError, match="product must be one of"):
        ops.configs("dy")


def test_a_prebuilt_library_lists_its_fused_instances():
    """Only with a prebuilt library: the fused instances register (host-only, no GPU)."""
    path = os.environ.get("SPARSE24_CUTLASS_KERNELS")
    if not path or not Path(path).is_file():
        pytest.skip("no prebuilt CUTLASS library (set SPARSE24_CUTLASS_KERNELS)")
    from sparse24_jax_kernels.cutlass import epilogue_ops as epi

    got = sorted((i["config"], i["epilogue"]) for i in epi.epilogue_instances())
    want = sorted((c.name, e) for c in build.selected_configs() for e in build.epilogues_of(c.name))
    assert got == want
    for cfg in epi.epilogue_configs():
        # CUTLASS's (Mc, Nc, Kc) of GPT-2 774M's fc1 forward: workspace size is host-only
        assert epi.epilogue_workspace_bytes(cfg, "fwd_gelu", 5120, 16384, 1280) >= 0
        assert epi.epilogue_workspace_bytes(cfg, "dx_dgelu", 5120, 16384, 1280) >= 0
    with pytest.raises(ValueError, match="no fused fwd_gelu instance"):
        epi.epilogue_workspace_bytes("t1x1x1", "fwd_gelu", 128, 64, 128)
    # its epilogues pass gelu'(Z) to the backward (what epilogue_ops assumes)
    assert epi.load_library().s24c_epi_residual() == 2


def test_a_library_whose_epilogues_save_z_is_refused(monkeypatch):
    """A library built before the epilogues saved gelu'(Z) runs the same handler with
    the same shapes but multiplies by gelu' of its input: epilogue_ops refuses it,
    naming the rebuild, instead of giving wrong gradients."""
    import types

    from sparse24_jax_kernels.cutlass import epilogue_ops as epi

    old = types.SimpleNamespace(_name="/x/libsparse24_cutlass-old.so", s24c_num_epis=lambda: 4,
                                s24c_epi_info=None)
    monkeypatch.setattr(epi, "load_library", lambda: old)
    with pytest.raises(RuntimeError, match="save Z.*rebuild it .*SPARSE24_CUTLASS_KERNELS"):
        epi.epilogue_configs()
    old.s24c_epi_residual = lambda: 2
    monkeypatch.setattr(epi, "instance_table", lambda *a: [{"config": "c", "epilogue": "fwd_gelu"}])
    assert epi.epilogue_configs() == ["c"]


def test_prune_keeps_only_what_the_build_uses(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_plan", lambda configs=None: (
        "nvcc", [], {"registry": "aaaa", "bindings": "bbbb"}, "cccc"))
    (tmp_path / "obj").mkdir()
    lib = tmp_path / "libsparse24_cutlass-cccc.so"
    for name in ("libsparse24_cutlass-cccc.so", "libsparse24_cutlass-old1.so", "obj/registry-aaaa.o",
                 "obj/bindings-bbbb.o", "obj/bindings-old2.o", "obj/gemm_x_fwd-old3.o"):
        (tmp_path / name).write_bytes(b"")
    gone = build.prune(lib)
    assert sorted(p.name for p in gone) == ["bindings-old2.o", "gemm_x_fwd-old3.o",
                                            "libsparse24_cutlass-old1.so"]
    assert sorted(p.name for p in tmp_path.rglob("*.*")) == [
        "bindings-bbbb.o", "libsparse24_cutlass-cccc.so", "registry-aaaa.o"]


def test_a_prebuilt_library_sizes_every_workspace_without_a_gpu():
    """Only with a prebuilt library, on a machine without a GPU: each instance's workspace
    query answers (the stream-K scheduler divided by an SM count of 0 and killed the process:
    run in a child so that a crash fails this test, not the suite). The stream-K instances
    force the stream-K decomposition, so their partial sums need a workspace at GPT-2 774M's
    fc1 weight gradient too (200 tiles on 132 SMs, which CUTLASS's heuristic would have run
    data parallel, without one), as at 1558M's (325 tiles); the stream-K forward / input
    gradient (128x256) at 774M's fc1 forward and 1558M's fc2 forward (416 tiles)."""
    import subprocess
    import sys

    path = os.environ.get("SPARSE24_CUTLASS_KERNELS")
    if not path or not Path(path).is_file():
        pytest.skip("no prebuilt CUTLASS library (set SPARSE24_CUTLASS_KERNELS)")
    code = (
        "from sparse24_jax_kernels.cutlass import _library as L, build\n"
        "for i in L.instances():\n"
        "    p = build.PRODUCTS[i['product']]\n"
        "    # CUTLASS's (Mc, Nc, Kc): GPT-2 774M's fc1 weight gradient / forward; 1558M's fc1 dW /\n"
        "    # fc2 forward at 8192 tokens\n"
        "    mnk = (5120, 1280, 16384) if i['product'] == 'dw' else (5120, 16384, 1280)\n"
        "    big = (6400, 1600, 16384) if p == 2 else (1600, 8192, 6400)\n"
        "    big = L.workspace_bytes(i['config'], p, *big)\n"
        "    print(i['config'], i['product'], L.workspace_bytes(i['config'], p, *mnk), big)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    sizes = {tuple(w[:2]): (int(w[2]), int(w[3])) for w in map(str.split, res.stdout.splitlines())}
    assert len(sizes) == sum(len(c.products) for c in build.selected_configs())
    assert all(a >= 0 and b >= 0 for a, b in sizes.values()), sizes
    streamk = {k: v for k, v in sizes.items() if k[0].endswith("_sk")}
    assert all(a > 0 and b > 0 for a, b in streamk.values()), streamk
    assert all(v == (0, 0) for k, v in sizes.items() if k not in streamk), sizes


def test_command_buffer_handler_twins(monkeypatch):
    """Each FFI target maps to its handler's command-buffer-compatible twin (same target
    names, so no custom call changes) unless $SPARSE24_CUTLASS_CMD_BUFFER says "0",
    "false" or ""; with a prebuilt library, both sets of handler symbols are exported. On
    a machine without a GPU, loading still names the GPU fix first."""
    import ctypes

    from sparse24_jax_kernels.cutlass import _library as L
    from sparse24_jax_kernels.cutlass import epilogue_ops

    names = {**L.TARGETS, epilogue_ops.EPI_TARGET: "s24c_gemm_epi",
             epilogue_ops.EPI_MVUE_TARGET: "s24c_gemm_epi_mvue"}
    assert L.targets(names, cmd_buffer=False) == names
    twins = L.targets(names, cmd_buffer=True)
    assert twins.keys() == names.keys()
    assert all(twins[t] == names[t] + "_graph" for t in names)
    for value, on in (("1", True), ("true", True), ("0", False), ("false", False), ("", False),
                      (" FALSE ", False), (None, True)):
        if value is None:
            monkeypatch.delenv(L.CMD_BUFFER_ENV, raising=False)  # the default: twins
        else:
            monkeypatch.setenv(L.CMD_BUFFER_ENV, value)
        assert L.command_buffers() is on and L.targets(names) == (twins if on else names), value
    monkeypatch.setenv(L.CMD_BUFFER_ENV, "1")
    from sparse24_jax_kernels._loader import has_cuda_device

    if not has_cuda_device():
        with pytest.raises(RuntimeError, match="Hopper"):
            L.load()
    path = os.environ.get("SPARSE24_CUTLASS_KERNELS")
    if path and Path(path).is_file():
        lib = ctypes.CDLL(path)
        missing = [s for s in (*names.values(), *twins.values()) if not hasattr(lib, s)]
        assert not missing, missing


def test_command_buffer_twins_missing_from_an_older_library_name_the_fix(monkeypatch):
    """A library built before the twins lacks their symbols: asked for them by the
    variable, ctypes' AttributeError becomes a RuntimeError that says to rebuild or set
    the variable to 0; by default, the library's plain handlers are registered."""
    from sparse24_jax_kernels.cutlass import _library as L

    seen = {}

    def register(targets):  # what FfiLibrary.register meets in such a library
        seen.update(targets)
        raise AttributeError("/x/libsparse24_cutlass-old.so: undefined symbol: s24c_gemm_graph")

    monkeypatch.setenv(L.CMD_BUFFER_ENV, "1")
    monkeypatch.setattr(L.LIBRARY, "register", register)
    with pytest.raises(RuntimeError, match="rebuild it .*or set \\$SPARSE24_CUTLASS_CMD_BUFFER=0"):
        L.load()
    assert seen == L.targets(L.TARGETS, cmd_buffer=True)

    # unset (the default) on such a library: its plain handlers, no error
    import types

    monkeypatch.delenv(L.CMD_BUFFER_ENV)
    old = types.SimpleNamespace(**{sym: object() for sym in L.TARGETS.values()})
    got = {}
    monkeypatch.setattr(L, "has_cuda_device", lambda: True)
    monkeypatch.setattr(L.LIBRARY, "library", lambda: old)
    monkeypatch.setattr(L.LIBRARY, "register", lambda targets: got.update(targets) or old)
    assert L.load() is old and got == L.TARGETS
    # ... and a library with the twins: the twins
    new = types.SimpleNamespace(**{s: object() for sym in L.TARGETS.values() for s in (sym, sym + "_graph")})
    got.clear()
    monkeypatch.setattr(L.LIBRARY, "library", lambda: new)
    monkeypatch.setattr(L.LIBRARY, "register", lambda targets: got.update(targets) or new)
    assert L.load() is new and got == L.targets(L.TARGETS, cmd_buffer=True)
