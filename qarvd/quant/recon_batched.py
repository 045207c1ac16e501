"""Layer-wise reconstruction of many layers in lock-step, with the codes and scales of one layer at a time.

With layer-wise reconstruction on FP inputs every layer is independent given its captured inputs. This engine stages
the captured inputs of a group of layers on the accelerator at once, within ``calib.batch.gpu_gb``, and advances all
of them iteration by iteration. Each layer keeps its own sample draws (its seeded generator), optimisers and
objective, built by the very functions the one-at-a-time path uses (:class:`~qarvd.quant.reconstruct.RoundingLearner`,
:func:`~qarvd.quant.reconstruct.layer_objective`), so every layer does exactly the arithmetic of
:func:`~qarvd.quant.reconstruct.reconstruct_layer`: codes and scales are bit-identical (tests/test_recon_batched.py).

Why the layers are not stacked into one batched matmul (bmm / vmap over a layer dimension): it cannot give the same
bits and it would not be faster where time goes. The activation step's gradient is a reduction over all input
elements, whose order changes when layers are stacked; CPU element-wise kernels take a scalar path for a tensor's tail
(sigmoid there differs from the vector path by an ulp); bmm and mm pick different GEMM kernels; and Q-ARVD's dual-scale
layers differ in their outlier-column counts, so they are rarely the same shape. At Wan2.1-1.3B one step of one layer
already multiplies 8 calls x 4680 tokens = 37440 rows, enough to fill an H100: a block's 2000 steps are about
9.4 TFLOP each, matmul-bound, so the step itself is what the two GPU-only switches below make faster. They change the
numerics of the step (for every layer alike, so grouped and single-layer results stay equal to each other) and, being
``calib`` keys, enter the calibration fingerprint:

- ``tf32``: fp32 matmuls on the tensor cores (TF32, 10-bit mantissa);
- ``compile``: ``torch.compile`` of the training step's objective (the element-wise fake quantization and loss
  fused around the matmuls; the before/after check losses run eagerly);
- ``bf16``: the step's matmuls in bfloat16 under autocast (twice the TF32 tensor-core rate; element-wise work and
  the loss stay fp32). On an H100, TF32 + compile projects the 1.3B calibration at 1.38 h, so the <= 1 h budget
  needs a cheaper matmul. Unlike the other two it also runs on the CPU (autocast there too), so its effect on the
  codes can be measured on the embedded model; the before/after check losses run in fp32.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from qarvd.quant.capture import SampleStore, plan_passes
from qarvd.quant.linear import QuantLinear, quant_state
from qarvd.quant.reconstruct import ReconConfig, RoundingLearner, layer_objective, weighted_error
from qarvd.utils.io import atomic_write
from qarvd.utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOptions:
    """``calib.batch``: lock-step groups and the GPU-only step switches (the YAML holds the defaults)."""

    enabled: bool
    gpu_gb: float
    tf32: bool
    compile: bool
    checkpoint_s: Optional[float]
    bf16: bool = False

    def __post_init__(self) -> None:
        for key in ("enabled", "tf32", "compile", "bf16"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"calib.batch.{key} must be true or false, got {getattr(self, key)!r}")
        if not float(self.gpu_gb) > 0:
            raise ValueError(f"calib.batch.gpu_gb must be > 0, got {self.gpu_gb}")
        if self.checkpoint_s is not None and not float(self.checkpoint_s) >= 0:
            raise ValueError(f"calib.batch.checkpoint_s must be >= 0 seconds or null, got {self.checkpoint_s}")
        if (self.tf32 or self.compile or self.bf16) and not self.enabled:
            raise ValueError("calib.batch.tf32 / calib.batch.compile / calib.batch.bf16 switch the batched engine's "
                             "step: set calib.batch.enabled=true")


@dataclass
class LayerJob:
    """One layer to reconstruct: its captured samples and its own seed (as the one-at-a-time driver gives it)."""

    name: str
    layer: QuantLinear
    store: SampleStore
    seed: int


def job_bytes(job: LayerJob) -> int:
    """Accelerator bytes a layer holds while its group learns: captured inputs plus FP targets (layer dtype)."""
    inputs = sum(int(s.nbytes) for s in job.store.samples)
    return inputs + inputs * job.layer.out_features // job.layer.in_features


@contextlib.contextmanager
def step_numerics(device: torch.device, opts: BatchOptions) -> Iterator[Callable]:
    """The step's error function under the requested GPU switches (plain fp32 eager on the CPU, said once)."""
    cuda = device.type == "cuda"
    if not cuda and (opts.tf32 or opts.compile):
        log.info("calib.batch.tf32 / compile are GPU-only: on %s the plain fp32 eager step runs", device)
    error = _compiled_error() if (cuda and opts.compile) else weighted_error
    if opts.bf16:
        error = _bf16_error(error, device.type)
    previous = torch.get_float32_matmul_precision()
    if cuda and opts.tf32:
        torch.set_float32_matmul_precision("high")
    try:
        yield error
    finally:
        torch.set_float32_matmul_precision(previous)


def _compiled_error() -> Callable:
    fast = torch.compile(weighted_error, dynamic=True)  # one graph for every layer shape and outlier split

    def error(layer, x, y, tok_w, calls):
        return fast(layer, x, y, tok_w, calls) if torch.is_grad_enabled() else weighted_error(layer, x, y, tok_w, calls)

    return error


def _bf16_error(error: Callable, device_type: str) -> Callable:
    """``error`` with its matmuls in bfloat16 (autocast) while learning; the no-grad check losses stay fp32."""

    def run(layer, x, y, tok_w, calls):
        if not torch.is_grad_enabled():
            return error(layer, x, y, tok_w, calls)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return error(layer, x, y, tok_w, calls).float()

    return run


def _stage(job: LayerJob, device: torch.device) -> Optional[list[torch.Tensor]]:
    if device.type != "cuda":
        return None  # the host copies are used in place, as one at a time
    return [job.store.tensors(i)["x"].to(device) for i in range(len(job.store))]


class GroupCheckpoint:
    """A lock-step group's learning state in ``<folder>/lockstep-<names digest>.pt``, saved at most every
    ``calib.batch.checkpoint_s`` seconds (tensors and plain values only: loaded with ``weights_only=True``).

    A group learns all its layers to the last iteration before any of them is finished, so without it an interrupted
    calibration (a sweep's time limit, a lost machine) restarts the whole group. The folder is the run's resume
    folder, which its fingerprint already ties to the configuration; the file also names its layers."""

    def __init__(self, folder: Optional[Path], names: Sequence[str], every_s: Optional[float]) -> None:
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        self.path = None if folder is None or every_s is None else Path(folder) / f"lockstep-{digest}.pt"
        self.names, self.every_s, self.saved_at = list(names), every_s, time.monotonic()

    def load(self, learners: Sequence[RoundingLearner], device: torch.device) -> tuple[int, float]:
        """(first iteration to run, learning seconds already spent): (0, 0.0) without a checkpoint."""
        if self.path is None or not self.path.exists():
            return 0, 0.0
        state = torch.load(self.path, map_location=device, weights_only=True)
        if state["names"] != self.names:
            raise ValueError(f"lock-step checkpoint '{self.path}' holds layers {state['names'][:3]}..., not this "
                             f"group's {self.names[:3]}...; delete it or use a fresh calib.resume_dir")
        for learner, st in zip(learners, state["learners"]):
            learner.load_state_dict(st)
        log.info("lock-step group of %d layers resumes at iteration %d (%s)", len(learners), state["iteration"], self.path)
        return int(state["iteration"]), float(state["seconds"])

    def maybe_save(self, learners: Sequence[RoundingLearner], next_iteration: int, seconds: float) -> None:
        if self.path is None or time.monotonic() - self.saved_at < self.every_s:
            return
        state = {"names": self.names, "iteration": next_iteration, "seconds": seconds,
                 "learners": [l.state_dict() for l in learners]}
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))
        self.saved_at = time.monotonic()

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def reconstruct_layers(jobs: Sequence[LayerJob], cfg: ReconConfig, opts: BatchOptions,
                       checkpoint_dir: Optional[Path] = None) -> Iterator[tuple[str, dict]]:
    """Reconstruct ``jobs`` in lock-step groups of at most ``opts.gpu_gb``; yields (name, stats) as groups finish.
    With ``checkpoint_dir`` and ``opts.checkpoint_s``, an interrupted group continues where its last checkpoint was.

    The caller must exhaust the iterator: a group's layers stay in their learning state until all of it is yielded.
    """
    for j in jobs:
        if len(j.store) == 0:
            raise RuntimeError(f"no captured calibration samples for layer '{j.name}'")
    if not jobs:
        return
    device = jobs[0].layer.weight.device
    by_name = {j.name: j for j in jobs}
    groups = plan_passes(list(by_name), {n: job_bytes(j) for n, j in by_name.items()}, int(opts.gpu_gb * 2**30))
    with step_numerics(device, opts) as error:
        for names in groups:
            ckpt = GroupCheckpoint(checkpoint_dir, names, opts.checkpoint_s)
            yield from _learn_group([by_name[n] for n in names], cfg, error, device, opts, ckpt)


def _learn_group(group: list[LayerJob], cfg: ReconConfig, error: Callable, device: torch.device,
                 opts: BatchOptions, ckpt: GroupCheckpoint) -> Iterator[tuple[str, dict]]:
    cuda = device.type == "cuda"
    with contextlib.ExitStack() as stack:
        for j in group:
            stack.enter_context(quant_state(j.layer, weights=True, acts=True))
        learners = [RoundingLearner([j.layer], layer_objective(j.layer, j.store, _stage(j, device), error),
                                    len(j.store), cfg, j.seed) for j in group]
        start, spent = ckpt.load(learners, device)
        t0 = time.perf_counter()
        with torch.enable_grad():
            bar = progress_bar(range(start, cfg.iters), desc=f"{len(group)} layers in lock-step", leave=False,
                               total=cfg.iters, initial=start)
            for it in bar:
                for learner in learners:
                    learner.step(it)
                ckpt.maybe_save(learners, it + 1, spent + time.perf_counter() - t0)
        for learner in learners:
            float(learner.last)  # waits for the device
        seconds = spent + time.perf_counter() - t0
        for j, learner in zip(group, learners):
            st = learner.finish(seconds / len(group))
            yield j.name, {**st, "group_size": len(group), "group_seconds": seconds, "resumed_at": start,
                           "tf32": cuda and opts.tf32, "compiled": cuda and opts.compile, "bf16": opts.bf16}
        ckpt.remove()
