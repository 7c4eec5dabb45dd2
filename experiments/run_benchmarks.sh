#!/usr/bin/env bash
# Every figure of BENCHMARKS.md, one benchmark command per line, appended as JSON lines to
# experiments/results/benchmarks_<backend>.jsonl (each line names its config and mode).
# Usage: bash experiments/run_benchmarks.sh [FASHION_MNIST_DIR]   (the directory enables --mode input)
set -euo pipefail
cd "$(dirname "$0")/.."
backend=$(python -c "import jax; print(jax.default_backend())" 2>/dev/null)
out=experiments/results/benchmarks_${backend}.jsonl
mkdir -p experiments/results
b() { echo "+ python -m vit_jax.benchmark $*" >&2; python -m vit_jax.benchmark --json "$@" | tee -a "$out"; }

# Utilisation: forward and train step against the same process's matmul rate.
b --model ViT-B_16 --image_size 224 --batch 8 --steps 5
b --model ViT-Ti_16 --image_size 224 --batch 8 --steps 5
b --config configs/fashion_mnist.py --steps 20
# Compile time with scan: ViT-H/14 against ViT-B/16 (compile only: --steps 0).
b --model ViT-B_16 --image_size 224 --batch 8 --mode train --steps 0
b --model ViT-B_16 --image_size 224 --batch 8 --mode train --steps 0 --scan
b --model ViT-H_14 --image_size 224 --batch 8 --mode train --steps 0 --scan
# Memory: ViT-L/16 at batch 8, XLA's peak for each remat/scan choice, then one real step with remat.
for opts in "" "--remat full" "--scan" "--scan --remat full" "--scan --remat dots"; do
  b --model ViT-L_16 --image_size 224 --batch 8 --mode train --steps 0 $opts
done
b --model ViT-L_16 --image_size 224 --batch 8 --mode train --steps 1 --warmup 0 --scan --remat full
if [ -n "${1:-}" ]; then
  b --config configs/fashion_mnist.py --config.dataset="$1" --mode input --steps 200
fi
