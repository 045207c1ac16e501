"""Hydra callbacks: where runs go and what their logs hold (``conf/hydra/default.yaml``), and GPU placement of
sweep jobs (``conf/hydra/launcher/*.yaml``).

- :class:`JobLog` (every entry point): prints the run or sweep folder when it starts and when it ends, writes a
  start and an end line (status, seconds) into each job's log file, and, when a job fails, its traceback: Hydra
  keeps a job's exception to itself (a sweep goes on with the next job) and prints it on stderr only.

- :class:`GPUSlots` (joblib launcher): every job leases a slot of one GPU of the machine for its whole run through
  an exclusive file lock in the sweep folder and makes that GPU the current CUDA device; ``jobs_per_gpu`` slots per
  GPU let small models share one (the embedded model's jobs are bound by kernel launches, not by the GPU), and
  ``threads_per_job`` keeps those jobs from oversubscribing the CPU cores (on one 16-core H100 machine 8 jobs x 2
  threads finished the Table 2 baselines in 405-476 s each; 14 x 1 thread slowed every job past 546 s). A lease, not ``job.num % n``,
  because joblib hands jobs to whichever worker is free: two jobs with the same residue can run at the same time.
- :class:`SubmititTorchDistributed` (submitit launchers): inside a submitit task, exports RANK / WORLD_SIZE /
  LOCAL_RANK / MASTER_ADDR / MASTER_PORT, so the same RANK/WORLD_SIZE sharding that serves ``torchrun`` splits a
  job's prompts over ``tasks_per_node x nodes`` SLURM tasks.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class JobLog(Callback):
    """Folders on the console, job start / end / traceback in the job's log file (``<output_dir>/<script>.log``)."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        print(f"run folder: {config.hydra.run.dir}", flush=True)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        print(f"run folder: {config.hydra.run.dir}", flush=True)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from qarvd.app.preflight import job_overrides

        print(f"sweep folder: {config.hydra.sweep.dir} ({len(job_overrides(config))} jobs)", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print(f"sweep folder: {config.hydra.sweep.dir}", flush=True)
        preset = config.hydra.runtime.choices.get("experiment")
        if preset:
            print(f"tables and report: python scripts/make_tables.py table={preset} records=[{config.hydra.sweep.dir}]",
                  flush=True)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()
        log.info("job %s started in %s; overrides: %s", config.hydra.job.name, config.hydra.runtime.output_dir,
                 " ".join(config.hydra.overrides.task) or "(none)")

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        seconds = time.perf_counter() - self._t0
        if job_return is not None and job_return.status == JobStatus.FAILED:
            err = job_return._return_value  # the exception (reading .return_value would raise it)
            log.error("job %s FAILED after %.1f s", config.hydra.job.name, seconds,
                      exc_info=(type(err), err, err.__traceback__))
        else:
            log.info("job %s finished in %.1f s", config.hydra.job.name, seconds)


def lease_gpu(lock_dir: str | os.PathLike, num_gpus: int, slots_per_gpu: int = 1, poll_s: float = 1.0,
              timeout_s: Optional[float] = None):
    """Index of a GPU with a slot no other process holds, and the open lock file that holds it (close it to release).
    Slots fill GPU by GPU in turn (slot 0 of every GPU first), so jobs spread before they share.

    Waits (polling) while all ``num_gpus x slots_per_gpu`` slots are leased; raises TimeoutError after ``timeout_s``.
    """
    if slots_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu must be >= 1, got {slots_per_gpu}")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        for k in range(slots_per_gpu):
            for i in range(num_gpus):
                f = open(lock_dir / f"gpu{i}.slot{k}.lock", "w")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                f.write(f"{os.getpid()}\n")
                f.flush()
                return i, f
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"all {num_gpus} x {slots_per_gpu} GPU slots stayed leased for {timeout_s} s "
                               f"(locks in {lock_dir})")
        time.sleep(poll_s)


class GPUSlots(Callback):
    """Lease a GPU slot per job for its duration and make its GPU the current device (``device=cuda`` then means
    it); ``threads_per_job`` sets the job's CPU threads (torch and the OMP/MKL variables its subprocesses read)."""

    def __init__(self, lock_dir: Optional[str] = None, jobs_per_gpu: int = 1, threads_per_job: Optional[int] = None) -> None:
        if threads_per_job is not None and int(threads_per_job) < 1:
            raise ValueError(f"hydra.callbacks.gpu_slots.threads_per_job must be >= 1 or null, got {threads_per_job}")
        if int(jobs_per_gpu) < 1:
            raise ValueError(f"hydra.callbacks.gpu_slots.jobs_per_gpu must be >= 1, got {jobs_per_gpu}")
        self.lock_dir, self.jobs_per_gpu, self.threads_per_job = lock_dir, int(jobs_per_gpu), threads_per_job
        self._lock = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        import torch

        if self.threads_per_job is not None:
            n = int(self.threads_per_job)
            torch.set_num_threads(n)
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = str(n)
        gpus = torch.cuda.device_count()
        if gpus == 0:
            return  # CPU-only machine: nothing to place
        lock_dir = self.lock_dir or os.path.join(config.hydra.sweep.dir, ".gpu_leases")
        index, self._lock = lease_gpu(lock_dir, gpus, self.jobs_per_gpu)
        torch.cuda.set_device(index)
        os.environ["QARVD_GPU_INDEX"] = str(index)  # visible to the job's subprocesses
        log.info("job %s leased a slot of GPU %d of %d (%d per GPU)", config.hydra.job.num, index, gpus, self.jobs_per_gpu)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class SubmititTorchDistributed(Callback):
    """Inside a submitit job, export the torch.distributed env variables of this task (no-op elsewhere)."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not os.environ.get("SUBMITIT_EXECUTOR"):
            return
        from submitit.helpers import TorchDistributedEnvironment

        import torch

        env = TorchDistributedEnvironment().export(set_cuda_visible_devices=torch.cuda.is_available())
        log.info("submitit task: RANK=%d WORLD_SIZE=%d LOCAL_RANK=%d MASTER_ADDR=%s MASTER_PORT=%d",
                 env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port)
