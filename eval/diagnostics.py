"""The latent-diagnostics record as tables (:mod:`qarvd.app.diagnostics` computes it): ratios of held-out latent MSE
to a baseline run with a paired bootstrap interval over prompts, seen / unseen calibration-pool MSE, reconstruction
fit, weights-only / activations-only MSE, and the per-layer weight-error bits of the dual-scale split."""
from __future__ import annotations

from eval.stats import paired_ratio_interval


def paired_ratio(a: list[float], b: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) / mean(b) over the same prompts, with a 90 % paired bootstrap interval (prompts resampled)."""
    ratio, ci = paired_ratio_interval(a, b, n_boot=draws, seed=seed, level=0.90)
    return ratio, ci.lo, ci.hi


def _e(x) -> str:
    return "–" if x is None else f"{x:.3e}"


def _baseline_for(r: dict, runs: dict, baselines: list[str]) -> str | None:
    """The first named baseline run with the same calib preset, bits and held-out prompts as ``r``."""
    for name in baselines:
        b = runs.get(name)
        if b and (b["calib"], b["bits"], len(b["eval_rerun"]["per_prompt"])) == (
                r["calib"], r["bits"], len(r["eval_rerun"]["per_prompt"])):
            return name
    return None


def diagnostics_markdown(result: dict, baselines: list[str]) -> str:
    """Generalisation table (ratios to a baseline, per chunk and overall with a paired bootstrap interval) and the
    per-layer outlier / weight-bits table."""
    runs = result["runs"]
    k = max((len(r["eval"]["per_chunk"]) for r in runs.values()), default=0)
    lines = ["eval = held-out prompts (metrics.json; 'rerun' = recomputed here from the saved artifact); ratio = eval MSE "
             "/ the baseline's on the same prompts and noise, [90 % paired bootstrap over prompts]; seen = the run's "
             f"calibration prompt(s), unseen = the other of the first {result['prompts']} calibration-pool prompts; "
             "fit = mean final / nearest-rounding loss on the calibration samples; c1..ck = per-chunk eval MSE / baseline's.\n",
             "| run | calib | calib prompts | eval MSE | rerun | baseline | ratio [90 % CI] | seen | unseen | unseen / seen | fit | "
             + " | ".join(f"c{i + 1}" for i in range(k)) + " |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * k]
    for name, r in runs.items():
        g = r["generalization"]
        s_, u = g["seen"].get("overall"), g["unseen"].get("overall")
        bname = _baseline_for(r, runs, baselines)
        if bname and bname != name:
            b = runs[bname]
            m, lo, hi = paired_ratio(r["eval_rerun"]["per_prompt"], b["eval_rerun"]["per_prompt"])
            ratio = f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
            chunks = [f"{x / y:.2f}" for x, y in zip(r["eval"]["per_chunk"], b["eval"]["per_chunk"])]
        else:
            ratio, chunks = ("1 (baseline)" if bname == name else "–"), ["–"] * k
        fit = r["recon_fit"]["mean_final_over_nearest"]
        lines.append(f"| {name} | {r['calib']} | {r['calib_prompts']} | {_e(r['eval']['overall'])} | "
                     f"{_e(r['eval_rerun']['overall'])} | {bname or '–'} | {ratio} | {_e(s_)} | {_e(u)} | "
                     f"{f'{u / s_:.2f}' if s_ and u else '–'} | {'–' if fit is None else f'{fit:.3f}'} | "
                     + " | ".join(chunks) + " |")
    wa = {n: r["weights_vs_acts"] for n, r in runs.items() if r.get("weights_vs_acts")}
    if wa:
        lines += ["\n| run | weights only: seen | unseen | activations only: seen | unseen |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {_e(x['weights_only']['seen'])} | {_e(x['weights_only']['unseen'])} | "
                  f"{_e(x['acts_only']['seen'])} | {_e(x['acts_only']['unseen'])} |" for n, x in wa.items()]
    we = result.get("weight_error_w4")
    if we:
        ms = [f"m{m}" for m in result["outlier_multiples"]]
        lines += ["\n| layer | " + " | ".join(f"{m} cols" for m in ms) + " | " + " | ".join(f"{m} bits" for m in ms) + " |",
                  "|---|" + "---|" * (2 * len(ms))]
        for n, row in we.items():
            if any(row[m]["count"] for m in ms):
                lines.append(f"| {n} | " + " | ".join(str(row[m]["count"]) for m in ms) + " | "
                             + " | ".join(f"{row[m]['bits_gained']:.3f}" for m in ms) + " |")
        lines.append("\nWeight error at 4 bits with one scale per output row vs the dual-scale split, percentile init; "
                     "cols = outlier-group width, bits = 0.5 log2(MSE single / MSE split). m1 = the Eq. 12 count unrounded.")
    return "\n".join(lines) + "\n"
