"""Generate FP (and, with eval.artifact, quantized) videos for a prompt list: mp4 + PNG strip per video.

    python scripts/generate.py                                     # FP videos of the embedded model's eval prompts
    python scripts/generate.py eval.artifact=<train_quant run dir>  # + the quantized model's videos, same names/seeds
    python scripts/generate.py eval.artifact=<dir> eval.deploy=true kernel=triton_int8 device=cuda  # real kernels
    torchrun --nproc_per_node=4 scripts/generate.py model=self_forcing eval.artifact=...   # prompts sharded by RANK

Resumable: rerun the same command with eval.video_dir=<the folder> and finished videos are skipped (only if the
folder's manifest.json says its videos were made the same way). Rank 0 writes ``generation.json`` (videos and loop
seconds of every rank) into its run folder.
"""
import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.app.generate import generate_videos


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    out = generate_videos(cfg)
    if out["rank"] == 0:
        for kind, folder in out["dirs"].items():
            print(f"{kind} videos: {folder} ({out['counts'][kind]})")
        print(f"per-rank counts and seconds: {cfg.paths.output_dir}/generation.json")


if __name__ == "__main__":
    main()
