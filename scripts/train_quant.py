"""Calibrate one quantization method at one bit-width (Hydra entry point).

    python scripts/train_quant.py                                   # tiny model, MinMax, W4A8
    python scripts/train_quant.py -m method=minmax,qarvd bits=w8a8,w4a8 calib=fast

Writes the artifact, the resolved config and record.json (latent MSE to the FP rollout, overall, per chunk and per
prompt) into the run folder and returns the overall latent MSE for sweepers.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc. before composing)
from qarvd.app.calibrate import train_quant

log = logging.getLogger("train_quant")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    out_dir = Path(cfg.paths.output_dir)
    try:
        record = train_quant(cfg, out_dir)
    except Exception:
        log.exception("train_quant failed (method=%s, bits=%s, calib=%s); nothing was saved as a result",
                      cfg.method.name, cfg.bits.name, cfg.calib.name)
        raise
    mse, chunks = record["metrics"]["latent_mse"], record["per_chunk"]["latent_mse"]
    log.info("latent MSE to FP: overall %.6g, per chunk %s", mse, [f"{v:.3g}" for v in chunks])
    print(f"artifact: {record['provenance']['artifact']}\nrecord:   {out_dir / 'record.json'}")
    return float(mse)


if __name__ == "__main__":
    main()
