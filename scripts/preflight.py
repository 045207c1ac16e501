"""Check that every file a run needs is in place (and its config's values), without building anything.

    python scripts/preflight.py model=self_forcing eval=paper                   # the Table 2 evaluation of self-forcing
    python scripts/preflight.py stage=calibrate model=causal_forcing_chunkwise   # what a calibration reads
    python scripts/preflight.py -m model=self_forcing,causal_forcing_chunkwise,causal_forcing_framewise,causal_forcing_framewise_1step,causal_forcing_framewise_2step eval=paper eval.lpips.required=true eval.vbench.enabled=true

Lists each file with its config key; a missing one is named with the key to set and where it is published, and the
command exits non-zero. Nothing downloads.
"""
import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.app.preflight import check_files


@hydra.main(version_base="1.3", config_path="../conf", config_name="preflight")
def main(cfg: DictConfig) -> None:
    for line in check_files(cfg):
        print(line)
    print(f"{cfg.model.name}: every file of the {cfg.stage} run is in place")


if __name__ == "__main__":
    main()
