#!/usr/bin/env bash
# A/B speed of the benchmark between a base commit and the working tree, in alternating
# rounds (on a shared CPU the speed drifts by tens of percent within minutes; alternating
# puts both sides under the same drift). Prints one line per run: side, median and minimum
# step time (ms), images/s, and the matmul rate measured in that process (GFLOP/s).
# Usage: bash experiments/compare_commits.sh BASE ROUNDS [benchmark flags...]
#   e.g. bash experiments/compare_commits.sh HEAD~1 5 --config configs/fashion_mnist.py --mode train --steps 30
set -euo pipefail
cd "$(dirname "$0")/.."
base=$1 rounds=$2
shift 2
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -f "$tree.err"' EXIT
git worktree add --detach -q "$tree" "$base"
run() {
  local out
  out=$(cd "$1" && python -m vit_jax.benchmark --json "${@:3}" 2>"$tree.err" | tail -1) || { cat "$tree.err" >&2; exit 1; }
  echo "$out" | python -c "
import json, sys
r = json.load(sys.stdin)
print('$2', f\"{r['step_ms']:.1f}\", f\"{r['step_ms_min']:.1f}\", f\"{r['images_per_s']:.0f}\", f\"{r['matmul_f32_gflops']:.0f}\")"
}
echo "side median_ms min_ms images_per_s matmul_gflops"
for _ in $(seq "$rounds"); do
  run "$tree" "base($base)" "$@"
  run . "working-tree" "$@"
done
