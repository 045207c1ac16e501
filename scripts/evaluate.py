"""Evaluate a quantized model against its FP model: paired videos, FVD-FP / LPIPS-FP / PSNR / SSIM (+ VBench).

    python scripts/evaluate.py method=qarvd bits=w4a8                  # calibrate, generate both sets, evaluate
    python scripts/evaluate.py eval.artifact=<train_quant run dir>    # evaluate a saved quantized artifact
    python scripts/evaluate.py eval.fp_dir=A eval.quant_dir=B          # only the metrics of two existing folders
    python scripts/evaluate.py -m experiment=table2                    # the sweep of a paper table

Writes <run dir>/record.json (scripts/make_tables.py reads it) and mirrors it to the logger (W&B offline).
Returns FVD-FP for Hydra sweepers.
"""
from pathlib import Path
from typing import Optional

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.app.evaluate import artifact_quantizer, calibrate, evaluate_run, generate, log_record
from qarvd.app.generate import barrier, dist_env, from_rank0, process_group
from qarvd.app.wandb_logger import NullLogger, logging_run


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    e = cfg.eval
    rank = dist_env()[0]
    logger = instantiate(cfg.logger) if rank == 0 else NullLogger()
    with process_group(), logging_run(logger, cfg):
        output_dir = Path(from_rank0(str(cfg.paths.output_dir)))  # every rank writes into rank 0's run folder
        extra: dict = {}
        if e.quant_dir:
            if not e.fp_dir:
                raise ValueError("eval.quant_dir needs eval.fp_dir: the FP videos to compare against")
            dirs = {"fp": e.fp_dir, "quant": e.quant_dir}
        else:
            artifact = e.artifact
            if not artifact:  # calibrate once (rank 0), then every rank loads the artifact
                artifact = from_rank0(str(calibrate(cfg, output_dir)) if rank == 0 else None)
            extra["artifact"] = str(artifact)
            with open_dict(cfg):
                cfg.eval.video_dir = from_rank0(str(e.video_dir))
            dirs = generate(cfg, artifact_quantizer(artifact, extra, cfg))["dirs"]
            barrier()
        if rank != 0:
            return None
        record = evaluate_run(cfg, dirs["fp"], dirs["quant"], output_dir, extra)
        log_record(logger, record, float(e.video.fps), int(e.sample_videos), output_dir)
    print(f"record: {output_dir / 'record.json'}")
    print("  " + ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items()))
    return record["metrics"].get("fvd_fp")


if __name__ == "__main__":
    main()
