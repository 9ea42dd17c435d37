"""Build the CUTLASS sm90 sparse-GEMM FFI library: ``python -m sparse24_jax_kernels.cutlass.build``.

CUTLASS 3.x templates are slow to compile (about 90 s and 5 GB of memory per
GEMM instance with nvcc 13 for sm_90a), so the library is built from separate
objects, each cached under a hash of its inputs, compiled in parallel:

* ``gemm_instance.cu`` once per (config, product): ``-DS24C_*`` flags pick the
  tile, cluster and schedule (:data:`CONFIGS`) and the product (fwd, dx, dw, and
  dw_acc: the weight gradient added to a float32 running sum in its epilogue);
* ``compress.cu``: CUTLASS's own compressor;
* ``own_compress.cu``: our own kernels writing CUTLASS's format (no CUTLASS
  header; includes the cuSPARSELt library's group math);
* ``epilogue_instance.cu`` once per (config, fused epilogue) for the configs
  in :data:`EPILOGUE_CONFIGS` (fwd_gelu, dx_dgelu, dx_dgelu_mvue: README "Fused
  epilogues");
* ``registry.cc``, ``bindings.cc``, ``own_bindings.cc``, ``epilogue_bindings.cc``:
  host-only C++ (XLA FFI handlers).

They are linked into ``libsparse24_cutlass-<hash>.so`` in the cache directory
(``$SPARSE24_CUTLASS_CACHE_DIR``, else ``$SPARSE24_CACHE_DIR/cutlass``, else
``~/.cache/sparse24_jax/cutlass``, else ``build/`` beside this file, else the
temp dir), objects in its ``obj/``. A changed source, flag, config, CUTLASS or
nvcc rebuilds only what it touches. Nothing here runs in CI (no CUTLASS
compile on the CPU path): the library is built on first GPU use, or ahead.

Environment:
  SPARSE24_CUTLASS_KERNELS    a prebuilt libsparse24_cutlass-*.so to use as is
  SPARSE24_CUTLASS_DIR        a CUTLASS source tree (with include/ and
                              tools/util/include/); default: the installed
                              ``nvidia-cutlass`` wheel (cutlass_library/source)
  SPARSE24_CUTLASS_CONFIGS    comma list of config names to build (default all)
  SPARSE24_CUTLASS_JOBS       parallel nvcc jobs (default: cores, at most
                              one per 6 GB of memory)
  SPARSE24_CUTLASS_CACHE_DIR  where objects and the library go
  SPARSE24_CACHE_DIR          ... else its cutlass/ subdirectory
  CUDA_HOME / CUDA_PATH / NVCC  the CUDA toolkit (as the cuSPARSELt build)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .._build import cache_dirs, find_nvcc, writable_dir

__all__ = [
    "CONFIGS",
    "EPILOGUES",
    "EPILOGUE_CONFIGS",
    "MVUE_EPILOGUE_CONFIGS",
    "PRODUCTS",
    "BuildError",
    "Config",
    "build",
    "epilogues_of",
    "find_cutlass",
    "find_nvcc",
    "library_path",
    "local_deps",
    "prune",
    "selected_configs",
]

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
CUSPARSELT_CSRC = HERE.parent / "cusparselt" / "csrc"  # group math, ffi_common.h: shared
LIB_NAME = "libsparse24_cutlass"
ARCH = "90a"  # sparse wgmma needs the arch-specific target

FALLBACK = "use the cuSPARSELt or XLA path instead"

# dw_acc: dW = C + S(dZ^T) @ X, the weight gradient with a gradient accumulation's float32
# running sum C read in the epilogue (beta 1) instead of a separate add; built with dw but at
# 128x256 (_NO_DW_ACC)
PRODUCTS = {"fwd": 0, "dx": 1, "dw": 2, "dw_acc": 3}


@dataclass(frozen=True)
class Config:
    """One tile / cluster / schedule of the sparse GEMM kernel."""

    tile_m: int
    tile_n: int
    tile_k: int
    cluster_m: int
    cluster_n: int
    schedule: str  # "coop" (two consumer warp groups share a tile) or "pingpong"
    # "persistent" (each CTA takes whole output tiles) or "streamk" (the K loop of the last
    # wave's tiles split across CTAs, partial sums reduced in a workspace): for products
    # whose tile count leaves the last wave half empty, e.g. the weight gradient's 200
    # tiles on 132 SMs at GPT-2 774M
    scheduler: str = "persistent"
    products: tuple[str, ...] = ("fwd", "dx", "dw", "dw_acc")  # the products built for this config
    # The fused epilogues' shared memory (gemm_epilogue.cuh EpilogueShape; 0: CUTLASS's auto
    # choice): epilogue tile epi_m x epi_n (M 128 for coop, 64 for pingpong; N a multiple of
    # 16), epi_stages_c TMA-load stages of a loaded Aux (dx_dgelu's Z1), epi_stages_d stages
    # of D and of a stored Aux (fwd_gelu's Z). A smaller epilogue leaves the sparse mainloop
    # another stage (tests/cutlass_src/epilogue_smem_probe.cu prints them). Such a config is
    # for EPILOGUE_CONFIGS only (products=()); its plain GEMM is plain_config's.
    epi_m: int = 0
    epi_n: int = 0
    epi_stages_c: int = 0
    epi_stages_d: int = 0

    @property
    def plain_config(self) -> str:
        """The name without the epilogue-shape suffix: the config of the same GEMM with
        CUTLASS's auto epilogue (whose plain products a shaped config shares)."""
        return (f"t{self.tile_m}x{self.tile_n}x{self.tile_k}_c{self.cluster_m}x{self.cluster_n}"
                f"_{self.schedule}" + ("_sk" if self.scheduler == "streamk" else ""))

    @property
    def shaped_epilogue(self) -> bool:
        return bool(self.epi_m or self.epi_n or self.epi_stages_c or self.epi_stages_d)

    @property
    def name(self) -> str:
        # _e<M>x<N>: epilogue tile; _sc<n> / _sd<n>: StagesC / StagesD
        return (self.plain_config + (f"_e{self.epi_m}x{self.epi_n}" if self.epi_m else "")
                + (f"_sc{self.epi_stages_c}" if self.epi_stages_c else "")
                + (f"_sd{self.epi_stages_d}" if self.epi_stages_d else ""))

    def defines(self, product: int) -> list[str]:
        return [
            f"-DS24C_PRODUCT={product}",
            f"-DS24C_TILE_M={self.tile_m}", f"-DS24C_TILE_N={self.tile_n}",
            f"-DS24C_TILE_K={self.tile_k}",
            f"-DS24C_CLUSTER_M={self.cluster_m}", f"-DS24C_CLUSTER_N={self.cluster_n}",
            f"-DS24C_SCHEDULE={0 if self.schedule == 'coop' else 1}",
            f"-DS24C_STREAMK={int(self.scheduler == 'streamk')}",
            f'-DS24C_CONFIG="{self.name}"',
        ]


# Tile K is 128 for all: the compressed-A format depends on min(tile K, 128),
# and one compressor serves every config (gemm_instance.cu asserts it).
# No dw_acc at 128x256: the float32 source C's epilogue stages leave its sparse mainloop (84 KB
# a stage) one stage, and CUTLASS needs two (a compile error); a layer whose dw runs on one of
# them gets its running sum added after the GEMM (the backend's fallback).
_NO_DW_ACC = ("fwd", "dx", "dw")
_CONFIG_LIST = [
    Config(128, 128, 128, 1, 1, "coop"),
    Config(128, 256, 128, 1, 1, "coop", products=_NO_DW_ACC),
    Config(256, 128, 128, 1, 1, "coop"),
    Config(128, 256, 128, 2, 1, "coop", products=_NO_DW_ACC),
    Config(128, 128, 128, 1, 1, "pingpong"),
    # stream-K weight gradients (long K = the tokens, few output tiles); 128x256 also for the
    # forward / input gradient with few output rows, whose last wave is mostly empty: GPT-2
    # 1558M's 1600-row fc2 forward and fc1 input gradient at 8192 tokens (13 x 32 = 416 tiles,
    # 3.2 waves). 1600 rows are 12.5 tiles of 128 (4% padding) but 6.25 of 256 (12%): in the
    # step stream-K 128x256 ran 4% faster per call than stream-K 256x128, which ran 3% faster
    # than persistent 256x128 (docs/BENCHMARKS.md sections 13 and 14)
    Config(128, 256, 128, 1, 1, "coop", "streamk", _NO_DW_ACC),
    Config(256, 128, 128, 1, 1, "coop", "streamk", ("dw", "dw_acc")),
    # fused epilogues only, with a smaller epilogue (tile 128x16 instead of 128x32) so that
    # the sparse mainloop keeps the plain GEMM's stage count (probe table in
    # tests/cutlass_src/epilogue_smem_probe.cu): at 256x128 the auto epilogue leaves 2 stages
    # of 68 KB (plain: 3), this one 3, with 3 Aux-load stages (4 would cost the stage); at
    # 128x128 coop 4 stages (auto: 3). 128x256 has 2 stages of 84 KB whatever the epilogue,
    # ping-pong 128x128 has 4 already.
    Config(256, 128, 128, 1, 1, "coop", products=(), epi_m=128, epi_n=16, epi_stages_c=3),
    Config(128, 128, 128, 1, 1, "coop", products=(), epi_m=128, epi_n=16),
]
CONFIGS: dict[str, Config] = {c.name: c for c in _CONFIG_LIST}

# Fused-epilogue GEMMs (csrc/gemm_epilogue.cuh): each is one more ~90-150 s
# compile per config, so only the configs listed here get them (a subset of
# CONFIGS; SPARSE24_CUTLASS_CONFIGS narrows it further).
EPILOGUES = {"fwd_gelu": 0, "dx_dgelu": 1, "dx_dgelu_mvue": 2}
# The first is the default (epilogue_ops.DEFAULT_EPILOGUE_CONFIG); the shaped ones
# (Config.epi_*) are their own configs, so a benchmark times them beside the auto ones.
EPILOGUE_CONFIGS = ["t128x256x128_c1x1_coop", "t256x128x128_c1x1_coop", "t128x128x128_c1x1_pingpong",
                    "t256x128x128_c1x1_coop_e128x16_sc3", "t128x128x128_c1x1_coop_e128x16"]
# dx_dgelu_mvue (the MVUE of dZ1 in the input-gradient epilogue) ran 2.2x slower than dx_dgelu
# followed by our own MVUE kernel at GPT-2 774M on an H200 (docs/BENCHMARKS.md section 11): the
# FFN does not use it. Built for the two configs measured, for its GPU test and benchmark.
MVUE_EPILOGUE_CONFIGS = ["t128x128x128_c1x1_pingpong", "t128x256x128_c1x1_coop"]


def epilogues_of(config: str) -> list[str]:
    """The fused epilogues built for ``config``: none outside :data:`EPILOGUE_CONFIGS`;
    fwd_gelu and dx_dgelu in it; dx_dgelu_mvue too in :data:`MVUE_EPILOGUE_CONFIGS`."""
    if config not in EPILOGUE_CONFIGS:
        return []
    return [e for e in EPILOGUES if e != "dx_dgelu_mvue" or config in MVUE_EPILOGUE_CONFIGS]


def _epilogue_defines(cfg: Config, epilogue: int) -> list[str]:
    return [f"-DS24C_EPILOGUE={epilogue}"] + [
        d for d in cfg.defines(0) if not d.startswith("-DS24C_PRODUCT=")] + [
        f"-DS24C_EPI_TILE_M={cfg.epi_m}", f"-DS24C_EPI_TILE_N={cfg.epi_n}",
        f"-DS24C_EPI_STAGES_C={cfg.epi_stages_c}", f"-DS24C_EPI_STAGES_D={cfg.epi_stages_d}"]


class BuildError(RuntimeError):
    """The library cannot be built or found here (names the fix and the fallback)."""


def find_cutlass() -> tuple[Path, Path]:
    """(CUTLASS include dir, CUTLASS tools/util/include dir).

    From $SPARSE24_CUTLASS_DIR (a CUTLASS source tree), else the installed
    ``nvidia-cutlass`` wheel, whose ``cutlass_library`` package ships the
    sources under ``source/`` (found without importing it).
    """
    env = os.environ.get("SPARSE24_CUTLASS_DIR")
    if env:
        root = Path(env)
        where = f"SPARSE24_CUTLASS_DIR={env!r}"
    else:
        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or not spec.submodule_search_locations:
            raise BuildError(
                "CUTLASS headers not found: pip install nvidia-cutlass (its cutlass_library "
                "package ships them), or set SPARSE24_CUTLASS_DIR to a CUTLASS source tree; "
                f"or {FALLBACK}"
            )
        root = Path(list(spec.submodule_search_locations)[0]) / "source"
        where = f"the nvidia-cutlass wheel ({root})"
    inc = root / "include"
    util = root / "tools" / "util" / "include"
    if not (inc / "cutlass" / "cutlass.h").is_file():
        raise BuildError(f"{where} has no include/cutlass/cutlass.h; point SPARSE24_CUTLASS_DIR "
                         f"at a CUTLASS 3.x/4.x source tree, or {FALLBACK}")
    if not (util / "cutlass" / "util" / "packed_stride.hpp").is_file():
        raise BuildError(f"{where} has no tools/util/include/cutlass/util/packed_stride.hpp; "
                         f"point SPARSE24_CUTLASS_DIR at a full CUTLASS source tree, or {FALLBACK}")
    return inc.resolve(), util.resolve()


def selected_configs() -> list[Config]:
    """The configs to build: all, or $SPARSE24_CUTLASS_CONFIGS's (comma list)."""
    env = os.environ.get("SPARSE24_CUTLASS_CONFIGS", "").strip()
    if not env:
        return list(_CONFIG_LIST)
    names = [n.strip() for n in env.split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad or not names:
        raise BuildError(f"SPARSE24_CUTLASS_CONFIGS={env!r}: unknown config(s) {bad}; "
                         f"known: {', '.join(CONFIGS)}")
    return [CONFIGS[n] for n in names]


def _jobs() -> int:
    env = os.environ.get("SPARSE24_CUTLASS_JOBS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise BuildError(f"SPARSE24_CUTLASS_JOBS={env!r}: use a positive integer")
        return int(env)
    cores = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gb = 16.0
    return max(1, min(cores, int(mem_gb // 6)))


def _common_flags(inc: Path, util: Path) -> list[str]:
    return ["-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fno-strict-aliasing",
            "--expt-relaxed-constexpr", "-DNDEBUG", "-diag-suppress", "940,2473",
            "-I", str(CSRC), "-I", str(inc), "-I", str(util)]


def _device_flags() -> list[str]:
    return ["-gencode", f"arch=compute_{ARCH},code=sm_{ARCH}"]


@dataclass
class _Unit:
    name: str  # object's stem
    src: Path
    flags: list[str]


def _units(inc: Path, util: Path, configs: list[Config]) -> list[_Unit]:
    import jax.ffi  # jaxlib's XLA FFI headers, for the host units

    common = _common_flags(inc, util)
    # the quick host units first, so that their errors come before the long compiles;
    # they share the cuSPARSELt library's ffi_common.h
    host = common + ["-I", jax.ffi.include_dir(), "-I", str(CUSPARSELT_CSRC)]
    units = [_Unit(Path(cc).stem, CSRC / cc, host)
             for cc in ("registry.cc", "bindings.cc", "own_bindings.cc", "epilogue_bindings.cc")]
    units.append(_Unit("compress", CSRC / "compress.cu", common + _device_flags()))
    # our own CUTLASS-format compressors: the cuSPARSELt library's group math included
    units.append(_Unit("own_compress", CSRC / "own_compress.cu",
                       common + _device_flags() + ["-I", str(CUSPARSELT_CSRC)]))
    for cfg in configs:
        for pname in cfg.products:
            p = PRODUCTS[pname]
            units.append(_Unit(f"gemm_{cfg.name}_{pname}", CSRC / "gemm_instance.cu",
                               common + _device_flags() + cfg.defines(p)))
    for cfg in configs:
        for ename in epilogues_of(cfg.name):
            e = EPILOGUES[ename]
            # dx_dgelu_mvue's MVUE is our own compressor's (own_compress.cuh: cuSPARSELt's group math)
            units.append(_Unit(f"epi_{cfg.name}_{ename}", CSRC / "epilogue_instance.cu",
                               common + _device_flags() + _epilogue_defines(cfg, e)
                               + ["-I", str(CUSPARSELT_CSRC)]))
    return units


def _toolchain_key(nvcc: str, inc: Path) -> bytes:
    h = hashlib.sha256()
    h.update(os.path.realpath(nvcc).encode())
    try:
        h.update(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.encode())
    except OSError:
        pass
    # the CUTLASS release (its version header), not where it lies: a cache
    # carried to another checkout or virtual environment stays valid
    ver = inc / "cutlass" / "version.h"
    if ver.is_file():
        h.update(ver.read_bytes())
    return h.digest()


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def local_deps(src: Path) -> list[Path]:
    """``src`` and the csrc headers it includes, transitively (what its object's key hashes:
    a change to one unit's code recompiles that unit only)."""
    seen: dict[Path, None] = {}
    todo = [src]
    while todo:
        p = todo.pop()
        if p in seen or not p.is_file():
            continue
        seen[p] = None
        for inc in _INCLUDE.findall(p.read_text(errors="replace")):
            # as the preprocessor: the includer's folder first, then the -I folders
            for d in (p.parent, CSRC, CUSPARSELT_CSRC):
                if (d / inc).is_file():
                    todo.append(d / inc)
                    break
    return sorted(seen)


def _unit_key(unit: _Unit, toolchain: bytes) -> str:
    h = hashlib.sha256(toolchain)
    for p in local_deps(unit.src):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    # include folders are hashed by what they hold (the local headers above, the
    # CUTLASS release in the toolchain key, jaxlib's FFI headers below), not by
    # their absolute paths, which differ between checkouts and venvs
    flags = [("<include dir>" if prev == "-I" else f) for prev, f in zip([""] + unit.flags, unit.flags)]
    h.update("\0".join(flags).encode())
    if unit.src.suffix == ".cc":  # host units see jaxlib's FFI headers
        import jax.ffi

        for p in (Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "ffi.h",
                  Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h"):
            if p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _cache_dirs() -> list[Path]:
    return cache_dirs("cutlass", HERE, own_env="SPARSE24_CUTLASS_CACHE_DIR")


def _writable_dir(cands: list[Path]) -> Path:
    return writable_dir(cands, BuildError)


def _run(cmd: list[str], what: str) -> float:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        raise BuildError(f"could not run {cmd[0]}: {err}; or {FALLBACK}") from err
    if proc.returncode != 0:
        raise BuildError(f"nvcc failed (exit {proc.returncode}) on {what}:\n{' '.join(cmd)}\n"
                         f"{proc.stdout[-4000:]}{proc.stderr[-8000:]}\nOr {FALLBACK}.")
    return time.perf_counter() - t0


def _plan(configs: list[Config] | None = None):
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (set CUDA_HOME or NVCC, or put nvcc on PATH) to build "
                         f"the CUTLASS kernels; or {FALLBACK}")
    inc, util = find_cutlass()
    configs = selected_configs() if configs is None else configs
    toolchain = _toolchain_key(nvcc, inc)
    units = _units(inc, util, configs)
    keys = {u.name: _unit_key(u, toolchain) for u in units}
    lib_key = hashlib.sha256("\0".join(f"{u.name}:{keys[u.name]}" for u in units).encode())
    return nvcc, units, keys, lib_key.hexdigest()[:16]


def build(*, force: bool = False, verbose: bool = False, configs: list[Config] | None = None,
          jobs: int | None = None) -> Path:
    """Compile (what is not cached) and link the library; its path."""
    prebuilt = os.environ.get("SPARSE24_CUTLASS_KERNELS")
    if prebuilt:
        if not os.path.isfile(prebuilt):
            raise BuildError(f"SPARSE24_CUTLASS_KERNELS={prebuilt!r} is not a file (unset it to "
                             "build here, or point it at a built libsparse24_cutlass-*.so)")
        return Path(prebuilt)
    nvcc, units, keys, lib_key = _plan(configs)
    name = f"{LIB_NAME}-{lib_key}.so"
    if not force:
        for d in _cache_dirs():
            if (d / name).is_file():
                return d / name
    out_dir = _writable_dir(_cache_dirs())
    obj_dir = out_dir / "obj"
    obj_dir.mkdir(exist_ok=True)

    def compile_one(u: _Unit) -> tuple[str, float]:
        obj = obj_dir / f"{u.name}-{keys[u.name]}.o"
        if obj.is_file() and not force:
            return str(obj), 0.0
        tmp = obj_dir / f".{obj.name}.{os.getpid()}.tmp"
        cmd = [nvcc] + u.flags + ["-c", str(u.src), "-o", str(tmp)]
        if verbose:
            print(" ".join(cmd), flush=True)
        try:
            secs = _run(cmd, u.name)
        except BuildError:
            if tmp.exists():
                tmp.unlink()
            raise
        os.replace(tmp, obj)  # atomic: concurrent builders agree
        if verbose:
            print(f"  {u.name}: {secs:.1f} s", flush=True)
        return str(obj), secs

    n_jobs = jobs or _jobs()
    with cf.ThreadPoolExecutor(max_workers=n_jobs) as pool:
        results = list(pool.map(compile_one, units))
    objs = [r[0] for r in results]
    target = out_dir / name
    tmp = out_dir / f".{name}.{os.getpid()}.tmp"
    cmd = [nvcc, "-shared", *_device_flags(), *objs, "-o", str(tmp)]
    if verbose:
        print(" ".join(cmd), flush=True)
    _run(cmd, "the link")
    os.replace(tmp, target)  # atomic: concurrent builders agree
    return target


def prune(path: Path) -> list[Path]:
    """Delete the objects and libraries beside the built ``path`` that its build does not
    use (what a carried cache directory should hold); the deleted paths."""
    _, _, keys, _ = _plan()
    keep = {f"{n}-{k}.o" for n, k in keys.items()}
    gone = []
    for p in sorted(path.parent.glob(f"{LIB_NAME}-*.so")):
        if p.name != path.name:
            gone.append(p)
    for p in sorted((path.parent / "obj").glob("*.o")):
        if p.name not in keep:
            gone.append(p)
    for p in gone:
        p.unlink()
    return gone


def library_path() -> Path:
    """The built library, building it on first use."""
    return build()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparse24_jax_kernels.cutlass.build",
        description="Build the CUTLASS sm90 sparse-GEMM XLA FFI library of sparse24-jax "
                    "(cached: reruns compile only what changed).",
    )
    parser.add_argument("--force", action="store_true", help="recompile everything")
    parser.add_argument("-v", "--verbose", action="store_true", help="print nvcc commands, times")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel nvcc jobs")
    parser.add_argument("--list", action="store_true", help="list the configs and exit")
    parser.add_argument("--prune", action="store_true",
                        help="then delete cached objects and libraries this build does not use")
    args = parser.parse_args(argv)
    if args.list:
        for c in _CONFIG_LIST:
            print(c.name)
        return 0
    t0 = time.perf_counter()
    try:
        path = build(force=args.force, verbose=args.verbose, jobs=args.jobs)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.verbose:
        print(f"built in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.prune and not os.environ.get("SPARSE24_CUTLASS_KERNELS"):
        for p in prune(path):
            print(f"pruned {p}", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
