"""The fused-epilogue GEMMs' shared memory, from tests/cutlass_src/epilogue_smem_probe.cu
compiled for sm_90a as a host program (types instantiated, no kernel; nvcc and the CUTLASS
headers, ~40 s, cached): every config of build.EPILOGUE_CONFIGS fits sm90's 227 KB, and each
shaped one (Config.epi_*: a smaller epilogue) gives both fused epilogues as many sparse
mainloop stages as the plain GEMM of its tile, which is what it is for."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from _cutlass_host import REPO, _CACHE, _mkdir
from sparse24_jax_kernels.cutlass import build

PROBE = REPO / "tests" / "cutlass_src" / "epilogue_smem_probe.cu"
LIMIT = 232448  # sm90's shared memory per block (CUTLASS's sm90_smem_capacity_bytes)


def cache_dir():
    return _mkdir(_CACHE / "bin")


def _probe(configs: list[build.Config]) -> dict[tuple[str, str], dict]:
    nvcc = build.find_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc to compile the probe")
    try:
        inc, util = build.find_cutlass()
    except build.BuildError as err:
        pytest.skip(str(err))
    rows = "".join(
        f'X({c.tile_m},{c.tile_n},{0 if c.schedule == "coop" else 1},{c.epi_m},{c.epi_n},'
        f'{c.epi_stages_c},{c.epi_stages_d},"{c.name}")' for c in configs)
    # the program's cache key: the rows, the probe, its csrc headers and the CUTLASS release
    key = hashlib.sha256(rows.encode())
    for p in build.local_deps(PROBE):
        key.update(p.read_bytes())
    key.update((inc / "cutlass" / "version.h").read_bytes())
    exe = cache_dir() / f"epilogue_smem_probe-{key.hexdigest()[:16]}"
    if not exe.exists():
        # nvcc splits a -D value at its commas: the rows go in a forced include instead
        rows_h = exe.with_suffix(".h")
        rows_h.write_text(f"#define S24C_PROBE_CONFIGS {rows}\n")
        tmp = exe.with_name(f"{exe.name}.tmp{os.getpid()}")
        cmd = [nvcc, "-std=c++17", "-O0", "--expt-relaxed-constexpr", "-arch=sm_90a", "-DNDEBUG",
               "-diag-suppress", "940,2473", "-I", str(build.CSRC), "-I", str(build.CUSPARSELT_CSRC),
               "-I", str(inc), "-I", str(util),
               "-include", str(rows_h), str(PROBE), "-o", str(tmp)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"the probe did not compile:\n{res.stderr[-6000:]}"
        tmp.replace(exe)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        cfg, product, _, stages, _, _, epi_bytes, tile, sc, sd, total, _ = cells
        table[cfg, product] = {"stages": int(stages), "epilogue": int(epi_bytes), "tile": tile,
                               "stages_c": int(sc), "stages_d": int(sd), "total": int(total)}
    return table


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc to compile the probe")
def test_shaped_epilogues_keep_the_plain_gemms_mainloop_stages():
    configs = [build.CONFIGS[n] for n in build.EPILOGUE_CONFIGS]
    shaped = [c for c in configs if c.shaped_epilogue]
    assert shaped, "no shaped-epilogue config in EPILOGUE_CONFIGS"
    table = _probe(configs)
    for c in configs:
        plain = table[c.name, "plain"]
        for e in build.EPILOGUES:
            row = table[c.name, e]
            assert row["total"] <= LIMIT, (c.name, e, row)
            if e == "dx_dgelu_mvue":  # no shared memory of its own
                assert row == table[c.name, "dx_dgelu"], (c.name, row)
            if c.shaped_epilogue:
                # the probe built the shape asked for
                assert row["tile"] == f"{c.epi_m}x{c.epi_n}", (c.name, row)
                if c.epi_stages_c:
                    assert row["stages_c"] == c.epi_stages_c, (c.name, row)
                assert row["stages"] == plain["stages"], (
                    f"{c.name} {e}: {row['stages']} mainloop stages, the plain GEMM "
                    f"{plain['stages']}; its epilogue ({row['epilogue']} B) is too big")
