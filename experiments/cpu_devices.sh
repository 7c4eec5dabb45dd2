#!/usr/bin/env bash
# Speed of one config's train step on a CPU as one device (XLA's default: each op spread over all
# cores), as two devices with threaded ops, and as two devices whose ops each run on one thread
# (`--xla_cpu_multi_thread_eigen=false`), in alternating rounds (the speed of a shared CPU drifts
# by tens of percent within minutes). The global batch is the same in every setting; ACCUM_ONE and
# ACCUM_TWO set the micro-batches per step for one and two devices (e.g. 8 and 4 keep 16 images per
# device and micro-batch). Prints one line per run: setting, median and minimum step time (ms),
# images/s, and the matmul rate measured in that process over all its devices (GFLOP/s).
# Usage: bash experiments/cpu_devices.sh ROUNDS ACCUM_ONE ACCUM_TWO [benchmark flags...]
#   e.g. bash experiments/cpu_devices.sh 3 8 4 --config configs/fashion_mnist.py --mode train --steps 30
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1 accum_one=$2 accum_two=$3
shift 3
err=$(mktemp)
trap 'rm -f "$err"' EXIT
run() {
  local name=$1 flags=$2 out
  shift 2
  out=$(XLA_FLAGS="$flags" python -m vit_jax.benchmark --json "$@" 2>"$err" | tail -1) || { cat "$err" >&2; exit 1; }
  echo "$out" | python -c "
import json, sys
r = json.load(sys.stdin)
print('$name', f\"{r['step_ms']:.1f}\", f\"{r['step_ms_min']:.1f}\", f\"{r['images_per_s']:.0f}\", f\"{r['matmul_f32_gflops']:.0f}\")"
}
echo "setting median_ms min_ms images_per_s matmul_gflops"
for _ in $(seq "$rounds"); do
  run one-device "" "$@" --config.accum_steps="$accum_one"
  run two-devices-threaded "--xla_force_host_platform_device_count=2" "$@" --config.accum_steps="$accum_two"
  run two-devices-one-thread "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false" \
    "$@" --config.accum_steps="$accum_two"
done
