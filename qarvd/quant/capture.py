"""Streamed capture of calibration activations from the FP model, tagged with chunk, step and timestep.

The release keeps every layer's inputs and outputs of all 35 calibration forwards in host memory (about 390 GB at
1.3B). Here a capture pass records only the layers it is asked for, under a :class:`CaptureBudget`:

- ``max_calls``: at most this many (prompt, forward) calls per layer, a seeded uniform reservoir sample;
- ``tokens_per_call``: a seeded subset of token rows per call (the same rows for every layer of that call);
  only for per-token targets (Linear layers): attention mixes tokens, so blocks refuse it;
- ``ram_bytes``: captured tensors beyond this many bytes are spilled to safetensors files under ``spill_dir``.

:func:`plan_passes` groups layers so each pass fits the RAM budget; the reconstruction driver runs one pass per
group, reconstructs its layers and frees them before the next, so peak memory is one group's activations.
"""
from __future__ import annotations

import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from qarvd.models.context import ForwardInfo, current_forward
from qarvd.quant.linear import check_finite, quant_state
from qarvd.utils.progress import progress_bar


@dataclass
class CaptureBudget:
    max_calls: Optional[int] = None  # per layer; None = every call
    tokens_per_call: Optional[int] = None  # token rows kept per call; None = all
    ram_bytes: int = 8 << 30  # captured bytes held in host RAM before spilling to disk
    spill_dir: Optional[str] = None  # where spilled samples go (None: a temporary folder)
    seed: int = 0  # seeds the reservoir and the token subsets

    def __post_init__(self) -> None:
        if self.max_calls is not None and self.max_calls < 1:
            raise ValueError(f"capture max_calls must be >= 1 or null, got {self.max_calls}")
        if self.tokens_per_call is not None and self.tokens_per_call < 1:
            raise ValueError(f"capture tokens_per_call must be >= 1 or null, got {self.tokens_per_call}")
        if self.ram_bytes < 0:
            raise ValueError("capture ram budget must be >= 0")


@dataclass
class Sample:
    info: ForwardInfo
    prompt: int
    tensors: Optional[dict] = None  # in RAM
    path: Optional[Path] = None  # spilled
    extra: dict = field(default_factory=dict)
    nbytes: int = 0


class RamLedger:
    """Shared count of captured bytes held in RAM (across all stores of a pass)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.peak = int(limit), 0, 0

    def reserve(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def release(self, n: int) -> None:
        self.used -= n


class SampleStore:
    """Captured samples of one target: RAM first, disk beyond the shared budget; reservoir-limited."""

    def __init__(self, name: str, ledger: RamLedger, spill_dir: Path, max_calls: Optional[int], seed: int) -> None:
        self.name, self.ledger, self.max_calls = name, ledger, max_calls
        self.spill_dir = spill_dir / name.replace("/", "_")
        self.samples: list[Sample] = []
        self.seen = 0
        self._gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(name.encode()))
        self._file_id = 0
        self.spilled_bytes = 0

    def __len__(self) -> int:
        return len(self.samples)

    def slot(self) -> Optional[int]:
        """Index to write the next observed call to (append = len), or None if the reservoir skips it."""
        k = self.seen
        self.seen += 1
        if self.max_calls is None or k < self.max_calls:
            return len(self.samples)
        j = int(torch.randint(0, k + 1, (1,), generator=self._gen))
        return j if j < self.max_calls else None

    def put(self, slot: int, sample: Sample, tensors: dict[str, torch.Tensor]) -> None:
        sample.nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.ledger.reserve(sample.nbytes):
            sample.tensors = tensors
        else:
            from safetensors.torch import save_file

            self.spill_dir.mkdir(parents=True, exist_ok=True)
            sample.path = self.spill_dir / f"{self._file_id:07d}.safetensors"
            self._file_id += 1
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(sample.path))
            self.spilled_bytes += sample.nbytes
        if slot == len(self.samples):
            self.samples.append(sample)
        else:
            self._free(self.samples[slot])
            self.samples[slot] = sample

    def tensors(self, i: int) -> dict[str, torch.Tensor]:
        s = self.samples[i]
        if s.tensors is not None:
            return s.tensors
        from safetensors.torch import load_file

        return load_file(str(s.path))

    def infos(self) -> list[ForwardInfo]:
        return [s.info for s in self.samples]

    def _free(self, s: Sample) -> None:
        if s.tensors is not None:
            self.ledger.release(s.nbytes)
            s.tensors = None
        if s.path is not None and s.path.exists():
            s.path.unlink()

    def clear(self) -> None:
        for s in self.samples:
            self._free(s)
        self.samples = []


# ----------------------------------------------------------------------------------------------- recorders
def _token_rows(n: int, budget: CaptureBudget, call_id: int) -> Optional[torch.Tensor]:
    """Seeded token subset of one call (None: keep all), shared by every layer of that call."""
    if budget.tokens_per_call is None or budget.tokens_per_call >= n:
        return None
    g = torch.Generator().manual_seed(int(budget.seed) * 7919 + call_id)
    return torch.randperm(n, generator=g)[: budget.tokens_per_call].sort().values


class LinearRecorder:
    """Records a Linear's input rows (and optionally its output) per prompt of the batch."""

    per_token = True

    def __init__(self, outputs: bool = False) -> None:
        self.outputs = outputs

    def pre(self, module, args, store_ctx) -> None:
        return None

    def record(self, module, args, output, b: int, rows: Optional[torch.Tensor]) -> tuple[dict, dict]:
        x = args[0]
        x = x[b] if rows is None else x[b].index_select(0, rows.to(x.device))
        out = {"x": x.detach().to("cpu", copy=True)}
        if self.outputs:
            y = output[b] if rows is None else output[b].index_select(0, rows.to(output.device))
            out["y"] = y.detach().to("cpu", copy=True)
        return out, {}


class BlockRecorder:
    """Records what a WanAttentionBlock forward needs to be re-run alone: its inputs, the self-attention K/V of
    the earlier chunks in the cache (snapshotted before the block writes its own), and its output."""

    per_token = False

    def pre(self, module, args, store_ctx) -> None:
        x, e, ctx, cos, sin, kv, token_start, frames, mask = args
        if mask is not None:
            raise ValueError("block capture needs a cached rollout (no attention mask)")
        store_ctx["k"] = kv.k[:, :token_start].detach().to("cpu", copy=True)
        store_ctx["v"] = kv.v[:, :token_start].detach().to("cpu", copy=True)

    def record(self, module, args, output, b: int, rows, store_ctx) -> tuple[dict, dict]:
        x, e, ctx, cos, sin, kv, token_start, frames, mask = args
        t = {"x": x[b], "e": e[b], "ctx": ctx[b], "cos": cos, "sin": sin, "y": output[b]}
        t = {k: v.detach().to("cpu", copy=True) for k, v in t.items()}
        t["k"], t["v"] = store_ctx["k"][b].clone(), store_ctx["v"][b].clone()
        return t, {"token_start": int(token_start), "frames": int(frames)}


# ----------------------------------------------------------------------------------------------- capture pass
class CaptureSession:
    """Hooks on the target modules for the duration of FP calibration rollouts."""

    def __init__(self, targets: dict[str, nn.Module], recorder, budget: CaptureBudget, num_forwards: int) -> None:
        if budget.tokens_per_call is not None and not recorder.per_token:
            raise ValueError("capture tokens_per_call subsamples tokens, which attention does not allow: "
                             "use layer-wise reconstruction or set calib.capture.tokens_per_call=null")
        self.targets, self.recorder, self.budget, self.num_forwards = targets, recorder, budget, num_forwards
        self._tmp = None
        spill = Path(budget.spill_dir) if budget.spill_dir else None
        if spill is None:
            self._tmp = tempfile.mkdtemp(prefix="qarvd_capture_")
            spill = Path(self._tmp)
        self.ledger = RamLedger(budget.ram_bytes)
        self.stores = {n: SampleStore(n, self.ledger, spill, budget.max_calls, budget.seed) for n in targets}
        self.prompt_offset = 0
        self.forward_index: dict[tuple[int, int], int] = {}
        self._handles = []
        self._ctx: dict[str, dict] = {}

    def __enter__(self) -> "CaptureSession":
        for name, mod in self.targets.items():
            self._handles.append(mod.register_forward_pre_hook(self._pre(name)))
            self._handles.append(mod.register_forward_hook(self._post(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def close(self) -> None:
        for s in self.stores.values():
            s.clear()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _pre(self, name: str) -> Callable:
        def hook(module, args):
            self._ctx[name] = {}
            self.recorder.pre(module, args, self._ctx[name])

        return hook

    def _post(self, name: str) -> Callable:
        def hook(module, args, output):
            info = current_forward()
            if info is None:
                raise RuntimeError("capture needs the rollout's forward context (call it inside a rollout)")
            check_finite(args[0], name, info)
            check_finite(output, name, info, what="output")
            store = self.stores[name]
            fwd = self.forward_index.setdefault((info.chunk, info.step), len(self.forward_index))
            x = args[0]
            for b in range(x.shape[0]):
                slot = store.slot()
                if slot is None:
                    continue
                prompt = self.prompt_offset + b
                call_id = prompt * max(self.num_forwards, 1) + fwd
                rows = _token_rows(x.shape[1], self.budget, call_id) if self.recorder.per_token else None
                if self.recorder.per_token:
                    tensors, extra = self.recorder.record(module, args, output, b, rows)
                else:
                    tensors, extra = self.recorder.record(module, args, output, b, rows, self._ctx[name])
                store.put(slot, Sample(info, prompt, extra=extra), tensors)

        return hook


def run_calibration(pipeline, prompts: Sequence[str], seeds: Sequence[int], prompts_per_batch: int,
                    context_cache: Optional[dict] = None, on_batch_start: Optional[Callable[[int], None]] = None) -> None:
    """Roll out the calibration prompts in batches (prompt embeddings are computed once and reused)."""
    for start in progress_bar(range(0, len(prompts), prompts_per_batch), desc="calibration rollout", unit="batch",
                              leave=False):
        batch = list(prompts[start : start + prompts_per_batch])
        key = (start, len(batch))
        if context_cache is not None and key in context_cache:
            ctx = context_cache[key]
        else:
            ctx = pipeline.encode_prompts(batch)
            if context_cache is not None:
                context_cache[key] = ctx
        if on_batch_start is not None:
            on_batch_start(start)
        pipeline.generate_latents(batch, list(seeds[start : start + prompts_per_batch]), context=ctx)


def capture(pipeline, prompts: Sequence[str], seeds: Sequence[int], targets: dict[str, nn.Module],
            budget: CaptureBudget, recorder=None, prompts_per_batch: int = 8, context_cache: Optional[dict] = None) -> CaptureSession:
    """One FP pass over the calibration prompts recording ``targets``; returns the session (``.stores``).

    The caller owns the returned session and must ``close()`` it (frees RAM and spill files).
    """
    recorder = recorder or LinearRecorder()
    session = CaptureSession(targets, recorder, budget, len(pipeline.rollout_cfg.forward_infos()))
    try:
        with session, quant_state(pipeline.model, weights=False, acts=False):
            def set_offset(start: int) -> None:
                session.prompt_offset = start

            run_calibration(pipeline, prompts, seeds, prompts_per_batch, context_cache, on_batch_start=set_offset)
    except BaseException:
        session.close()
        raise
    return session


def channel_absmax(pipeline, prompts: Sequence[str], seeds: Sequence[int], modules: dict[str, nn.Module],
                   prompts_per_batch: int = 8, context_cache: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """Per-sample input channel abs-max of every module: ``{name: [samples, in]}``, one row per (prompt, call).

    The salience statistics of SmoothQuant (max over rows) and PTQ4DiT (per-sample rows) come from this pass.
    """
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in modules}

    def hook_for(name):
        def hook(module, args):
            x = args[0]
            check_finite(x, name, current_forward())
            rows[name].append(x.detach().abs().float().flatten(1, -2).amax(dim=1).cpu())

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in modules.items()]
    try:
        with quant_state(pipeline.model, weights=False, acts=False):
            run_calibration(pipeline, prompts, seeds, prompts_per_batch, context_cache)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(r) for n, r in rows.items()}


def plan_passes(names: Iterable[str], nbytes: dict[str, int], ram_bytes: int) -> list[list[str]]:
    """Consecutive groups of targets whose estimated capture fits ``ram_bytes`` (a lone large one gets its own)."""
    passes, cur, used = [], [], 0
    for n in names:
        if cur and used + nbytes[n] > ram_bytes:
            passes.append(cur)
            cur, used = [], 0
        cur.append(n)
        used += nbytes[n]
    if cur:
        passes.append(cur)
    return passes
