#!/usr/bin/env bash
# Run a plan of GPU jobs in parallel lanes, one lane per GPU, from the repo root:
#
#   bash benchmarks/gpu_lanes.sh benchmarks/plans/PLAN.txt
#
# A plan has one job per line, `lane | name | timeout_s | command` (blank lines and
# lines starting with # are skipped). Each lane runs its jobs in order on its own
# GPU (CUDA_VISIBLE_DEVICES=lane; lane "all" runs alone, after the numbered lanes,
# on every GPU), so two single-GPU measurements share a two-GPU machine instead of
# queueing. Jobs write under $RES/<name>/ (their $JOB); stdout/stderr go to
# $RES/<name>.log. At the end everything is packed into $OUT/res.tgz and a summary
# of each job's exit code and time is printed (the device tool returns at most 8
# files: one archive holds them all).
#
# Installs the repo and the wheels carried in .whl/ into /tmp/site once, and builds
# the cuSPARSELt FFI library once, before any lane starts. A JAX compilation cache
# (/tmp/jaxcache) is shared by all jobs: a program compiled by one job (the same
# config's step in train_scaling and step_profile) is reused by the next.
set -uo pipefail
PLAN=${1:?usage: gpu_lanes.sh PLAN}
OUT=${OUT:-/tmp/out}
RES=${RES:-/tmp/res}
mkdir -p "$OUT" "$RES"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TRITON_CACHE_DIR=/tmp/triton-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/jaxcache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
t_start=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation \
    --upgrade --target /tmp/site $(ls .whl/*.whl 2>/dev/null) . >"$RES/install.log" 2>&1 \
    || { cat "$RES/install.log"; exit 1; }
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv >"$RES/gpus.csv" 2>&1
python3 -m sparse24_jax_kernels.cusparselt.build -v >"$RES/build.log" 2>&1 || { tail -40 "$RES/build.log"; exit 1; }
echo "install + build: $((SECONDS - t_start)) s"

run_job() {  # lane name timeout command
  local lane=$1 name=$2 limit=$3 cmd=$4 t0=$SECONDS
  mkdir -p "$RES/$name"
  if [ "$lane" = all ]; then unset CUDA_VISIBLE_DEVICES; else export CUDA_VISIBLE_DEVICES=$lane; fi
  # stdin from /dev/null: a job must not eat the plan the lane is reading
  JOB="$RES/$name" timeout "$limit" bash -c "$cmd" </dev/null >"$RES/$name.log" 2>&1
  local r=$?
  echo "$name lane=$lane rc=$r $((SECONDS - t0))s" >>"$RES/summary.txt"
  echo "[$((SECONDS - t_start))s] $name (lane $lane): rc=$r, $((SECONDS - t0)) s"
  # packed after every job, so that a device call cut off by its time limit still
  # returns what the finished jobs wrote (the device tool returns $OUT as it is)
  tar -czf "$OUT/res.tmp.tgz" -C "$RES" . 2>/dev/null && mv -f "$OUT/res.tmp.tgz" "$OUT/res.tgz"
}

run_lane() {  # lane
  local lane=$1
  while IFS='|' read -r l name limit cmd; do
    # comments first: xargs (the trimming below) chokes on their apostrophes
    case "$(echo "$l" | tr -d '[:space:]')" in ""|\#*) continue ;; esac
    l=$(echo "$l" | xargs); name=$(echo "$name" | xargs); limit=$(echo "$limit" | xargs)
    [ "$l" = "$lane" ] && run_job "$l" "$name" "$limit" "$cmd"
  done <"$PLAN"
}

lanes=$(grep -v '^\s*#' "$PLAN" | cut -d'|' -f1 | xargs -n1 | grep -v '^all$' | sort -u)
for lane in $lanes; do run_lane "$lane" & done
wait
run_lane all
tar -czf "$OUT/res.tgz" -C "$RES" . 2>/dev/null
cp "$RES/summary.txt" "$OUT/summary.txt" 2>/dev/null
echo "=== summary ($((SECONDS - t_start)) s)"; cat "$RES/summary.txt"
