"""Training loop of the embedded ARVD (``scripts/train_tiny_arvd.py``): flow matching under chunk-causal teacher forcing.

One training sequence is ``[clean context | noisy video]`` (``CausalWanModel.forward`` with ``frame_pos`` and a bool
``attn_mask``). Clean frames sit at timestep 0 and attend chunk-causally to clean frames: exactly what the rollout's
refresh pass writes into the KV cache. Noisy chunk c attends to the clean chunks before it and to itself: exactly
what denoising chunk c sees at inference. Every noisy chunk draws its own noise level (diffusion-forcing style),
mostly one of the rollout's own warped timesteps (the 4-step list is all the model is ever asked at inference).

Caption dropout (``train.caption_dropout``) trains the empty caption as the unconditional branch that the
rollout's classifier-free guidance subtracts (``model.rollout.guidance_scale``).

Self-forcing-style stage (the last part of training): with probability ``own_context.prob`` a video's clean context
is replaced by the model's own last-step prediction of it (x0 predicted from the context noised to the final
denoising timestep), so the model learns to continue the slightly imperfect chunks it produces itself, not only
perfect ground truth; the target stays the real continuation, which still follows from that context.

The bundle (``tiny_arvd.safetensors``) holds the EMA weights: ``model.*`` (the DiT) and ``text_encoder.*`` (the
caption encoder), with JSON metadata: wan_config, text_encoder, vae, rollout, data, training, metrics.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from qarvd.embedded.procedural import VOCAB, ProceduralVideos
from qarvd.models.pipeline import ARVDPipeline
from qarvd.models.rollout import FlowMatchSchedule, RolloutConfig
from qarvd.models.text import CaptionTokenEncoder
from qarvd.models.vae import IdentityVAE
from qarvd.models.wan import CausalWanModel, WanConfig
from qarvd.embedded.train_common import (autocast, device_name, ema_update, find_resume, git_commit, load_state, lr_at,
                                peak_memory_gb, resolve_device, save_state, step_generator)
from qarvd.embedded.train_layout import context_frames, teacher_forcing_mask
from qarvd.utils.io import atomic_write_json, save_safetensors_atomic
from qarvd.utils.progress import progress_bar


# ----------------------------------------------------------------------------------------------- noise levels
def sample_sigmas(rc: RolloutConfig, batch: int, p_exact: float, gen: torch.Generator, device) -> torch.Tensor:
    """Per-frame noise levels [B, F], constant within a chunk: with probability ``p_exact`` one of the chunk's
    rollout timesteps (warped), otherwise shifted-uniform as in Wan's flow-matching training."""
    sched = FlowMatchSchedule(rc.shift, rc.num_train_timesteps)
    out = []
    for c, (_, n) in enumerate(rc.chunk_frames()):
        exact = torch.tensor([sched.sigma(t) if rc.warp else t / rc.num_train_timesteps for t in rc.timesteps(c)],
                             device=device, dtype=torch.float32)
        pick = exact[torch.randint(len(exact), (batch,), generator=gen, device=device)]
        u = torch.rand(batch, generator=gen, device=device)
        uniform = rc.shift * u / (1 + (rc.shift - 1) * u)
        use_exact = torch.rand(batch, generator=gen, device=device) < p_exact
        out.append(torch.where(use_exact, pick, uniform).clamp(1e-3, 1.0)[:, None].expand(batch, n))
    return torch.cat(out, dim=1)


# ----------------------------------------------------------------------------------------------- networks
class TinyARVD(nn.Module):
    """The trained pair; its state dict keys are the bundle's (``model.*``, ``text_encoder.*``)."""

    def __init__(self, arch: dict, text_len: int) -> None:
        super().__init__()
        self.model = CausalWanModel(WanConfig(**arch))
        self.text_encoder = CaptionTokenEncoder(arch["text_dim"], text_len, vocab=VOCAB)

    def encode(self, captions: list[str]) -> torch.Tensor:
        ids, mask = self.text_encoder.token_ids(captions)
        dev = self.text_encoder.embedding.weight.device
        return self.text_encoder(ids.to(dev), mask.to(dev))

    def predict_x0(self, x_ctx: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor,
                   mask: torch.Tensor, rc: RolloutConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """One teacher-forced forward. x_ctx [B,C,Fc,H,W] clean, x_t [B,C,F,H,W] at sigma [B,F] -> (flow, x0)."""
        b, _, n_ctx = x_ctx.shape[:3]
        frames = x_t.shape[2]
        t = torch.cat([torch.zeros(b, n_ctx, device=x_t.device), sigma * rc.num_train_timesteps], dim=1)
        pos = torch.cat([torch.arange(n_ctx), torch.arange(frames)])
        v = self.model(torch.cat([x_ctx, x_t], dim=2), t, text, frame_pos=pos, attn_mask=mask)[:, :, n_ctx:]
        return v, x_t - sigma[:, None, :, None, None] * v  # (autocast's bf16 flow promotes to x_t's dtype here)


def build_networks(cfg: DictConfig) -> TinyARVD:
    arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        return TinyARVD(arch, int(arch["text_len"]))


def pipeline_of(nets: TinyARVD, rc: RolloutConfig, size: int, name: str = "tiny") -> ARVDPipeline:
    """An inference pipeline around in-memory networks (training-time evaluation, same rollout as the shipped one)."""
    model = nets.model.eval()
    return ARVDPipeline(name=name, model=model, text_encoder=nets.text_encoder.eval(), vae=IdentityVAE(),
                        rollout_cfg=rc, latent_shape=(model.cfg.in_dim, size, size))


def generate_fn(pipe: ARVDPipeline):
    return lambda prompts, seeds: pipe.decode(pipe.generate_latents(prompts, seeds))


# ----------------------------------------------------------------------------------------------- loop
def _loss_step(nets: TinyARVD, video: torch.Tensor, captions: list[str], rc: RolloutConfig, mask: torch.Tensor,
               gen: torch.Generator, tc: DictConfig, own_context: bool, device: torch.device) -> torch.Tensor:
    x0 = video.transpose(1, 2)  # [B, T, 3, H, W] -> latents [B, C, F, H, W] (identity VAE)
    b, n_ctx = x0.shape[0], context_frames(rc)
    sigma = sample_sigmas(rc, b, tc.p_exact_timesteps, gen, device)
    eps = torch.randn(x0.shape, generator=gen, device=device)
    x_t = (1 - sigma[:, None, :, None, None]) * x0 + sigma[:, None, :, None, None] * eps
    ctx = x0[:, :, :n_ctx]
    if tc.caption_dropout:
        drop = (torch.rand(b, generator=gen, device=device) < tc.caption_dropout).tolist()
        captions = ["" if d else c for c, d in zip(captions, drop)]
    with autocast(device, tc.amp):
        text = nets.encode(captions)
        if own_context:
            with torch.no_grad():
                last = sigma.new_full(sigma.shape, _last_sigma(rc))
                noisy = (1 - last[:, None, :, None, None]) * x0 + last[:, None, :, None, None] * torch.randn(
                    x0.shape, generator=gen, device=device)
                _, own = nets.predict_x0(ctx, noisy, last, text, mask, rc)
            use = (torch.rand(b, generator=gen, device=device) < tc.own_context.prob).view(b, 1, 1, 1, 1)
            ctx = torch.where(use, own[:, :, :n_ctx].clamp(-1, 1).to(ctx.dtype), ctx)
        v, _ = nets.predict_x0(ctx, x_t, sigma, text, mask, rc)
    return F.mse_loss(v.float(), eps - x0)


def _first_chunk_loss(nets: TinyARVD, video: torch.Tensor, captions: list[str], rc: RolloutConfig,
                      gen: torch.Generator, tc: DictConfig, device: torch.device) -> torch.Tensor:
    """Flow-matching loss of chunk 0 alone (no context): a short, cheap sequence, so the chunk that every later
    chunk builds on (and the only one generated from nothing but the caption) gets many more examples."""
    rc0 = dataclasses.replace(rc, num_frames=rc.chunk_frames()[0][1])
    return _loss_step(nets, video[:, : rc0.num_frames], captions, rc0, None, gen, tc, False, device)


def _last_sigma(rc: RolloutConfig) -> float:
    """Noise level of the last denoising step (the step whose x0 becomes the chunk's output)."""
    t = rc.timesteps(1 if rc.num_chunks > 1 else 0)[-1]
    return FlowMatchSchedule(rc.shift, rc.num_train_timesteps).sigma(t) if rc.warp else t / rc.num_train_timesteps


def train_tiny_arvd(cfg: DictConfig, out_dir: Path, featnet=None, frechet=None) -> dict:
    """Train (or resume), export the EMA bundle, evaluate it with ``featnet`` if given; returns the metrics."""
    device = resolve_device(cfg.device)
    tc = cfg.train
    rc = RolloutConfig(**OmegaConf.to_container(cfg.model.rollout, resolve=True))
    lat = cfg.model.latent
    if lat.height != lat.width or lat.channels != 3:
        raise ValueError("the embedded model works on square RGB pixel frames (model.latent: channels 3, height = width)")
    size = int(lat.height)
    nets = build_networks(cfg).to(device)
    if cfg.init_from:  # fine-tuning: start from a trained bundle's weights
        from qarvd.models.checkpoint import load_strict, read_state_dict
        from qarvd.utils.errors import require_file

        load_strict(nets, read_state_dict(require_file(cfg.init_from, "init_from", "a tiny_arvd bundle")), cfg.init_from)
    ema = copy.deepcopy(nets).requires_grad_(False)
    opt = torch.optim.AdamW(nets.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
    per_step = tc.videos_per_step + tc.first_chunk_batch
    data = ProceduralVideos("train", tc.steps * per_step, rc.num_frames, size, offset=int(cfg.seed) * 10**9)
    mask = teacher_forcing_mask(rc, nets.model.tokens_per_frame(size, size), device)
    own_from = int(tc.own_context.start_fraction * tc.steps)

    start, resume = 0, find_resume(cfg.resume)
    if resume is not None:
        state = load_state(resume)
        nets.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    t0, stage_start = time.time(), {}
    bar = progress_bar(range(start, tc.steps), desc="tiny-arvd", initial=start, total=tc.steps)
    for step in bar:
        nets.train()
        if step in (start, own_from):
            stage_start[step] = time.time()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc.lr, tc.warmup_steps, tc.steps)
        video, captions, _ = data.batch(range(step * tc.videos_per_step, (step + 1) * tc.videos_per_step), device)
        gen = step_generator(cfg.seed, step, device)
        loss = _loss_step(nets, video, captions, rc, mask, gen, tc, step >= own_from, device)
        if tc.first_chunk_batch:
            first = range(tc.steps * tc.videos_per_step + step * tc.first_chunk_batch,
                          tc.steps * tc.videos_per_step + (step + 1) * tc.first_chunk_batch)
            video0, captions0, _ = data.batch(first, device)
            loss = loss + _first_chunk_loss(nets, video0, captions0, rc, gen, tc, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(nets.parameters(), tc.grad_clip)
        opt.step()
        ema_update(ema, nets, min(tc.ema_decay, (1 + step) / (10 + step)))
        if step % tc.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", gnorm=f"{float(grad_norm):.2f}")
        if featnet is not None and tc.probe_every and (step + 1) % tc.probe_every == 0 and step + 1 < tc.steps:
            bar.write(f"step {step + 1}: probe {json.dumps(_probe(ema, rc, size, featnet, cfg))}")
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps:
            save_state(out_dir / "state.pt", {"model": nets.state_dict(), "ema": ema.state_dict(),
                                              "optimizer": opt.state_dict(), "step": step + 1})
    t1 = time.time()
    metrics = {"train_seconds": t1 - t0, "steps": int(tc.steps), "resumed_at": start, "device": device_name(device),
               "peak_memory_gb": peak_memory_gb(device), "own_context_from_step": own_from,
               "own_context_stage_seconds": t1 - stage_start[own_from] if own_from in stage_start else 0.0}
    if featnet is not None and frechet is not None and cfg.eval.num_videos:
        from qarvd.embedded.domain_eval import evaluate_domain

        metrics["domain"] = evaluate_domain(generate_fn(pipeline_of(ema, rc, size)), featnet, frechet, int(cfg.eval.num_videos),
                                            rc.num_frames, size, int(cfg.eval.seed), int(cfg.eval.prompts_per_batch),
                                            list(cfg.eval.noise_stds))
    meta = bundle_metadata(cfg, ema, rc, data, metrics)
    for path in [out_dir / "tiny_arvd.safetensors"] + ([Path(cfg.export_path)] if cfg.export_path else []):
        save_safetensors_atomic(path, ema.state_dict(), meta)
    atomic_write_json(out_dir / "tiny_arvd_metrics.json", metrics)
    return metrics


@torch.no_grad()
def _probe(ema: TinyARVD, rc: RolloutConfig, size: int, featnet, cfg: DictConfig) -> dict:
    """Caption accuracy of a few generated videos, to watch training progress."""
    from qarvd.embedded.domain_eval import accuracy, generated_set
    from qarvd.embedded.procedural import caption_prompts

    prompts = caption_prompts("eval", int(cfg.train.probe_videos))
    videos = generated_set(generate_fn(pipeline_of(ema, rc, size)), prompts, int(cfg.eval.seed), int(cfg.eval.prompts_per_batch))
    return {k: round(v, 3) for k, v in accuracy(featnet, videos, prompts).items()}


def bundle_metadata(cfg: DictConfig, nets: TinyARVD, rc: RolloutConfig, data: ProceduralVideos, metrics: dict) -> dict:
    """Everything needed to rebuild, run and reproduce the shipped model (JSON-valued safetensors metadata)."""
    enc = nets.text_encoder.config()
    return {
        "wan_config": nets.model.cfg.to_dict(),
        "text_encoder": {k: enc[k] for k in ("text_dim", "text_len", "vocab", "vocab_size")},
        "vae": IdentityVAE().config(),
        "rollout": OmegaConf.to_container(cfg.model.rollout, resolve=True),
        "data": data.config(),
        "training": {"command": " ".join(["python"] + sys.argv), "seed": int(cfg.seed), "git_commit": git_commit(),
                     "config": OmegaConf.to_container(cfg.train, resolve=True)},
        "metrics": metrics,
    }
