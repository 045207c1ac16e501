"""Training loop of the domain's video feature network (``scripts/train_featnet.py``).

Supervised on the procedural labels (cross-entropy summed over colour, shape, direction and speed) with videos
rendered on the fly on the training device. The only augmentation is a random mild spatial blur, so that the judge
reads captions off slightly soft generated videos but stays sensitive to noise (a noise-corrupted set must look
far from the real one in its Fréchet distance).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from qarvd.embedded.domain_eval import accuracy, real_set
from qarvd.embedded.procedural import ProceduralVideos
from qarvd.embedded.featnet import FeatNetBackbone, FeatNetConfig, VideoFeatureNet, featnet_metadata
from qarvd.embedded.train_common import (autocast, device_name, find_resume, git_commit, load_state, lr_at, peak_memory_gb,
                                resolve_device, save_state, step_generator)
from qarvd.utils.io import atomic_write_json, save_safetensors_atomic
from qarvd.utils.progress import progress_bar


def random_blur(video: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Blend a 3x3 box-blurred copy into a random ``prob`` fraction of the videos (blend weight uniform in [0, 1])."""
    n, t, c, h, w = video.shape
    blurred = F.avg_pool2d(video.reshape(n * t, c, h, w), 3, stride=1, padding=1, count_include_pad=False).view_as(video)
    pick = (torch.rand(n, generator=gen, device=video.device) < prob).float()
    weight = (pick * torch.rand(n, generator=gen, device=video.device)).view(n, 1, 1, 1, 1)
    return video + weight * (blurred - video)


def train_featnet(cfg: DictConfig, out_dir: Path) -> dict:
    """Train, evaluate on held-out real videos, write ``featnet.safetensors`` (+ export copy) and return metrics."""
    device = resolve_device(cfg.device)
    tc = cfg.train
    torch.manual_seed(int(cfg.seed))
    net = VideoFeatureNet(FeatNetConfig(**OmegaConf.to_container(cfg.net, resolve=True))).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    data = ProceduralVideos("train", tc.steps * tc.videos_per_step, cfg.data.num_frames, cfg.data.size)
    start = 0
    resume = find_resume(cfg.resume)
    if resume is not None:
        state = load_state(resume)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    t0 = time.time()
    bar = progress_bar(range(start, tc.steps), desc="featnet", initial=start, total=tc.steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc.lr, tc.warmup_steps, tc.steps)
        video, _, labels = data.batch(range(step * tc.videos_per_step, (step + 1) * tc.videos_per_step), device)
        video = random_blur(video, tc.blur_prob, step_generator(cfg.seed, step, device))
        with autocast(device, tc.amp):
            logits = net(video)
        loss = sum(F.cross_entropy(logits[k].float(), labels[k].to(device)) for k in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % tc.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps:
            save_state(out_dir / "state.pt", {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step + 1})
    train_seconds = time.time() - t0

    backbone = FeatNetBackbone(None, device, videos_per_batch=256, net=net)
    videos, captions = real_set(cfg.eval.split, cfg.eval.num_videos, cfg.data.num_frames, cfg.data.size)
    metrics = {"heldout_accuracy": accuracy(backbone, videos, captions), "heldout_split": cfg.eval.split,
               "heldout_videos": int(cfg.eval.num_videos), "train_seconds": train_seconds, "peak_memory_gb": peak_memory_gb(device),
               "device": device_name(device)}
    meta = {"featnet": featnet_metadata(net), "data": data.config(), "metrics": metrics,
            "training": {"seed": int(cfg.seed), "git_commit": git_commit(), "config": OmegaConf.to_container(cfg.train)}}
    bundle = out_dir / "featnet.safetensors"
    save_safetensors_atomic(bundle, net.state_dict(), meta)
    if cfg.export_path:
        save_safetensors_atomic(cfg.export_path, net.state_dict(), meta)
    atomic_write_json(out_dir / "featnet_metrics.json", metrics)
    return metrics
