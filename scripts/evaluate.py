"""Evaluate a quantized model against its FP model: paired videos, FVD-FP / LPIPS-FP / PSNR / SSIM (+ VBench).

    python scripts/evaluate.py method=qarvd bits=w4a8                  # calibrate, generate both sets, evaluate
    python scripts/evaluate.py eval.artifact=<train_quant run dir>    # evaluate a saved quantized artifact
    python scripts/evaluate.py eval.fp_dir=A eval.quant_dir=B          # only the metrics of two existing folders
    python scripts/evaluate.py -m experiment=table2                    # the sweep of a paper table

Writes <run dir>/record.json (scripts/make_tables.py reads it), labelled from the artifact, and mirrors it to the
logger (W&B offline). Returns FVD-FP for Hydra sweepers.
"""
from typing import Optional

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.app.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> Optional[float]:
    record = evaluate(cfg)
    if record is None:  # not rank 0
        return None
    print(f"record: {cfg.paths.output_dir}/record.json")
    print("  " + ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items()))
    return record["metrics"].get("fvd_fp")


if __name__ == "__main__":
    main()
