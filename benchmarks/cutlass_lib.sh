#!/usr/bin/env bash
# Prints the path of the CUTLASS sparse-GEMM library for a GPU job (run from the repo root):
# the prebuilt one carried in .cutlass_build/ (built on a CPU machine with
#   SPARSE24_CUTLASS_CACHE_DIR=.cutlass_build python -m sparse24_jax_kernels.cutlass.build)
# if there is one and it loads here (glibc / libstdc++ of this machine), else one built here
# (cached in /tmp/cutlass_build; ~2 min on 16 cores).
# Use: export SPARSE24_CUTLASS_KERNELS=$(bash benchmarks/cutlass_lib.sh)
set -euo pipefail
lib=$(ls -t "$PWD"/.cutlass_build/libsparse24_cutlass-*.so 2>/dev/null | head -1 || true)
if [ -n "$lib" ] && ! python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$lib" 2>/tmp/cutlass_load.err; then
  echo "the carried $lib does not load here ($(tail -1 /tmp/cutlass_load.err)); building" >&2
  lib=""
fi
if [ -z "$lib" ]; then
  lib=$(SPARSE24_CUTLASS_CACHE_DIR=/tmp/cutlass_build python3 -m sparse24_jax_kernels.cutlass.build -v \
        2>/tmp/cutlass_build.err | tail -1)
fi
echo "$lib"
