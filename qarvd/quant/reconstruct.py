"""Reconstruction: learn AdaRound rounding and activation steps so quantized layers reproduce FP outputs.

Layer-wise, as released: each Linear alone, input = its captured FP input, target = its FP output (computed from
the FP weight on the fly, which is exactly the captured output and halves capture memory). Per iteration a batch
of ``calls_per_step`` random captured calls; loss per sample = squared error summed over tokens (and channels) times
the sample's chunk weight, averaged over batch and output channels; plus ``lambda * sum(1 - |2h-1|^beta)`` after
the warm-up. Adam (lr 2e-3) on the rounding variables, Adam (lr 4e-5, cosine to 0) on the activation steps.

Block-wise (option): the same objective on a whole transformer block's output, re-running the block on its
captured inputs and the cached FP K/V of the earlier chunks.

Finished layers (blocks) are written to a resume folder, so an interrupted calibration restarts where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from qarvd.models.wan import LayerCache
from qarvd.quant.adaround import AdaRoundWeight, BetaSchedule
from qarvd.quant.capture import BlockRecorder, CaptureBudget, LinearRecorder, SampleStore, capture, plan_passes
from qarvd.quant.linear import QuantLinear, quant_layers, quant_state
from qarvd.quant.quantizer import MIN_SCALE
from qarvd.quant.roles import block_index, role_of
from qarvd.utils.io import atomic_write_json, save_safetensors_atomic
from qarvd.utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class ReconConfig:
    """The reconstruction settings of ``conf/calib`` (and the method's skipped roles); the YAML holds the defaults."""

    iters: int
    calls_per_step: int
    lr_round: float
    lr_act: float
    reg_weight: float
    warmup: float
    beta_start: float
    beta_end: float
    granularity: str  # layer | block
    skip_roles: tuple  # not reconstructed (nearest rounding, percentile-init steps)
    seed: int
    batch: object  # calib.batch: qarvd.quant.recon_batched.BatchOptions (or its dict)

    def __post_init__(self) -> None:
        from qarvd.quant.recon_batched import BatchOptions

        if self.granularity not in ("layer", "block"):
            raise ValueError(f"reconstruction granularity must be 'layer' or 'block', got '{self.granularity}'")
        if self.iters < 1 or self.calls_per_step < 1:
            raise ValueError("reconstruction needs calib.iters >= 1 and calib.calls_per_step >= 1")
        self.skip_roles = tuple(self.skip_roles)
        self.batch = self.batch if isinstance(self.batch, BatchOptions) else BatchOptions(**dict(self.batch))
        if self.batch.enabled and self.granularity != "layer":
            raise ValueError("calib.batch.enabled learns layers in lock-step: it needs calib.granularity=layer")


# ----------------------------------------------------------------------------------------------- learnable state
def begin_learning(layer: QuantLinear) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Attach AdaRound to every group and free the activation steps; returns (rounding vars, act steps)."""
    target = layer.target_weight()
    rounds, steps = [], []
    for g in layer.groups:
        g.rounding = AdaRoundWeight(g.columns(target), g.wq.scale, g.wq.zero_point, g.wq.qmin, g.wq.qmax)
        g.w_int = None
        rounds.append(g.rounding.v)
        g.aq.scale.requires_grad_(True)
        steps.append(g.aq.scale)
    return rounds, steps


def _optimizers(rounds, steps, cfg: ReconConfig):
    opt_v = torch.optim.Adam(rounds, lr=cfg.lr_round)
    opt_a = torch.optim.Adam(steps, lr=cfg.lr_act)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=cfg.iters, eta_min=0.0)
    return opt_v, opt_a, sched


def _regularizer(layers: Sequence[QuantLinear], beta: float) -> torch.Tensor:
    return sum(g.rounding.regularizer(beta) for l in layers for g in l.groups if g.rounding is not None)


class RoundingLearner:
    """The learning state of one reconstruction unit: AdaRound variables and activation steps of ``layers``, their
    Adam optimisers, the regulariser schedule and the unit's own sample draws (its seeded generator, drawn up front
    so that no step waits on the host). :func:`_run_loop` drives one; :mod:`qarvd.quant.recon_batched` drives several
    in lock-step, so each unit does the same arithmetic either way.

    Reports the loss on a fixed check batch with nearest rounding (before) and with the hardened result (after).
    """

    def __init__(self, layers: Sequence[QuantLinear], loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int,
                 cfg: ReconConfig, seed: int) -> None:
        self.layers, self.loss_fn, self.n, self.cfg = list(layers), loss_fn, n, cfg
        self.check = torch.arange(min(n, 4 * cfg.calls_per_step))
        with torch.no_grad():
            self.loss_nearest = float(loss_fn(self.check))
        rounds, self.steps = [], []
        for l in self.layers:
            r, s = begin_learning(l)
            rounds += r
            self.steps += s
        self.params = rounds + self.steps
        self.opt_v, self.opt_a, self.sched = _optimizers(rounds, self.steps, cfg)
        self.beta_of = BetaSchedule(cfg.iters, cfg.warmup, cfg.beta_start, cfg.beta_end)
        gen = torch.Generator().manual_seed(int(seed))
        self.draws = [torch.randperm(n, generator=gen)[: cfg.calls_per_step] for _ in range(cfg.iters)]
        self.first: Optional[torch.Tensor] = None
        self.last: Optional[torch.Tensor] = None

    def step(self, it: int) -> torch.Tensor:
        """Iteration ``it``: loss on its draw, backward, optimiser steps; returns the reconstruction loss (detached)."""
        rec = self.loss_fn(self.draws[it])
        beta, active = self.beta_of(it)
        loss = rec + self.cfg.reg_weight * _regularizer(self.layers, beta) if active else rec
        self.opt_v.zero_grad(set_to_none=True)
        self.opt_a.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_v.step()
        self.opt_a.step()
        self.sched.step()
        with torch.no_grad():
            for s in self.steps:
                s.clamp_(min=MIN_SCALE)
        self.last = rec.detach()
        self.first = self.last if self.first is None else self.first
        return self.last

    def state_dict(self) -> dict:
        """Everything a later step depends on (the draws and the regulariser schedule follow from seed and iteration):
        loading it into a freshly built learner continues bit for bit."""
        return {"params": [p.detach().clone() for p in self.params], "opt_v": self.opt_v.state_dict(),
                "opt_a": self.opt_a.state_dict(), "sched": self.sched.state_dict(), "first": self.first, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        if len(state["params"]) != len(self.params):
            raise ValueError(f"learner state holds {len(state['params'])} tensors, this unit has {len(self.params)}")
        with torch.no_grad():
            for p, v in zip(self.params, state["params"]):
                p.copy_(v)
        self.opt_v.load_state_dict(state["opt_v"])
        self.opt_a.load_state_dict(state["opt_a"])
        self.sched.load_state_dict(state["sched"])
        self.first, self.last = state["first"], state["last"]

    def finish(self, seconds: float) -> dict:
        """Harden the learned rounding; the unit's statistics (``seconds``: its learning time)."""
        for l in self.layers:
            l.harden()
        with torch.no_grad():
            loss_final = float(self.loss_fn(self.check))
        return {"loss_nearest": self.loss_nearest, "loss_final": loss_final, "soft_loss_first": float(self.first),
                "soft_loss_last": float(self.last), "seconds": seconds, "seconds_per_iter": seconds / self.cfg.iters,
                "samples": self.n}


def _run_loop(layers: Sequence[QuantLinear], loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int,
              cfg: ReconConfig, seed: int, desc: str) -> dict:
    """The optimisation loop of one unit; ``loss_fn(sample indices)`` returns the weighted reconstruction loss."""
    learner = RoundingLearner(layers, loss_fn, n, cfg, seed)
    t0 = time.perf_counter()
    bar = progress_bar(range(cfg.iters), desc=desc, leave=False, mininterval=2.0)
    with torch.enable_grad():
        for it in bar:
            rec = learner.step(it)
            if it % 50 == 0:
                bar.set_postfix(rec=f"{float(rec):.3e}", refresh=False)
    float(learner.last)  # waits for the device, so that the time is the learning time
    return learner.finish(time.perf_counter() - t0)


def _stage_on_device(store: SampleStore, device: torch.device, share: float = 0.4) -> Optional[list[torch.Tensor]]:
    """One layer's captured inputs moved to the accelerator once if they fit in ``share`` of its free memory
    (otherwise each batch is copied from host RAM or disk every iteration)."""
    if device.type != "cuda":
        return None
    total = sum(s.nbytes for s in store.samples)
    if total > share * torch.cuda.mem_get_info(device)[0]:
        return None
    return [store.tensors(i)["x"].to(device) for i in range(len(store))]


def weighted_error(layer: QuantLinear, x: torch.Tensor, y: torch.Tensor, tok_w: torch.Tensor, calls: int) -> torch.Tensor:
    """Squared error summed over channels, weighted per token row, averaged over calls and output channels."""
    err = (layer(x).float() - y).pow(2).sum(-1)
    return (err * tok_w).sum() / (calls * layer.out_features)


def layer_objective(layer: QuantLinear, store: SampleStore, staged: Optional[list[torch.Tensor]] = None,
                    error: Callable = weighted_error) -> Callable[[torch.Tensor], torch.Tensor]:
    """``loss(sample indices)`` of one layer on its captured FP inputs (``staged``: the inputs already on the layer's
    device); the FP targets are computed once per sample in the layer's dtype and widened at use (exact)."""
    device = layer.weight.device
    weights = torch.tensor([layer.sample_weight(s.info) for s in store.samples], dtype=torch.float32).to(device)
    targets: dict[int, torch.Tensor] = {}  # FP outputs of in-memory samples, computed once (spilled ones: per use)

    def sample(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = staged[i] if staged is not None else store.tensors(i)["x"].to(device)
        y = targets.get(i)
        if y is None:
            with torch.no_grad():
                y = layer.fp_forward(x)
            if staged is not None or store.samples[i].tensors is not None:
                targets[i] = y
        return x, y

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        pairs = [sample(int(i)) for i in idx]
        x = torch.cat([p[0] for p in pairs])
        y = torch.cat([p[1] for p in pairs]).float()
        tok_w = torch.cat([weights[int(i)].expand(p[0].shape[0]) for p, i in zip(pairs, idx)])
        return error(layer, x, y, tok_w, len(idx))

    return loss_fn


def reconstruct_layer(layer: QuantLinear, store: SampleStore, cfg: ReconConfig, seed: int = 0, desc: str = "") -> dict:
    """Layer-wise reconstruction of one QuantLinear on its captured FP inputs."""
    if len(store) == 0:
        raise RuntimeError(f"no captured calibration samples for layer '{layer.name}'")
    loss_fn = layer_objective(layer, store, _stage_on_device(store, layer.weight.device))
    with quant_state(layer, weights=True, acts=True):
        return _run_loop([layer], loss_fn, len(store), cfg, seed, desc or layer.name)


def _prefix_cache(k: torch.Tensor, v: torch.Tensor, new_tokens: int) -> LayerCache:
    """The piece of a rollout cache one block forward reads: its layer's earlier K/V and no cross-attn cache."""
    pad = k.new_zeros((k.shape[0], new_tokens) + tuple(k.shape[2:]))
    return LayerCache(torch.cat([k, pad], dim=1), torch.cat([v, pad], dim=1))


def reconstruct_block(block: nn.Module, store: SampleStore, cfg: ReconConfig, seed: int = 0, desc: str = "") -> dict:
    """Block-wise reconstruction: every non-skipped QuantLinear of ``block`` learned jointly on the block output."""
    layers = [m for m in block.modules() if isinstance(m, QuantLinear)]
    learn = [l for l in layers if role_of(l.name) not in cfg.skip_roles]
    device = next(block.parameters()).device
    weighted = next((l for l in learn if l.chunk_weights is not None), None)  # split layers may opt out (quirk)
    weights = [weighted.sample_weight(s.info) if weighted is not None else 1.0 for s in store.samples]
    dim = store.tensors(0)["y"].shape[-1]

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for i in idx:
            t = {k: v.to(device) for k, v in store.tensors(int(i)).items()}
            ex = store.samples[int(i)].extra
            kv = _prefix_cache(t["k"][None], t["v"][None], t["x"].shape[0])
            out = block(t["x"][None], t["e"][None], t["ctx"][None], t["cos"], t["sin"], kv, ex["token_start"],
                        ex["frames"], None)
            total = total + weights[int(i)] * (out[0].float() - t["y"].float()).pow(2).sum()
        return total / (len(idx) * dim)

    with quant_state(block, weights=True, acts=True):
        for l in layers:
            if l not in learn:
                l.harden()
        return _run_loop(learn, loss_fn, len(store), cfg, seed, desc)


# ----------------------------------------------------------------------------------------------- resume
class ResumeStore:
    """Finished reconstruction units saved as safetensors, guarded by a fingerprint of the run's config."""

    def __init__(self, folder: Optional[str | Path], fingerprint: dict) -> None:
        self.folder = Path(folder) if folder else None
        self.key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if self.folder is None:
            return
        fp = self.folder / "fingerprint.json"
        if fp.exists():
            have = json.loads(fp.read_text()).get("key")
            if have != self.key:
                raise ValueError(f"resume folder '{self.folder}' was written by a different configuration "
                                 f"(fingerprint {have} != {self.key}); use a fresh calib.resume_dir")
        else:
            atomic_write_json(fp, {"key": self.key, "config": fingerprint})

    def path(self, unit: str) -> Optional[Path]:
        return None if self.folder is None else self.folder / f"{unit}.safetensors"

    def load(self, unit: str, layers: dict[str, QuantLinear]) -> Optional[dict]:
        from qarvd.quant.artifact import load_layer_state, read_tensors_with_meta

        p = self.path(unit)
        if p is None or not p.exists():
            return None
        tensors, meta = read_tensors_with_meta(p)
        for name, layer in layers.items():
            load_layer_state(layer, {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
        return meta.get("stats", {})

    def save(self, unit: str, layers: dict[str, QuantLinear], stats: dict) -> None:
        from qarvd.quant.artifact import layer_state

        p = self.path(unit)
        if p is None:
            return
        tensors = {f"{name}.{k}": v for name, l in layers.items() for k, v in layer_state(l).items()}
        save_safetensors_atomic(p, tensors, {"stats": stats})


# ----------------------------------------------------------------------------------------------- driver
def _capture_bytes(module: nn.Module, pipeline, budget: CaptureBudget, n_prompts: int, granularity: str) -> int:
    """Rough size of one target's capture, for grouping targets into passes under the RAM budget."""
    cfg = pipeline.rollout_cfg
    c, h, w = pipeline.latent_shape
    tokens = cfg.frames_per_chunk * pipeline.model.tokens_per_frame(h, w)
    calls = n_prompts * len(cfg.forward_infos())
    if budget.max_calls is not None:
        calls = min(calls, budget.max_calls)
    elem = pipeline.model.patch_embedding.weight.element_size()
    if granularity == "layer":
        if budget.tokens_per_call is not None:
            tokens = min(tokens, budget.tokens_per_call)
        return calls * tokens * module.in_features * elem
    dim = pipeline.model.cfg.dim
    prefix = tokens * (cfg.num_chunks - 1) // 2 * dim * 2  # average earlier-chunk K/V
    return calls * (2 * tokens * dim + prefix) * elem


def unit_seed(cfg: ReconConfig, unit: str) -> int:
    """Every unit's own seed: its sample draws do not depend on which other units run, or in which order."""
    return cfg.seed * 1_000_003 + zlib.crc32(unit.encode())


def _learn(group: Sequence[str], units: dict, stores: dict[str, SampleStore], cfg: ReconConfig,
           resume: Optional[ResumeStore]) -> Iterator[tuple[str, dict]]:
    """(unit, stats) as units finish: layers in lock-step groups with ``calib.batch.enabled`` (their learning state
    checkpointed into the resume folder), else one at a time."""
    if cfg.batch.enabled:
        from qarvd.quant.recon_batched import LayerJob, reconstruct_layers

        jobs = [LayerJob(u, units[u][0], stores[u], unit_seed(cfg, u)) for u in group]
        yield from reconstruct_layers(jobs, cfg, cfg.batch, None if resume is None else resume.folder)
        return
    for u in group:
        if cfg.granularity == "layer":
            yield u, reconstruct_layer(units[u][0], stores[u], cfg, unit_seed(cfg, u), u)
        else:
            yield u, reconstruct_block(units[u][0], stores[u], cfg, unit_seed(cfg, u), u)


def reconstruct_model(pipeline, prompts: Sequence[str], seeds: Sequence[int], cfg: ReconConfig, budget: CaptureBudget,
                      resume: Optional[ResumeStore] = None, prompts_per_batch: int = 8,
                      context_cache: Optional[dict] = None, blocks: Optional[Sequence[int]] = None) -> dict:
    """Capture and reconstruct every eligible unit of ``pipeline.model`` in RAM-bounded passes; returns stats.
    ``blocks``: only the units of these blocks (a profile times a few; the others keep nearest rounding)."""
    model = pipeline.model
    layers = quant_layers(model)
    eligible = {n: l for n, l in layers.items()
                if role_of(n) not in cfg.skip_roles and (blocks is None or block_index(n) in blocks)}
    if cfg.granularity == "layer":
        units = {n: (l, {n: l}) for n, l in eligible.items()}
    else:
        blocks = sorted({block_index(n) for n in eligible if block_index(n) is not None})
        units = {}
        for b in blocks:
            blk = model.blocks[b]
            units[f"blocks.{b}"] = (blk, {n: l for n, l in layers.items() if block_index(n) == b})
    for n, l in layers.items():  # layers outside every unit keep nearest rounding
        if not any(n in members for _, members in units.values()):
            l.harden()
    stats: dict[str, dict] = {}
    todo = []
    for u, (_, members) in units.items():
        got = resume.load(u, members) if resume is not None else None
        if got is not None:
            stats[u] = {**got, "resumed": True}
        else:
            todo.append(u)
    nbytes = {u: _capture_bytes(units[u][0], pipeline, budget, len(prompts), cfg.granularity) for u in todo}
    recorder = LinearRecorder() if cfg.granularity == "layer" else BlockRecorder()
    bar = progress_bar(total=len(units), initial=len(units) - len(todo), desc=f"reconstruct ({cfg.granularity})")
    peak_ram = 0
    passes = plan_passes(todo, nbytes, budget.ram_bytes)
    if len(todo) < len(units):
        log.info("reconstruction resumes: %d of %d units already done", len(units) - len(todo), len(units))
    for k, group in enumerate(passes, 1):
        t0 = time.perf_counter()
        session = capture(pipeline, prompts, seeds, {u: units[u][0] for u in group}, budget, recorder,
                          prompts_per_batch=prompts_per_batch, context_cache=context_cache)
        peak_ram = max(peak_ram, session.ledger.peak)
        log.info("capture pass %d/%d: %d unit(s) (%s ... %s), %.1f s, peak %.3g GiB in RAM", k, len(passes), len(group),
                 group[0], group[-1], time.perf_counter() - t0, session.ledger.peak / 2**30)
        try:
            for u, st in _learn(group, units, session.stores, cfg, resume):
                store = session.stores[u]
                st["spilled_bytes"] = store.spilled_bytes
                store.clear()
                stats[u] = st
                log.info("reconstructed %s: loss %.4g -> %.4g (nearest -> learned rounding), %s samples, %.1f s", u,
                         st["loss_nearest"], st["loss_final"], st.get("samples"), st.get("seconds", math.nan))
                if resume is not None:
                    resume.save(u, units[u][1], st)
                bar.update(1)
        finally:
            session.close()
    bar.close()
    ok = [s for s in stats.values() if s.get("loss_nearest")]
    ratio = sum(s["loss_final"] / s["loss_nearest"] for s in ok) / len(ok) if ok else math.nan
    return {"units": stats, "captured_ram_peak_bytes": peak_ram, "mean_final_over_nearest": ratio}
