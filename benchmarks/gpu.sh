#!/usr/bin/env bash
# Every benchmark on one GPU node in under 10 minutes; the tables are appended to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh                      # on a CUDA node (Hopper: peak bf16 dense 989e12 by default)
#   bash benchmarks/gpu.sh --peak-flops 312e12  # another GPU (A100: 312e12); or CYCLEGAN_PEAK_FLOPS=...
#   bash benchmarks/gpu.sh --quick              # CPU smoke of this script (CI): tiny sizes, no compile,
#                                               # writes to $OUT/RESULTS.md unless --results is given
# Options: --results FILE (default benchmarks/RESULTS.md; --quick: OUT/RESULTS.md), --out DIR (JSON files and
# logs; default a new temp dir), --budget SECONDS (default 570: sections that would not fit are skipped, and each
# runs under `timeout` so the whole stays inside the budget), --peak-flops FLOPS.
#
# Sections, most important first: (0) correctness checks with asserted outcomes (benchmarks/gpu_checks.py:
# NCCL on 2 GPUs, fp16 with a forced overflow, bf16 parity, compile without recompiles, CUDA graphs replayed,
# the device-side skip); (1) the fp32 step and bf16+cl ours vs the reference (goal ratio >= 1.0);
# (2) resnet9 bf16 + channels_last + compile (default and reduce-overhead: CUDA graphs) at batch 8 with MFU and
# peak memory (goals >= 2x the fp32 reference, MFU >= 35%); (3) the loop's fixed cost per step (goal <= 100 us);
# (4) a real 256 px training, fp32 vs bf16+cl+graphs: steps/s and translation PSNR (speed never bought with
# quality); (5) the data loader (goal >= 3x) and how many GPUs a node's CPUs feed; (6) framework overhead of the
# real loop on the loader's 256px shards (goal <= 3%); (7) (2) at batch 1, 4, 16; (8) unet fp32 and
# bf16+cl+compile at batch 8; (9) what the memory layout and cuDNN autotuning do (eager bf16 at batch 8).
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
RESULTS=""
OUT=""
BUDGET=570
PEAK="${CYCLEGAN_PEAK_FLOPS:-989e12}"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --results) RESULTS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --peak-flops) PEAK="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python}"
OUT="${OUT:-$(mktemp -d -t cyclegan-bench-XXXXXX)}"
mkdir -p "$OUT"
if [ -z "$RESULTS" ]; then
  if [ "$QUICK" = 1 ]; then RESULTS="$OUT/RESULTS.md"; else RESULTS="benchmarks/RESULTS.md"; fi
fi
HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$QUICK" = 0 ] && [ "$HAS_CUDA" != 1 ]; then
  echo "gpu.sh: no CUDA GPU visible; this script is for a GPU node (use --quick for the CPU smoke)" >&2
  exit 2
fi
CORES=$(nproc 2>/dev/null || echo 1)
WORKERS=$(( CORES < 8 ? CORES : 8 ))
DEADLINE=$(( SECONDS + BUDGET ))
STATUS=0

{
  echo
  if [ "$QUICK" = 1 ]; then
    echo "# gpu.sh --quick (CPU smoke of the script: code paths, not performance) — $(date -u '+%Y-%m-%d %H:%M UTC')"
  else
    echo "# GPU run — $(date -u '+%Y-%m-%d %H:%M UTC')"
  fi
  echo
  echo "- command: \`bash benchmarks/gpu.sh $*\` (peak for MFU: $PEAK FLOP/s)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  fi
  echo "- CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $CORES cores; $("$PY" -c 'import torch; print("torch", torch.__version__)')"
  echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
} >> "$RESULTS"

# section NAME MIN_SECONDS CAP_SECONDS -- command...: runs if MIN fits in what is left of the budget, under timeout
section() {
  local name="$1" min="$2" cap="$3"
  shift 4
  local left=$(( DEADLINE - SECONDS ))
  if [ "$left" -lt "$min" ]; then
    echo "== $name: skipped (${left}s left of the budget, needs ~${min}s)" | tee -a "$RESULTS"
    return 0
  fi
  local limit=$(( left < cap ? left : cap ))
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" --markdown "$RESULTS" 2>&1 | tee "$OUT/$name.log" | grep -v '^\[20.*WARNING'
  local rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ]; then
    STATUS=1
    local why="exit status $rc"
    [ "$rc" = 124 ] && why="timed out after ${limit}s"
    echo "- section $name: FAILED ($why); log: $OUT/$name.log" | tee -a "$RESULTS"
  fi
  echo "== $name: $(( SECONDS - start ))s"
}

if [ "$QUICK" = 1 ]; then
  # The same sections at tiny sizes on the CPU. No compile: CPU Inductor compilation takes minutes
  # (run `python -m benchmarks.step --quick --variants fp32+compile,bf16+cl+compile` to try that path).
  section correctness 20 300 -- "$PY" -m benchmarks.gpu_checks --quick --json "$OUT/correctness.json"
  section step-fp32 20 300 -- "$PY" -m benchmarks.step --quick --threads 1 --model resnet9,unet --variants fp32 --batch 1 --json "$OUT/step-fp32.json"
  section step-fast 20 300 -- "$PY" -m benchmarks.step --quick --threads 1 --model resnet9 --variants bf16+cl --batch 1,2 --peak-flops "$PEAK" --json "$OUT/step-fast.json"
  section loader 20 300 -- "$PY" -m benchmarks.loader --quick --threads 1 --data-dir "$OUT/loader-data" --step-json "$OUT/step-fast.json" --json "$OUT/loader.json"
  section overhead 20 300 -- "$PY" -m benchmarks.overhead --quick --threads 1 --json "$OUT/overhead.json"
  section fixed-cost 20 300 -- "$PY" -m benchmarks.fixed_cost --quick --threads 1 --json "$OUT/fixed-cost.json"
  section quality 20 300 -- "$PY" -m benchmarks.train_quality --quick --json "$OUT/quality.json"
else
  # asserted correctness first (NCCL, fp16 overflow, bf16 parity, compile recompiles, CUDA graphs, device skip)
  section correctness 60 200 -- "$PY" -m benchmarks.gpu_checks --json "$OUT/correctness.json"
  STEP=(-m benchmarks.step --size 256 --peak-flops "$PEAK")
  FAST=(--variants bf16+cl+compile,bf16+cl+graphs --reps 3)
  # the fast paths first: fused Adam (always), bf16 + channels_last, torch.compile default and reduce-overhead
  # (CUDA graphs of each network's forward and backward), against the fp32 reference step, with MFU and peak memory
  section step-fp32 60 150 -- "$PY" "${STEP[@]}" --model resnet9 --variants fp32,bf16+cl --batch 1 --reps 5 --json "$OUT/step-fp32.json"
  section step-resnet9-b8 90 240 -- "$PY" "${STEP[@]}" --model resnet9 "${FAST[@]}" --batch 8 --json "$OUT/step-fast.json"
  section fixed-cost 40 120 -- "$PY" -m benchmarks.fixed_cost --window 600 --reps 3 --json "$OUT/fixed-cost.json"
  # speed never bought with quality: real 256 px trainings, fp32 eager vs the fastest variant, same steps and seed
  section quality 180 300 -- "$PY" -m benchmarks.train_quality --variants fp32,bf16+cl+graphs --steps 1500 --size 256 --workers "$WORKERS" --json "$OUT/quality.json"
  section loader 60 150 -- "$PY" -m benchmarks.loader --workers "0,$WORKERS" --photos 300 --paintings 100 --large-photos 60 --large-paintings 20 --reps 3 --data-dir "$OUT/loader-data" --step-json "$OUT/step-fast.json" --json "$OUT/loader.json"
  if [ -f "$OUT/loader-data/kaggle/shards-raw/index.json" ]; then
    OVH_DATA=(--set data.root="$OUT/loader-data/kaggle/shards-raw" data.domain_a=photo data.domain_b=monet)
  else
    OVH_DATA=(--set data.demo_size=64)
  fi
  section overhead 60 120 -- "$PY" -m benchmarks.overhead --config resnet9 --size 256 --load-size 286 --batch 1 --workers "$WORKERS" --warmup-steps 10 --window 100 --log-every 50 --reps 3 "${OVH_DATA[@]}" --json "$OUT/overhead.json"
  # a time limit stops this one after the batch sizes done so far (they are kept)
  section step-resnet9-b1-4-16 90 240 -- "$PY" "${STEP[@]}" --model resnet9 "${FAST[@]}" --batch 1,4,16 --json "$OUT/step-batches.json"
  section step-unet 60 150 -- "$PY" "${STEP[@]}" --model unet --variants fp32,bf16+cl+compile --batch 8 --reps 3 --json "$OUT/step-unet.json"
  section step-layout 30 120 -- "$PY" "${STEP[@]}" --model resnet9 --variants bf16,bf16+cl,bf16+cl+cudnn --batch 8 --reps 3 --json "$OUT/step-layout.json"
fi

echo "results appended to $RESULTS; JSON and logs in $OUT"
exit $STATUS
