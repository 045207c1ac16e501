"""Frame (chunk) sensitivity of an ARVD under quantization (paper Eq. 3-4, Fig. 2).

    python scripts/sensitivity.py                                      # tiny model, W4A8, calib.sensitivity_prompts
    python scripts/sensitivity.py model=self_forcing bits=w8a8 calib.sensitivity_prompts=100

The model is quantized with the percentile initialisation only (no reconstruction); for each chunk k only chunk k's
forwards (denoising steps + refresh) run quantized. Writes ``sensitivity.json`` (alpha, raw MSE, settings), usable as
``method.sensitivity_file``, and ``fig2_sensitivity.png`` into the run folder.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401
from qarvd.methods.base import measure_sensitivity
from qarvd.app.calibrate import build_calibration, run_identity
from qarvd.utils.io import atomic_write, atomic_write_json

log = logging.getLogger("sensitivity")


def plot_alpha(alpha: list[float], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    chunks = list(range(1, len(alpha) + 1))
    ax.bar(chunks, alpha, color="#d9822b")
    ax.plot(chunks, alpha, "o-", color="#333333", lw=1)
    ax.set_xlabel("chunk")
    ax.set_ylabel("sensitivity (sum = 1)")
    ax.set_xticks(chunks)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format="png"))
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="../conf", config_name="sensitivity")
def main(cfg: DictConfig) -> list[float]:
    out = Path(cfg.paths.output_dir)
    try:
        cal, _, _ = build_calibration(cfg, out)
        result = {**run_identity(cfg), **measure_sensitivity(cal), "prompts_from": "model.prompts.calib"}
        result.pop("method", None)
        atomic_write_json(out / "sensitivity.json", result)
        plot_alpha(result["alpha"], f"{cfg.model.name} {cfg.bits.name.upper()}, {result['num_prompts']} prompts",
                   out / "fig2_sensitivity.png")
    except Exception:
        log.exception("sensitivity failed (model=%s, bits=%s)", cfg.model.name, cfg.bits.name)
        raise
    log.info("alpha = %s", [round(a, 4) for a in result["alpha"]])
    print(f"sensitivity: {out / 'sensitivity.json'}\nfigure:      {out / 'fig2_sensitivity.png'}")
    return result["alpha"]


if __name__ == "__main__":
    main()
