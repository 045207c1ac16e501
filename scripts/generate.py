"""Generate FP (and, with eval.artifact, quantized) videos for a prompt list: mp4 + PNG strip per video.

    python scripts/generate.py                                     # FP videos of the embedded model's eval prompts
    python scripts/generate.py eval.artifact=<train_quant run dir>  # + the quantized model's videos, same names/seeds
    python scripts/generate.py eval.artifact=<dir> eval.deploy=true kernel=triton_int8 device=cuda  # real kernels
    torchrun --nproc_per_node=4 scripts/generate.py model=self_forcing eval.artifact=...   # prompts sharded by RANK

Resumable: rerun the same command with eval.video_dir=<the folder> and finished videos are skipped. Rank 0 writes
``generation.json`` (videos and loop seconds of every rank) into its run folder.
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.app.evaluate import artifact_quantizer, generate
from qarvd.app.generate import barrier, from_rank0, gather, process_group
from qarvd.utils.io import atomic_write_json


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    if cfg.eval.deploy and not cfg.eval.artifact:  # else it would make FP videos only, which is not what was asked
        raise ValueError("eval.deploy=true deploys a quantized artifact: set eval.artifact=<scripts/train_quant.py "
                         "run dir>")
    with process_group():
        with open_dict(cfg):
            cfg.eval.video_dir = from_rank0(str(cfg.eval.video_dir))  # one folder for all ranks
        out = generate(cfg, artifact_quantizer(cfg.eval.artifact, cfg=cfg) if cfg.eval.artifact else None)
        ranks = gather(out["counts"])
        barrier()
    if out["rank"] == 0:
        for kind, folder in out["dirs"].items():
            print(f"{kind} videos: {folder} ({out['counts'][kind]})")
        stats = atomic_write_json(Path(cfg.paths.output_dir) / "generation.json",
                                  {"world_size": out["world_size"], "dirs": out["dirs"], "ranks": ranks})
        print(f"per-rank counts and seconds: {stats}")


if __name__ == "__main__":
    main()
