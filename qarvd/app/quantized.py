"""A pipeline quantized from a saved artifact: provenance checks, fake-quant loading, real-kernel deployment.

The one place where generation and evaluation reach into the quantization core: the artifact is checked against the
weights it was calibrated on (:func:`qarvd.app.provenance.check_base_weights`) and validated as it loads
(:func:`qarvd.quant.artifact.validate_artifact`) before any video is made from it.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from qarvd.app.provenance import check_base_weights


def artifact_quantizer(path: str | os.PathLike, info: Optional[dict] = None, cfg: Optional[DictConfig] = None,
                       ) -> Callable[[object], None]:
    """``quantize(pipe)`` that loads a saved quantized artifact (scripts/train_quant.py output) into the DiT in place.

    The one place where evaluation reaches into the quantization core. ``info`` receives the model's weight memory.
    With ``cfg.eval.deploy`` the fake-quant model is then converted to real low-bit modules run by ``cfg.kernel``
    (the videos a deployment would make); ``attention=cudnn_fp8 | int8_sage`` first calibrates its static scales / mean keys with one
    rollout of the config's calibration prompts (not the evaluation prompts).
    """
    def apply(pipe) -> None:
        from qarvd.quant.artifact import load_artifact, read_config

        if cfg is not None:
            check_base_weights(cfg, read_config(path)["run"], str(path))
        load_artifact(pipe.model, path)
        if info is not None:
            info["weight_bytes"] = weight_bytes(pipe.model)
        if cfg is not None and cfg.eval.deploy:
            deploy_real_(pipe, cfg)

    return apply


def deploy_real_(pipe, cfg: DictConfig) -> None:
    """Replace the pipeline's fake-quant DiT by its real modules of backend ``cfg.kernel``, accelerated (in place)."""
    from qarvd.deploy import accelerate_, calibrate_attention_, convert_to_real
    from qarvd.deploy.from_quant import real_specs
    from qarvd.app.calibrate import calib_prompts
    from qarvd.quant.sensitivity import generate as rollout

    backend = instantiate(cfg.kernel)
    pipe.model = accelerate_(convert_to_real(pipe.model, real_specs(pipe.model), backend), backend)
    if backend.quantized_attention:
        prompts = calib_prompts(cfg)
        seeds = [int(cfg.seed) + i for i in range(len(prompts))]
        calibrate_attention_(pipe.model, lambda: rollout(pipe, prompts, seeds, int(cfg.eval.prompts_per_batch)))


def weight_bytes(model: torch.nn.Module) -> int:
    """Weight memory of a deployed model: quantized weights at their bit-width, every other parameter (biases, norms,
    layers kept in float, SVDQuant's low-rank branch) at 16 bits; quantizer scales are left out (they are tiny)."""
    from qarvd.quant.linear import quant_layers

    layers = quant_layers(model).values()
    quantized = {id(m.weight) for m in layers}
    bits = sum(m.weight.numel() * m.w_bits for m in layers)
    bits += 16 * sum(p.numel() for p in model.parameters() if id(p) not in quantized)
    bits += 16 * sum(t.numel() for m in layers for t in (getattr(m, "lr_down", None), getattr(m, "lr_up", None)) if t is not None)
    return int(bits // 8)
