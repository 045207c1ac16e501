#!/bin/bash
# Issue 21 on the GPU: Tables 2-5 on the embedded model, calib=default, 256 videos per cell; resumable across calls.
# usage: bash .device_carry/gpu21.sh DEADLINE_S PARALLEL THREADS
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi -L; nproc
ls /tmp/qw 2>/dev/null | head -3
python3 .device_carry/sweep.py .device_carry/sweep_jobs.json /tmp/qw ${2:-8} ${3:-2} ${1:-540} .device_carry/restore -- \
  device=cuda logger=none calib=default calib.batch.enabled=true model.prompts.eval.count=256 eval.prompts_per_batch=64 \
  paths.log_dir=/tmp/qw/logs 2>&1 | tee $OUT/driver.log
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
