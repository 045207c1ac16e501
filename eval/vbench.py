"""VBench quality dimensions through the official ``vbench`` package, run in its own interpreter.

VBench cannot share our environment (it pins numpy<2 and transformers 4.33 and refuses to build without CUDA
11.6-12.1), so :func:`run_vbench` starts ``eval.vbench.python`` on :mod:`eval.vbench_runner` with
``VBENCH_CACHE_DIR`` set, ``custom_input`` mode and ``local=True``, and parses VBench's results file. VBench
downloads missing models when it runs; nothing may download here, so every model file of the requested
dimensions is checked first and a missing one stops the run naming the file and where it is published.
The paper reports each dimension as a percentage and "Avg." as the plain mean of the five.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Optional, Sequence

from qarvd.utils.errors import MissingWeightsError

PAPER_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
)
VBENCH_PUBLISHED_AT = "https://github.com/Vchitect/VBench (pip install vbench in its own environment; see its README)"
# Files VBench reads from VBENCH_CACHE_DIR with local=True (vbench/utils.py init_submodules), and their sources.
CACHE_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "subject_consistency": (
        ("dino_model/facebookresearch_dino_main", "https://github.com/facebookresearch/dino (git clone)"),
        ("dino_model/dino_vitbase16_pretrain.pth", "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    ),
    "background_consistency": (
        ("clip_model/ViT-B-32.pt", "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"),
    ),
    "motion_smoothness": (("amt_model/amt-s.pth", "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth"),),
    "aesthetic_quality": (
        ("clip_model/ViT-L-14.pt", "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
        ("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth", "https://github.com/LAION-AI/aesthetic-predictor (sa_0_4_vit_l_14_linear.pth)"),
    ),
    "imaging_quality": (
        ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth"),
    ),
}
RUNNER = Path(__file__).with_name("vbench_runner.py")


def check_vbench(python: Optional[str | os.PathLike], cache_dir: Optional[str | os.PathLike], dimensions: Sequence[str]) -> None:
    """Raise :class:`MissingWeightsError` for a missing interpreter, vbench package or cache file."""
    unknown = sorted(set(dimensions) - set(CACHE_FILES))
    if unknown:
        raise ValueError(f"eval.vbench.dimensions: {unknown} not supported here; choose from {sorted(CACHE_FILES)}")
    if not python or not Path(python).is_file():
        raise MissingWeightsError("eval.vbench.python", python, f"an environment with vbench installed: {VBENCH_PUBLISHED_AT}")
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vbench') is None)"],
        env=_clean_env(),
        capture_output=True,
    )
    if probe.returncode != 0:
        raise MissingWeightsError("eval.vbench.python", f"{python} (no 'vbench' package)", VBENCH_PUBLISHED_AT)
    if not cache_dir or not Path(cache_dir).is_dir():
        raise MissingWeightsError("eval.vbench.cache_dir", cache_dir, f"the VBench model files listed in {VBENCH_PUBLISHED_AT}")
    for dim in dimensions:
        for rel, url in CACHE_FILES[dim]:
            if not (Path(cache_dir) / rel).exists():
                raise MissingWeightsError("eval.vbench.cache_dir", Path(cache_dir) / rel, f"{url} (needed by VBench '{dim}')")


def run_vbench(
    videos_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    python: str | os.PathLike,
    cache_dir: str | os.PathLike,
    dimensions: Sequence[str] = PAPER_DIMENSIONS,
    name: str = "vbench",
    device: str = "cuda",
    timeout_s: Optional[float] = None,
) -> dict:
    """Score every mp4 in ``videos_dir``; returns :func:`parse_vbench_results` of VBench's output."""
    check_vbench(python, cache_dir, dimensions)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / f"{name}.log"
    cmd = [str(python), str(RUNNER), "--videos", str(videos_dir), "--output", str(output_dir), "--name", name,
           "--device", device, "--dimensions", *dimensions]
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, env=_clean_env(VBENCH_CACHE_DIR=str(cache_dir)), stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"VBench failed (exit {proc.returncode}): {' '.join(cmd)}\nlog {log}:\n{tail}")
    return parse_vbench_results(output_dir / f"{name}_eval_results.json", dimensions)


def parse_vbench_results(path: str | os.PathLike, dimensions: Sequence[str] = PAPER_DIMENSIONS) -> dict:
    """``{dimension: percentage, ..., "avg": plain mean of the percentages}`` from ``<name>_eval_results.json``.

    VBench stores ``{dimension: [mean score in [0, 1], [per-video results]]}``.
    """
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [d for d in dimensions if d not in raw]
    if missing:
        raise ValueError(f"VBench results '{path}' lack dimensions {missing}")
    scores = {d: 100.0 * float(raw[d][0] if isinstance(raw[d], (list, tuple)) else raw[d]) for d in dimensions}
    scores["avg"] = math.fsum(scores.values()) / len(dimensions)
    return scores


def _clean_env(**extra: str) -> dict:
    """Our environment minus what would make VBench's interpreter import our packages (numpy 2, torch, ...)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(extra)
    return env
