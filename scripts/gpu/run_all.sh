#!/usr/bin/env bash
# Issue 9 on the GPU machine, in one device call per part list. Device command (<= 2000 chars):
#   bash scripts/gpu/run_all.sh A          # carry [".whl", "datapack"] with datapack = pack A
#   bash scripts/gpu/run_all.sh B          # carry [".whl", "datapack"] with datapack = pack B
# Parts: A = test chain28 chain64 nih ddp pipeline    (needs pack A: PneumoniaMNIST + small NIH)
#        B = bench compile kermany bench512           (needs pack B: Kermany 224)
# or any list of single steps: test chain28 chain64 nih ddp pipeline bench compile kermany bench512.
# Steps run in the order given; one that would not finish before DEADLINE_S (default 560 s after
# the start, under the tool's 600 s) is SKIPPED and listed, so results always get packed.
# What comes back in $OUT (<= 8 files): log_<tag>.txt, summary_<tag>.txt, env_<tag>.json,
# results_<tag>.tar.gz (HTML reports, index pages, JSON/CSV of each run, benchmark JSON; no
# checkpoints; split in 15 MiB parts if larger).
# Local checks: DRY_RUN=1 prints the commands; CPU_OK=1 allows a machine without CUDA
# (with SMOKE=1: 1 epoch, few benchmark steps), SKIP_INSTALL=1 uses the current Python as is.
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-560}
DRY_RUN=${DRY_RUN:-0}
SMOKE=${SMOKE:-0}
OUT=${OUT:-outputs/gpu_out}
RUNS=${RUNS:-/tmp/cxr_gpu_runs}
PY=${CXR_PY:-python3}
[ $# -gt 0 ] || set -- A
TAG=$(echo "$*" | tr ' ' '_')
SUMMARY=/dev/null
if [ "$DRY_RUN" != 1 ]; then
  mkdir -p "$OUT" "$RUNS/bench"
  exec > >(tee "$OUT/log_$TAG.txt") 2>&1
  SUMMARY="$OUT/summary_$TAG.txt"
  : > "$SUMMARY"
fi

DEV=cuda
GPU="--set train.device=cuda --set train.amp=bf16 --set train.channels_last=on"
EPOCHS=""
BENCH_STEPS=20
export CPU_OK=${CPU_OK:-0}
if [ "$CPU_OK" = 1 ]; then DEV=cpu; GPU="--set train.device=cpu"; fi
if [ "$SMOKE" = 1 ]; then EPOCHS="--set train.epochs=1 --set eval.n_bootstrap=50"; BENCH_STEPS=2; fi
CXR="$PY -m cxr_helpers.run.cli"

# step NAME MIN_SECONDS COMMAND [MAX_SECONDS]: run COMMAND (a string) if MIN_SECONDS still fit
# before the deadline; it is killed at the deadline or after MAX_SECONDS, whichever comes first.
step() {
  local name=$1 need=$2 cmd=$3 max=${4:-100000} left rc t0
  left=$((DEADLINE_S - ($(date +%s) - START)))
  if [ "$DRY_RUN" = 1 ]; then echo "[$name] $cmd"; return 0; fi
  if [ "$left" -lt "$need" ]; then
    echo "== $name SKIPPED: ${left}s left < ${need}s needed" | tee -a "$SUMMARY"; return 0
  fi
  [ "$left" -gt "$max" ] && left=$max
  echo "== $name (timeout ${left}s): $cmd"
  t0=$(date +%s)
  timeout --kill-after=10 "$left" bash -c "$cmd"
  rc=$?
  printf '== %-10s rc=%-3s %4ss\n' "$name" "$rc" "$(($(date +%s) - t0))" | tee -a "$SUMMARY"
}

pack() {
  [ "$DRY_RUN" = 1 ] && return 0
  local tarf="$OUT/results_$TAG.tar.gz"
  tar czf "$tarf" -C "$RUNS" --exclude='*.pt' --exclude='*.pth' --exclude='*.npy' --exclude='*.npz' \
    --exclude='notebooks' --exclude='cache' --exclude='*.ckpt' . 2>/dev/null
  if [ "$(stat -c %s "$tarf")" -gt $((15 * 1024 * 1024)) ]; then
    split -b 15M -d "$tarf" "$tarf.part"; rm -f "$tarf"
  fi
  echo "== headline numbers (scripts/gpu/show_runs.py)"
  find "$RUNS" -mindepth 1 -maxdepth 1 -type d ! -name bench -print0 | sort -z | xargs -0 -r $PY scripts/gpu/show_runs.py
  echo "== packed:"; ls -la "$OUT"
  echo "== summary ($TAG, $(($(date +%s) - START)) s)"; cat "$SUMMARY"
}
trap pack EXIT

# --- setup: wheels, environment record -------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  echo "[install] source scripts/gpu/install_on_device.sh"
elif [ "${SKIP_INSTALL:-0}" != 1 ]; then
  # shellcheck source=/dev/null
  source scripts/gpu/install_on_device.sh || exit 1
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
fi
if [ "$DRY_RUN" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 || true
  $PY - "$OUT/env_$TAG.json" <<'PY'
import json, platform, sys, time, torch
info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": __import__("os").cpu_count()}
for mod in ("timm", "torchvision", "numpy", "papermill", "nbconvert", "pytorch_grad_cam", "pydicom"):
    try:
        info[mod] = getattr(__import__(mod), "__version__", "?")
    except Exception as exc:  # noqa: BLE001
        info[mod] = f"MISSING: {exc}"
print(json.dumps(info, indent=1)); open(sys.argv[1], "w").write(json.dumps(info, indent=1))
if not torch.cuda.is_available() and __import__("os").environ.get("CPU_OK", "0") != "1":
    sys.exit("run_all: torch sees no CUDA device; this script is for the GPU machine (CPU_OK=1 to try anyway)")
PY
  [ $? -eq 0 ] || exit 1
fi

need_pack() {  # need_pack DIR STEP: one line and a failed step when the wrong datapack travelled
  [ "$DRY_RUN" = 1 ] || [ -e "datapack/$1" ] && return 0
  echo "== $2 SKIPPED: datapack/$1 absent (build it with scripts/gpu/make_datapack.py and carry datapack)" | tee -a "$SUMMARY"
  return 1
}

PM28=datapack/pneumoniamnist/pneumoniamnist.npz
PM64=datapack/pneumoniamnist/pneumoniamnist_64_reconstructed.npz
SUMMARY_JSON="$PY scripts/gpu/show_runs.py"
TP="$PY benchmarks/train_throughput.py --workers 8 --steps $BENCH_STEPS --device $DEV"

run_step() {
  case $1 in
    test) step test 60 "$PY -m pytest -x -q -p no:cacheprovider tests/test_train.py tests/test_augment.py tests/test_runner.py -k 'not ddp'" ;;
    chain28) need_pack pneumoniamnist chain28 && step chain28 120 \
      "$CXR run configs/pneumoniamnist.yaml --set data.root=$PM28 $GPU $EPOCHS --no-progress --out $RUNS/pmnist28" ;;
    chain64) need_pack pneumoniamnist chain64 && step chain64 150 \
      "$CXR run configs/pneumoniamnist.yaml --set data.root=$PM64 --set data.image_size=64 $GPU $EPOCHS --no-progress --out $RUNS/pmnist64" ;;
    nih) need_pack nih_cxr14 nih && step nih 90 \
      "$CXR run configs/nih_cxr14.yaml --set data.root=datapack/nih_cxr14 $GPU $EPOCHS --no-progress --out $RUNS/nih_small" ;;
    # torchrun with 1 process on the GPU (the issue's nccl check), then 2 CPU processes (gloo): with
    # WORLD_SIZE=1 train.py does not init a process group, so the 2-rank run is what exercises DDP.
    ddp) need_pack pneumoniamnist ddp && step ddp 60 \
      "$PY -m torch.distributed.run --standalone --nproc_per_node=1 -m cxr_helpers.run.cli train configs/pneumoniamnist.yaml --set data.root=$PM28 $GPU --set train.epochs=2 $EPOCHS --out $RUNS/ddp_pmnist28 && $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m cxr_helpers.run.cli train configs/pneumoniamnist.yaml --set data.root=$PM28 --set train.device=cpu --set train.epochs=1 --out $RUNS/ddp2_cpu_pmnist28; rc=\$?; $SUMMARY_JSON $RUNS/ddp_pmnist28 $RUNS/ddp2_cpu_pmnist28; exit \$rc" 180 ;;
    pipeline) step pipeline 120 "$PY benchmarks/data_pipeline.py $([ "$SMOKE" = 1 ] && echo --quick) --out $RUNS/bench/data_pipeline.json" ;;
    bench) step bench 120 "$TP --models densenet121,resnet50,convnext_tiny,resnet18 --sizes 224 --modes fp32,bf16_cl --batch 256 --out $RUNS/bench/train_throughput_224.json" ;;
    compile) step compile 150 "$TP --models densenet121,resnet50,convnext_tiny,resnet18 --sizes 224 --modes bf16_cl --compile --batch 256 --out $RUNS/bench/train_throughput_224_compile.json" ;;
    bench512) step bench512 60 "$TP --models densenet121 --sizes 512 --modes fp32,bf16_cl --batch 64 --out $RUNS/bench/train_throughput_512.json" ;;
    kermany) need_pack kermany_224 kermany && step kermany 150 \
      "$CXR run configs/kermany.yaml --set data.root=datapack/kermany_224 $GPU $EPOCHS --no-progress --out $RUNS/kermany" ;;
    *) echo "run_all: unknown part '$1' (A, B, test, chain28, chain64, nih, ddp, pipeline, bench, compile, bench512, kermany)" >&2; return 2 ;;
  esac
}

for part in "$@"; do
  case $part in
    A) for s in test chain28 chain64 nih ddp pipeline; do run_step $s; done ;;
    B) for s in bench compile kermany bench512; do run_step $s; done ;;
    *) run_step "$part" || exit 2 ;;
  esac
done
