#!/usr/bin/env bash
# The checks of a session that is lent a GPU, as one prepared command:
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh build tests sanitize bench-quick
#   OUT=/tmp/gpu bash scripts/gpu_check.sh build tests bench
#   OUT=/tmp/gpu bash scripts/gpu_check.sh build profile sanitize-triton
#
# Stages run in the order given, each under its own time limit; a failing stage does not stop the
# next one, but makes the script exit non-zero at the end. Everything lands in $OUT: log.txt (every
# stage's output), records.jsonl (benchmark cases, appended as each is measured, so a killed run
# keeps them) and results/ (the rendered tables and plot, as bench/results/ holds them).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGES="build tests sanitize sanitize-triton profile bench-quick bench-training bench-compiled bench"
for name in "$@"; do
  case " $STAGES " in
    *" $name "*) ;;
    *) echo "gpu_check.sh: unknown stage '$name' (stages: $STAGES)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
rm -rf "$OUT/records.jsonl" "$OUT/results"
failed=()
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
[ -d /usr/local/cuda ] && export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, report the exit status and wall time
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "=== $name: start $(date -u +%T) (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start))s"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

bench() {  # bench SECONDS PYTEST-ARGS...: one slice of the benchmarks, appended to records.jsonl
  local limit=$1
  shift
  stage "bench $*" "$limit" "$PYTHON" -m pytest -q -p no:cacheprovider --bench-seconds 0.5 \
    --bench-records "$OUT/records.jsonl" "$@"
}

environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PYTHON" -c "import torch, triton, sys; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, '| triton', triton.__version__, '|', torch.cuda.get_device_name(),
torch.cuda.get_device_properties(0).multi_processor_count, 'SMs')"
  nvcc --version | tail -2
  uname -r
}

{
  environment
  if [ -d .whl ]; then  # packages the GPU image lacks (open_clip for the training-step benchmark)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site
  fi
  for name in "$@"; do
    case $name in
      build)
        TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} LOWRES_CUDA=1 \
          stage build 420 "$PYTHON" -m pip install --no-build-isolation --no-deps -e . ;;
      tests)
        # TEST_FILES narrows the run (say, to the one backend a change touched)
        stage tests 150 "$PYTHON" -m pytest -q -n 12 -p no:cacheprovider -rfE --tb=short \
          ${TEST_FILES:-tests/test_kernel_backends.py tests/test_nn_and_backends.py} ;;
      sanitize)  # float16 runs the same code as bfloat16 (float computation, 2-byte storage)
        stage memcheck-cuda 120 compute-sanitizer --tool memcheck --error-exitcode 1 \
          "$PYTHON" scripts/cuda_memcheck.py --backend cuda --dtype float32 --dtype bfloat16 --dtype float64
        stage racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 1 \
          "$PYTHON" scripts/cuda_memcheck.py --backend cuda --dtype float32 ;;
      sanitize-triton)  # Triton's compiler is slow under the sanitizer: its kernels get float32 only
        stage memcheck-triton 150 compute-sanitizer --tool memcheck --error-exitcode 1 \
          "$PYTHON" scripts/cuda_memcheck.py --backend triton --dtype float32 ;;
      profile)  # where the CUDA kernels' time goes at the headline shape (Nsight Compute's basic sections)
        stage profile 240 ncu --clock-control none \
          --kernel-name "regex:tokenize|grad_kernel|mixed_attention|softmax_backward|diagonals" \
          "$PYTHON" -m bench.profile --backend cuda --calls 1 ;;
      bench-quick)  # the headline shape without the compiled peers, and ours against stock at the
        # other shapes: a first look in about two minutes
        bench 100 -k "vit_h14_b8 and not compile" --bench-seconds 0.2 bench/test_kernels.py
        bench 60 -k "not vit_h14_b8 and (ours or -torch-) and not compile" --bench-seconds 0.2 \
          bench/test_kernels.py ;;
      bench-training)  # the ViT-H/14 training step with and without the baselines
        bench 80 bench/test_training_step.py ;;
      bench-compiled)  # the torch.compile peers at the headline shape (compilation dominates the time)
        bench 120 -k "vit_h14_b8 and compile" --bench-seconds 0.2 bench/test_kernels.py ;;
      bench)  # in order of importance, so a time limit cuts the least useful slice; at the other
        # shapes the naive oracle (seconds per call at batch 64) and the compiled peers are skipped
        bench 160 -k vit_h14_b8 --bench-seconds 0.3 bench/test_kernels.py
        bench 80 bench/test_training_step.py
        bench 80 -k "vit_h14_b64 and not compile and not naive" bench/test_kernels.py
        bench 50 -k "(vit_h14_b1 or vit_b16_b8) and not compile and not naive" --bench-seconds 0.2 \
          bench/test_kernels.py ;;
    esac
  done
  if [ -s "$OUT/records.jsonl" ]; then
    "$PYTHON" -m bench.report "$OUT/records.jsonl" --out "$OUT/results" && cat "$OUT"/results/*.md
  fi
  if [ "${#failed[@]}" -gt 0 ]; then
    echo "=== failed stages: ${failed[*]}"
    exit 1
  fi
} 2>&1 | tee "$OUT/log.txt"
