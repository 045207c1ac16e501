"""Application stages of the embedded model: train its feature network and its ARVD, judge a bundle.

The embedded domain (:mod:`qarvd.embedded`) knows its data, networks and training loops; this layer wires in the
metric layer's Fréchet distance (:func:`eval.fvd.fvd_from_features`) and writes the run files.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eval.fvd import fvd_from_features
from qarvd.embedded.domain_eval import evaluate_domain
from qarvd.embedded.featnet import FeatNetBackbone
from qarvd.embedded.train_arvd import train_tiny_arvd
from qarvd.embedded.train_common import resolve_device
from qarvd.embedded.train_featnet import train_featnet
from qarvd.models.pipeline import build_pipeline
from qarvd.utils.io import atomic_write_json

FEATNET_BATCH = 256  # videos per feature-network forward when judging a model

__all__ = ["train_featnet", "train_arvd", "judge_bundle"]


def train_arvd(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Train (or resume) the tiny ARVD of ``cfg`` (conf/train_tiny.yaml); judged by ``cfg.featnet_path`` if set."""
    featnet = FeatNetBackbone(cfg.featnet_path, resolve_device(cfg.device), FEATNET_BATCH) if cfg.featnet_path else None
    return train_tiny_arvd(cfg, Path(out_dir), featnet, fvd_from_features)


def judge_bundle(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Caption accuracy and Fréchet distances of ``cfg.model`` under its rollout settings (conf/eval_tiny.yaml);
    writes ``domain_metrics.json``."""
    device = resolve_device(cfg.device)
    pipe = build_pipeline(cfg.model, device=device)
    featnet = FeatNetBackbone(cfg.featnet_path, device, FEATNET_BATCH)
    rc, (_, h, w) = pipe.rollout_cfg, pipe.latent_shape
    if h != w:
        raise ValueError(f"the feature network judges square frames; model.latent is {h}x{w}")
    metrics = evaluate_domain(lambda p, s: pipe.decode(pipe.generate_latents(p, s)), featnet, fvd_from_features,
                              int(cfg.num_videos), rc.num_frames, h, int(cfg.seed), int(cfg.prompts_per_batch),
                              list(cfg.noise_stds))
    metrics["rollout"] = OmegaConf.to_container(cfg.model.rollout, resolve=True)
    metrics["checkpoint"] = str(cfg.model.checkpoint.path)
    atomic_write_json(Path(out_dir) / "domain_metrics.json", metrics)
    return metrics
