#!/bin/bash
# Issue 21 on the GPU: Tables 2-5 on the embedded model, calib=default, 256 videos per cell; resumable across calls.
# usage: bash .device_carry/gpu21.sh DEADLINE_S PARALLEL THREADS   (wheels installed once per warm machine)
set -u
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi -L; nproc
WORK=/tmp/qw
if [ "${FP_CHECK:-0}" = 1 ] && [ ! -d /tmp/qw ] && [ ! -d /tmp/qw_own ]; then
  # the restored FP videos were made on an H100: reuse them only if this card makes the same bytes
  mkdir -p /tmp/fpref && tar xzf .device_carry/restore/state.tgz -C /tmp/fpref fp
  python3 scripts/generate.py device=cuda logger=none calib=default calib.batch.enabled=true model.prompts.eval.count=256 \
    eval.prompts_per_batch=64 paths.log_dir=/tmp/fpcheck_logs eval.fp_dir=/tmp/fpcheck hydra.run.dir=/tmp/fpcheck_run > $OUT/fpcheck.log 2>&1
  if diff -rq -x manifest.json /tmp/fpref/fp /tmp/fpcheck > $OUT/fpdiff.txt 2>&1; then echo "FP videos byte-identical to the H100's"; else echo "FP videos differ: own FP"; WORK=/tmp/qw_own; fi
  tail -3 $OUT/fpdiff.txt
fi
[ -d /tmp/qw_own ] && WORK=/tmp/qw_own
RESTORE=.device_carry/restore; [ $WORK = /tmp/qw_own ] && RESTORE=/nonexistent
python3 .device_carry/sweep.py ${JOBS:-.device_carry/sweep_jobs.json} $WORK ${2:-8} ${3:-2} ${1:-540} $RESTORE -- \
  device=cuda logger=none calib=default calib.batch.enabled=true model.prompts.eval.count=256 eval.prompts_per_batch=64 \
  paths.log_dir=$WORK/logs 2>&1 | tee -a $OUT/driver.log | tail -25
