"""Frame (chunk) sensitivity of an ARVD under quantization (paper Eq. 3-4, Fig. 2).

    python scripts/sensitivity.py                                      # tiny model, W4A8, calib.sensitivity_prompts
    python scripts/sensitivity.py model=self_forcing bits=w8a8 calib.sensitivity_prompts=100

Writes ``sensitivity.json`` (alpha, raw MSE, settings), usable as ``method.sensitivity_file``, and
``fig2_sensitivity.png`` into the run folder (:func:`qarvd.app.sensitivity.frame_sensitivity`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc. before composing)
from qarvd.app.sensitivity import frame_sensitivity

log = logging.getLogger("sensitivity")


@hydra.main(version_base="1.3", config_path="../conf", config_name="sensitivity")
def main(cfg: DictConfig) -> list[float]:
    out = Path(cfg.paths.output_dir)
    result = frame_sensitivity(cfg, out)  # a failure's traceback goes to the job log (JobLog callback)
    log.info("frame_alpha = %s", [round(a, 4) for a in result["frame_alpha"]])
    print(f"sensitivity: {out / 'sensitivity.json'}\nfigure:      {out / 'fig2_sensitivity.png'}")
    return result["frame_alpha"]


if __name__ == "__main__":
    main()
