#!/usr/bin/env bash
# Everything that needs a CUDA machine, in one go, fail-fast:
#   1. the CUDA tests (bf16 autocast, channels_last, synchronised timing, CPU parity);
#   then NVIDIA MPS is started, when it can be, for the multi-process steps:
#   2. bench.throughput's GPU section (nano and medium images/s, 1/2/4 trials sharing the GPU,
#      GPU utilisation, the worker loop's duty cycle on the GPU);
#   3. bench.packing: packs of 1..64 nano and 1, 4, 16 medium trials against one trial alone
#      (aggregate trial-images/s, GPU busy, memory per trial), and K trials'
#      evaluations, K solo passes against one fused pass with the mAP on the device;
#   4. bench.search_efficiency on the loss-weights study's trials, 8 seeds, on shapes and
#      shapes-large, every study in its own process (one per CPU core), stopped at the
#      time left;
#   5. bench.tuner_peer: a tune study of YOLOv8n (trainer = "ultralytics") against Ultralytics'
#      own tuner at the same training epochs, both winners and the defaults on 3 fresh seeds;
#   6. bench.search_vs_defaults at the study's length (33-epoch trials): 4 Evolution and 4 random
#      studies on shapes and shapes-large, each incumbent and the defaults retrained on 3 fresh
#      seeds (what docs/benchmarks.md, "How good is the search", measured scaled down on a CPU).
#
#   bash bench/gpu.sh [OUT_DIR] [TOTAL_SECONDS]      # defaults: bench/results, 3 hours
#
# PYTHON overrides the interpreter (default `uv run python`). Each step's output is also written to
# OUT_DIR/gpu-log.txt. TOTAL_SECONDS bounds the whole script: the search-efficiency run gets what is
# left after steps 1 and 2, less a margin for the trials in flight and the summary.
set -uo pipefail
out=${1:-bench/results}
total=${2:-10800}
py=${PYTHON:-uv run python}
started=$(date +%s)
cores=$(nproc)  # before OMP_NUM_THREADS is set below: nproc honours it
mkdir -p "$out"
log="$out/gpu-log.txt"
export PYTHONUNBUFFERED=1

step() { echo "== $(( $(date +%s) - started )) s: $*" | tee -a "$log"; }

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } 2>&1 | tee -a "$log"
$py -c "import torch, torchvision, optuna; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'optuna', optuna.__version__, 'cuda', torch.cuda.is_available())" 2>&1 \
  | tee -a "$log" || exit 1
$py -c "from trainer.shapes import shapes_yaml; print(shapes_yaml())" 2>&1 | tee -a "$log" || exit 1

step "CUDA tests"
$py -m pytest -q -p no:cacheprovider tests/trainer/test_cuda.py 2>&1 | tee -a "$log" || exit 1

# Several processes on one GPU need NVIDIA MPS: without it, four nano trials sharing an H200 had
# not finished after 125 s (one alone: 11 s); see docs/benchmarks.md. Started here when the
# control program exists (root), stopped at the end.
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>>"$log"; then
  step "MPS started"
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi

step "GPU throughput"
timeout 300 $py -m bench.throughput --skip-cpu --out "$out" 2>&1 | tee -a "$log"

step "trial packing (nano 1..64, medium 1/4/16)"
timeout 420 $py -m bench.packing --device cuda --k 1,2,4,8,16,32,64 --iters 40 2>&1 | tee -a "$log"
timeout 300 $py -m bench.packing --device cuda --model medium --k 1,4,16 --iters 20 2>&1 \
  | tee -a "$log"
timeout 240 $py -m bench.packing --device cuda --eval --k 1,4,16,32 2>&1 | tee -a "$log"

# One torch thread per study (set in the bench); keep numpy/OpenMP in the COCO evaluation to one
# thread too, or 16 processes each start 16 threads.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
left=$(( (total - ($(date +%s) - started) - 75) / 2 ))
step "search efficiency, $cores processes, time limit ${left} s"
$py -m bench.search_efficiency --seeds 8 --jobs "$cores" --time-limit "$left" --out "$out" \
  2>&1 | tee -a "$log"
step "tune's search against Ultralytics' tuner on Ultralytics' trainer, 30-epoch runs"
timeout 3000 $py -m bench.tuner_peer --device cuda --epochs 30 --iterations 10 --seeds 3 \
  --out "$out" --name gpu 2>&1 | tee -a "$log"
left=$(( total - ($(date +%s) - started) - 30 ))
step "search vs the defaults, $cores processes, at most ${left} s"
timeout "$left" $py -m bench.search_vs_defaults --preset study --device cuda \
  --datasets shapes,shapes-large --jobs "$cores" --name search_vs_defaults-gpu 2>&1 | tee -a "$log"
step "done"
