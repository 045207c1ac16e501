"""Calibrate one quantization method at one bit-width (Hydra entry point).

    python scripts/train_quant.py                                   # tiny model, MinMax, W4A8
    python scripts/train_quant.py -m method=minmax,qarvd bits=w8a8,w4a8 calib=fast
    python scripts/train_quant.py -m experiment=latent_methods     # a preset's sweep (conf/experiment/)

Writes the artifact, the resolved config and record.json (latent MSE to the FP rollout, overall, per chunk and per
prompt) into the run folder, logs a W&B run (offline) and returns the overall latent MSE for sweepers.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc. before composing)
from qarvd.app.calibrate import train_quant_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    record = train_quant_job(cfg)
    print(f"artifact: {record['provenance']['artifact']}\nrecord:   {cfg.paths.output_dir}/record.json")
    return float(record["metrics"]["latent_mse"])


if __name__ == "__main__":
    main()
