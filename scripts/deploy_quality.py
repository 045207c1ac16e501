"""Quality of the real-kernel deployment against the fake-quant rollout it replaces, on the embedded model.

    python scripts/deploy_quality.py --run logs/latent_tables/w8a8_minmax --out /tmp/dq --kernels torch_ref
    python scripts/deploy_quality.py --run <dir> --out $OUT --kernels triton_int8 --device cuda   # the real kernels

``--run`` is a ``scripts/train_quant.py`` output folder (``resolved_config.yaml`` + the quant artifact). For the
held-out prompts of that run (same prompts and per-prompt seeds as its ``metrics.json``) it rolls out the FP model,
the fake-quant model, and the converted real model once per (kernel backend, weights mode, dual mode), and writes
the latent MSE of each to the FP rollout, overall and per chunk, and the ratio to the fake-quant MSE (the issue's
criterion: within 5%). ``weights=symmetric`` re-quantizes 8-bit weights without zero point
(:func:`qarvd.deploy.packing.symmetric_weights`); ``artifact`` keeps the calibrated weights exactly.

``--attention default cudnn_fp8 int8_sage`` adds a row per attention mode: ``cudnn_fp8`` runs the self-attention in
FP8 with a float8 KV cache (torch_ref emulates cuDNN's numerics on the CPU), ``int8_sage`` in INT8 Q.K^T / bf16 P.V
(kernels/attn_int8.py; torch_ref runs its torch reference). Their static per-layer scales / mean keys need one
bf16-attention rollout (:func:`qarvd.deploy.calibrate_attention_`); that rollout uses the run's own calibration prompts and seeds
(``calibration_prompts``: the calibration split, not the held-out one; one prompt with calib=default or fast), so the
row measures scales a deployment would ship, not scales fitted to the prompts they are scored on.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ATTENTION = dict(default="auto", cudnn_fp8="cudnn_fp8", int8_sage="int8_sage")  # --attention value -> the backend's attention argument


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="train_quant output folder (resolved_config.yaml, quant artifact)")
    p.add_argument("--out", required=True, help="folder for deploy_quality.json")
    p.add_argument("--kernels", nargs="+", default=["torch_ref"], help="backends: torch_ref | triton_int8")
    p.add_argument("--weights", nargs="+", default=["artifact", "symmetric"], help="weights modes to compare")
    p.add_argument("--dual-modes", nargs="+", default=["exact"], help="dual-scale GEMM variants to compare")
    p.add_argument("--attention", nargs="+", default=["default"], choices=list(ATTENTION),
                   help="self-attention: default (the backend's own) | cudnn_fp8 (FP8) | int8_sage (INT8 Q.K^T), "
                        "calibrated on the run's calibration prompts")
    p.add_argument("--prompts", type=int, default=None, help="first N held-out prompts (default: the run's count)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)

    from omegaconf import OmegaConf

    from qarvd.deploy.backends import TorchRefBackend, TritonInt8Backend
    from qarvd.deploy import accelerate_, calibrate_attention_, convert_to_real
    from qarvd.deploy.from_quant import real_specs
    from qarvd.app.calibrate import calibration_prompts
    from qarvd.models.pipeline import build_pipeline
    from qarvd.quant.artifact import load_artifact
    from qarvd.quant.sensitivity import generate, latent_mse_by_chunk
    from qarvd.utils.io import atomic_write_json

    run = Path(args.run)
    cfg = OmegaConf.load(run / "resolved_config.yaml")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calib_prompts, _, prompts = calibration_prompts(cfg)
    prompts = prompts[: args.prompts] if args.prompts else prompts
    seeds = [int(cfg.seed) + i for i in range(len(prompts))]
    calib_seeds = [int(cfg.seed) + i for i in range(len(calib_prompts))]  # as the run's calibration drew them
    pipe = build_pipeline(cfg.model, args.device)
    chunks = pipe.rollout_cfg.chunk_frames()
    result = dict(run=str(run), model=cfg.model.name, bits=cfg.bits.name, method=cfg.method.name,
                  prompts=len(prompts), attention_calibration_prompts=len(calib_prompts), device=args.device, rows=[])

    def roll(name: str, ps=prompts, ss=seeds) -> torch.Tensor:
        t = time.perf_counter()
        with torch.no_grad():
            lat = generate(pipe, ps, ss, args.batch).cpu()
        print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)
        return lat

    fp_model = pipe.model
    fp = roll("fp")
    load_artifact(pipe.model, run)
    fake = roll("fake-quant")
    fake_mse = latent_mse_by_chunk(fake, fp, chunks)
    result["fake_quant"] = fake_mse
    quant_model = pipe.model
    backends = dict(torch_ref=TorchRefBackend, triton_int8=TritonInt8Backend)
    for kernel, weights, dual, attn in itertools.product(args.kernels, args.weights, args.dual_modes, args.attention):
        name = f"{kernel}/{weights}/{dual}/{attn}"
        be = backends[kernel](attention=ATTENTION[attn], dual_mode=dual, weights=weights)
        pipe.model = accelerate_(convert_to_real(copy.deepcopy(quant_model), real_specs(quant_model), be), be)
        if be.quantized_attention:
            calibrate_attention_(pipe.model, lambda: roll(f"{name} calibration", calib_prompts, calib_seeds))
        lat = roll(name)
        mse = latent_mse_by_chunk(lat, fp, chunks)
        result["rows"].append(dict(kernel=kernel, weights=weights, dual_mode=dual, attention=attn, latent_mse=mse,
                                   vs_fake_quant=mse["overall"] / fake_mse["overall"],
                                   mse_to_fake_quant=latent_mse_by_chunk(lat, fake, chunks)["overall"]))
        atomic_write_json(out / "deploy_quality.json", result)
        print(json.dumps(result["rows"][-1]), flush=True)
    pipe.model = fp_model
    atomic_write_json(out / "deploy_quality.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
