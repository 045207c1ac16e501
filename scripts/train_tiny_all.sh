#!/usr/bin/env bash
# Retrain both assets of the embedded model in one go, fitted to one GPU call (flat outputs, at most 8 files):
# the domain feature network, then the tiny ARVD judged by it, then the sample grid and the frame sensitivity.
# The shipped v3 bundle came from two calls (docs/experiments/tiny_v3.md):
#   OUT=/tmp/s1 TINY_STEPS=1400 TINY_ARGS="train.first_chunk_batch=512 train.caption_dropout=0.1" bash scripts/train_tiny_all.sh
#   OUT=/tmp/s2 FEATNET=/tmp/s1/featnet.safetensors TINY_STEPS=800 TINY_ARGS="seed=1 init_from=/tmp/s1/tiny_arvd.safetensors \
#     train.lr=3e-4 train.warmup_steps=20 train.first_chunk_batch=512 train.caption_dropout=0.1 train.own_context.start_fraction=0.0" \
#     bash scripts/train_tiny_all.sh
#
#   OUT=/tmp/tiny bash scripts/train_tiny_all.sh                  # GPU (an H100 takes about 8 minutes)
#   OUT=/tmp/tiny DEVICE=cpu FEAT_STEPS=2 TINY_STEPS=2 EVAL_VIDEOS=8 SENS_PROMPTS=1 \
#     TINY_ARGS="train.videos_per_step=2 train.first_chunk_batch=2" bash scripts/train_tiny_all.sh   # smoke test
#
# Everything lands flat in $OUT: featnet.safetensors, featnet_metrics.json, tiny_arvd.safetensors,
# tiny_arvd_metrics.json, tiny_samples.png, sensitivity.json, and state.pt when the ARVD training stopped early (TRAIN_LIMIT seconds;
# continue it with RESUME=<that state.pt>). Copy the two bundles into qarvd/assets/ to ship them.
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
DEVICE=${DEVICE:-cuda}
FEAT_STEPS=${FEAT_STEPS:-2000}
TINY_STEPS=${TINY_STEPS:-1600}
EVAL_VIDEOS=${EVAL_VIDEOS:-1024}
TRAIN_LIMIT=${TRAIN_LIMIT:-100000}
RUNS=${RUNS:-/tmp/qarvd_tiny_runs}
mkdir -p "$OUT" "$RUNS"
FEATNET=${FEATNET:-}

if [ -z "$FEATNET" ]; then
  python scripts/train_featnet.py device="$DEVICE" seed=0 train.steps="$FEAT_STEPS" eval.num_videos="$EVAL_VIDEOS" \
    export_path="$OUT/featnet.safetensors" hydra.run.dir="$RUNS/featnet"
  cp "$RUNS/featnet/featnet_metrics.json" "$OUT/"
  FEATNET="$OUT/featnet.safetensors"
fi

rc=0
timeout "$TRAIN_LIMIT" python scripts/train_tiny_arvd.py device="$DEVICE" seed=0 train.steps="$TINY_STEPS" \
  eval.num_videos="$EVAL_VIDEOS" featnet_path="$FEATNET" export_path="$OUT/tiny_arvd.safetensors" \
  hydra.run.dir="$RUNS/tiny" ${RESUME:+resume="$RESUME"} ${TINY_ARGS:-} || rc=$?
if [ "$rc" != 0 ]; then
  cp "$RUNS/tiny/state.pt" "$OUT/" 2>/dev/null || true
  echo "tiny ARVD training stopped (exit $rc); resumable state in $OUT/state.pt" >&2
  exit "$rc"
fi
cp "$RUNS/tiny/tiny_arvd_metrics.json" "$OUT/"

python scripts/make_sample_grid.py device="$DEVICE" model.checkpoint.path="$OUT/tiny_arvd.safetensors" \
  out="$OUT/tiny_samples.png" hydra.run.dir="$RUNS/grid"

python scripts/sensitivity.py device="$DEVICE" logger=none calib.sensitivity_prompts="${SENS_PROMPTS:-32}" \
  model.checkpoint.path="$OUT/tiny_arvd.safetensors" hydra.run.dir="$RUNS/sens"
cp "$RUNS/sens/sensitivity.json" "$OUT/"
