#!/usr/bin/env bash
# Every GPU measurement of the speed work in one run, for a machine lent for a few minutes (nothing is downloaded):
#   models: cspdarknet53 bf16 batch 256 vs timm eager / channels_last / compiled, cspnet fast, + CUDA graph,
#           + compile, + both, with each path's numbers vs the plain fp32 model; cspresnet50/cspresnext50 eager
#   decode: --resize device (exact resize on the GPU: must be 0 everywhere) and --decode gpu (nvJPEG) vs the
#           exact Pillow pipeline (pixels, top-1 agreement)
#   eval:   tools/test.py end to end over 10,000 generated JPEGs (--resize loader / --resize device / --decode gpu,
#           + CUDA graph) vs a timm-style ImageFolder loop, and each stage alone
# The open questions first (end to end, the GPU resize's exactness), figures already in RESULTS.md last.
# Each step has its own time limit and writes its section of $OUT/RESULTS.md as soon as it finishes.
# Usage (repo root): benchmarks/gpu_check.sh            on the GPU machine (OUT set by the device tool)
#                    benchmarks/gpu_check.sh --device cpu --quick     a smoke test of every step on CPU
set -uo pipefail
DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/cspnet-gpu-check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DATA=${DATA:-/tmp/cspnet-bench-jpegs}
LOG="$OUT/gpu_check.log"
cp benchmarks/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null || true
R=(--results "$OUT/RESULTS.md")

step() {  # step NAME SECONDS CMD...: run with a time limit, log everything, never stop the script
  local name=$1 limit=$2; shift 2
  echo "=== $(date +%T) $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v -E "Warning|warnings.warn|_warn_deprecated" | tee -a "$LOG"
  echo "=== $(date +%T) $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

{ nvidia-smi 2>/dev/null || true
  $PY -c "import sys, torch, torchvision, timm; print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
  nproc; } 2>&1 | tee -a "$LOG"

if [ "$DEVICE" = cuda ]; then
  step "eval end to end" 200 $PY benchmarks/bench_eval.py --device cuda --amp --num-images 10000 --data "$DATA" \
    --inputs loader nvjpeg device --variants cuda-graph --stages "${R[@]}"
  step "decode agreement" 90 $PY benchmarks/decode_agreement.py --device cuda --data "$DATA" --num-images 1000 "${R[@]}"
  step "models resnets bf16" 80 $PY benchmarks/bench_models.py --device cuda --dtype bf16 --batch-size 256 \
    --models cspresnet50 cspresnext50 --cuda-graph --rounds 5 --section models-cuda-bf16-resnets "${R[@]}"
  step "models cspdarknet53 bf16" 150 $PY benchmarks/bench_models.py --device cuda --dtype bf16 --batch-size 256 \
    --models cspdarknet53 --compile --cuda-graph --rounds 6 --section models-cuda-bf16-cspdarknet53 "${R[@]}" \
    --json "$OUT/models_cspdarknet53.json"
else
  Q=(); [ "$QUICK" = 1 ] && Q=(--quick)
  step "models (cpu smoke)" 600 $PY benchmarks/bench_models.py --device cpu --models cspresnet50 "${Q[@]}" \
    --section models-smoke "${R[@]}" --json "$OUT/models_smoke.json"
  step "eval end to end (cpu smoke)" 600 $PY benchmarks/bench_eval.py --device cpu --data "$DATA-smoke" "${Q[@]}" \
    --stages --section eval-smoke "${R[@]}"
  step "decode agreement (cpu smoke)" 300 $PY benchmarks/decode_agreement.py --device cpu --data "$DATA-smoke" \
    --num-images 24 --section decode-smoke "${R[@]}"
fi
echo "done; results in $OUT/RESULTS.md, log in $LOG"
