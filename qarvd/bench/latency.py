"""Latency and size of the CausalWan DiT rollout: bf16 baselines against real W8A8 / W4A8 / FP8 kernels.

Self-forcing inference at Wan2.1-1.3B dims (``arch: wan``, seeded random weights): 21 latent frames of 60 x 104,
3 frames per chunk, 4 denoising steps + 1 K/V refresh per chunk, text context [B, 512, 4096]; DiT only. Each row is
one model/kernels/attention setting (:mod:`qarvd.bench.rows`: a conf/kernel choice plus overrides): one warm-up
rollout, then the median of ``repeats`` rollouts timed with CUDA events. All ratios in the output come from one run.

Sections (``sections``), each written to ``<out>/<name>.json`` as soon as it finishes (a run cut short keeps what it
measured): ``gemm`` (:mod:`qarvd.bench.gemm`), ``act_quant`` (:mod:`qarvd.bench.act_quant`), ``attention``
(:mod:`qarvd.bench.attention`), ``check`` (:mod:`qarvd.bench.check`), ``rollout`` (:mod:`qarvd.bench.rollout`, with the
safetensors file size and GPU memory of each format) and ``profile`` (:mod:`qarvd.bench.kernel_profile`). A Markdown
table is written next to the JSON. Settings: conf/bench/latency.yaml.
"""
from __future__ import annotations

import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig

from qarvd.bench.act_quant import act_quant_section
from qarvd.bench.attention import attention_section
from qarvd.bench.check import FUSED_BF16, check_section
from qarvd.bench.dit import arch_config, base_model
from qarvd.bench.gemm import gemm_section
from qarvd.bench.kernel_profile import profile_section
from qarvd.bench.report import Report, environment, log
from qarvd.bench.resources import kernel_resources
from qarvd.bench.rollout import rollout_section
from qarvd.bench.rows import check_names, row_specs
from qarvd.utils.io import atomic_write_text

SECTIONS = ("gemm", "act_quant", "attention", "check", "rollout", "profile")


def bench_latency(cfg: DictConfig) -> Path:
    """Run the configured sections; returns the JSON path (the Markdown table lies beside it)."""
    unknown = [s for s in cfg.sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"sections: unknown {unknown}; choose from {SECTIONS}")
    rows = row_specs(cfg)  # every row checked before anything runs
    for section, key in (("rollout", "rows"), ("profile", "profile_rows"), ("check", "check_rows")):
        if section in cfg.sections:
            check_names(cfg, rows, key)
    if "check" in cfg.sections and FUSED_BF16 not in rows:
        raise ValueError(f"the check section compares row {FUSED_BF16!r} with the eager model: keep it in row_specs")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    rep = Report(out, cfg.name)
    env = environment(device, cfg)
    rep.put("env", env)
    log("env", env)
    torch.backends.cuda.matmul.allow_tf32 = True
    if "gemm" in cfg.sections:
        gemm_section(cfg, device, rep)
    if "act_quant" in cfg.sections:
        act_quant_section(device, rep, max(cfg.gemm_m), arch_config(cfg.arch).dim)
    base = base_model(cfg, device)
    fastest = "auto"
    if "attention" in cfg.sections and device.type == "cuda":
        fastest = attention_section(cfg, device, rep, base.cfg)
    for section, fn in (("check", check_section), ("rollout", rollout_section), ("profile", profile_section)):
        if section in cfg.sections:
            try:
                fn(cfg, rows, base, fastest, device, rep)
            except Exception as e:  # noqa: BLE001
                rep.put(f"{section}_error", f"{type(e).__name__}: {e}")
                traceback.print_exc()
            markdown(rep, out, cfg.name)
    rep.put("kernel_resources", kernel_resources())
    markdown(rep, out, cfg.name)
    log("done", rep.path)
    return rep.path


def markdown(rep: Report, out: Path, name: str) -> None:
    """<name>.md: the rollout table, the GEMM table and the sizes, from the JSON so far."""
    d = rep.data
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"  # noqa: E731
    lines = [f"# DiT rollout latency ({d.get('env', {}).get('device', '?')})", "",
             "| row | batch | attention | seconds | vs bf16 flash | vs strongest bf16 | latent rel diff to bf16_fused "
             "|",
             "|---|---|---|---|---|---|---|"]
    for e in d.get("rollout", []):
        r = d.get("rollout_ratios", {}).get(f"{e['row']}@b{e['batch']}", {})
        lines.append(f"| {e['row']} | {e['batch']} | {e.get('attention', '-')} | {fmt(e.get('seconds'))} | "
                     f"{fmt(r.get('speedup_vs_bf16_flash'))} | {fmt(r.get('speedup_vs_strongest_bf16'))} | "
                     f"{fmt(e.get('latent_rel_diff_to_bf16_fused'))} |"
                     + (f" error: {e['error'][:80]}" if "error" in e else ""))
    lines += ["", "| M | K | N | cuBLAS bf16 ms | W8 ms (x) | W8 asym-w ms | W8 dual exact ms | W8 dual int-ratio ms | "
              "W4 ms | _int_mm ms | FP8 ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d.get("gemm", []):
        g = lambda k: f"{r[k]:.4f}" if k in r else "-"  # noqa: E731
        lines.append(f"| {r['m']} | {r['k']} | {r['n']} | {g('cublas_bf16_ms')} | {g('w8_none_ms')} "
                     f"({r.get('w8_none_speedup_vs_cublas', 0):.2f}x) | {g('w8_none_asymw_ms')} | {g('w8_exact_ms')} | "
                     f"{g('w8_int_ratio_ms')} | {g('w4_none_ms')} | {g('torch_int_mm_ms')} | {g('fp8_scaled_mm_ms')} |")
    if "sizes" in d:
        lines += ["", "| format | file bytes | x smaller than bf16 |", "|---|---|---|"]
        for k, v in d["sizes"].items():
            if isinstance(v, dict):
                lines.append(f"| {k} | {v['file_bytes']} | {v.get('x_smaller_than_bf16', 1.0):.3f} |")
    atomic_write_text(out / f"{name}.md", "\n".join(lines) + "\n")
