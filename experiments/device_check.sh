#!/usr/bin/env bash
# The first run on a GPU (or TPU): one command, one JSON summary on the last line of its output.
#   1. the benchmark: ViT-B/16 at 224 px, train step and inference, float32 and bfloat16 compute
#      (float32 parameters), each with its utilisation (MFU) against the matmul rate measured in
#      the same process (bfloat16 against the bfloat16 rate);
#   2. a training of about two minutes: the quickstart recipe (scikit-learn's digits, offline) to
#      its final evaluation;
#   3. with several devices, the multi-device equality test (the same run on one device and on all).
# Usage: bash experiments/device_check.sh [OUT_DIR]   (default: ${OUT:-/tmp}/device_check)
# A dry run on a CPU, smaller: MODEL=ViT-Ti_16 IMAGE=32 BATCH=8 STEPS=2 TRAIN_ARGS=--config.total_steps=20 \
#   bash experiments/device_check.sh /tmp/dc
# Install first: pip install -r requirements.txt 'jax[cuda12]==0.10.2' (README, GPUs and TPUs).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp}/device_check}
mkdir -p "$out"
log() { echo "+ $*" >&2; }

python - <<'EOF' >"$out/device.json" 2>"$out/device.err"
import json, jax
d = jax.devices()[0]
print(json.dumps({"backend": jax.default_backend(), "devices": jax.device_count(), "kind": d.device_kind,
                  "jax": jax.__version__}))
EOF

: >"$out/benchmark.jsonl"
for dtype in float32 bfloat16; do
  for mode in train infer; do
    log "benchmark ${MODEL:-ViT-B_16} $mode $dtype"
    python -m vit_jax.benchmark --model "${MODEL:-ViT-B_16}" --image_size "${IMAGE:-224}" --batch "${BATCH:-128}" \
      --mode "$mode" --dtype "$dtype" --steps "${STEPS:-20}" --json 2>>"$out/benchmark.err" | tail -1 \
      >>"$out/benchmark.jsonl"
  done
done

log "training: configs/quickstart.py at full length, then its evaluation"
start=$(date +%s)
# shellcheck disable=SC2086
python -m vit_jax.main --config quickstart --workdir "$out/run" ${TRAIN_ARGS:-} >"$out/train.log" 2>&1
train_rc=$?
train_s=$(( $(date +%s) - start ))

equality_rc=skipped
if [ "$(python -c 'import jax; print(jax.device_count())' 2>/dev/null)" -gt 1 ]; then
  log "multi-device equality"
  python -m pytest -q -p no:cacheprovider -n 0 "tests/test_multiprocess.py::test_layouts_give_the_same_training" \
    >"$out/equality.log" 2>&1
  equality_rc=$?
fi

python - "$out" "$train_rc" "$train_s" "$equality_rc" <<'EOF'
import json, os, sys
out, train_rc, train_s, equality_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
device = json.load(open(os.path.join(out, "device.json"))) if os.path.getsize(os.path.join(out, "device.json")) else {}
rows = [json.loads(line) for line in open(os.path.join(out, "benchmark.jsonl")) if line.strip()]
keep = ("mode", "compute_dtype", "batch", "step_ms", "images_per_s", "achieved_gflops", "matmul_bf16_gflops",
        "matmul_f32_gflops", "utilisation", "compile_s", "device_peak_bytes")
final = None
for line in open(os.path.join(out, "train.log")):
    if line.startswith("{"):
        final = json.loads(line)
summary = {
    "device": device,
    "benchmark": [{k: r.get(k) for k in keep} for r in rows],
    "training": {"rc": train_rc, "wall_s": train_s, "result": final},
    "multi_device_equality": equality_rc if equality_rc == "skipped" else ("passed" if equality_rc == "0" else "failed"),
}
print(json.dumps(summary))
EOF
