"""GPU-hours of the paper's tables on the real models, computed only from measured benchmark JSON files.

A table is the sweep of its experiment preset (``conf/experiment/<table>.yaml``) under ``scripts/evaluate.py``: its
jobs are composed as the launcher composes them (:func:`qarvd.app.preflight.job_overrides`), and each job's own config
says what it costs: method and bits, model, videos (the configured prompt files read, x ``eval.samples_per_prompt``:
:func:`qarvd.app.generate.jobs`), the FP folder it shares (:func:`qarvd.app.generate.fp_folder`: one FP set per
distinct folder), and the metrics it computes. Its components, each in GPU-seconds from one JSON:

- calibration: the projection ``projection`` of a calibration bench JSON (:mod:`qarvd.bench.calibration_batched`)
  given for the job's method, where the JSON's architecture, latent, forwards per prompt, iterations and prompts are
  the job's. What that bench does not time (model build, frame-sensitivity rollouts, held-out latent-MSE rollouts)
  is its own component, not measured;
- generation: seconds per video of an end-to-end bench JSON (:mod:`qarvd.bench.generation_e2e`), where its latent,
  encoding (and, when recorded, architecture and rollout) are the job's: the FP set from the row of the model as built
  (``kernel: null`` without ``w_bits``, what evaluation generates FP videos with), the quantized videos from a
  fake-quant row (``kernel: null`` with ``w_bits``) or, with ``eval.deploy``, a real-kernel row of the job's ``w_bits``;
- metrics: seconds per video pair of that bench's ``metric_stage`` (``metrics=true``): PSNR / SSIM / LPIPS-FP, and
  FVD-FP when it timed the job's backbone; VBench is never timed.

A component without a measurement is "not measured" (never 0) with the reason; the total adds what was measured and
is marked a lower bound when anything is missing. With ``strict=false`` a measurement also stands for other bit
widths and method variants (the fake-quant arithmetic is the same round / clamp / rescale at any width), which each
component names in its notes; ``strict=true`` counts those jobs as not measured.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from qarvd.app.generate import fp_folder, jobs as video_jobs
from qarvd.app.preflight import compose_job, job_overrides
from qarvd.models.rollout import RolloutConfig
from qarvd.utils.hydra_resolvers import REPO_ROOT
from qarvd.utils.io import atomic_write_json, atomic_write_text

NOT_MEASURED = "not measured"
CALIBRATION_SCRIPT = "scripts/bench_calibration_batched.py"
GENERATION_SCRIPT = "scripts/bench_generation_e2e.py"
PROJECTIONS = {  # projection -> (key in the calibration JSON's `projection`, what it is)
    "fp32": ("probe_fp32_hours", "fp32 learning step: the one-at-a-time path's arithmetic (the release's), same codes "
                                 "and scales"),
    "tf32": ("probe_tf32_hours", "TF32 matmuls in the learning step (changes the numbers)"),
    "tf32_compile": ("probe_tf32_compile_hours", "TF32 + torch.compile learning step (changes the numbers)"),
    "bf16_compile": ("probe_bf16_compile_hours", "bf16 matmuls + torch.compile learning step (changes the numbers)"),
    "timed": ("full_calibration_hours", "the timed blocks end to end with the JSON's calib_batch settings"),
}
COMPONENTS = {  # key -> column label
    "calibration": "calibration",
    "calibration_other": "calibration, other stages",
    "generation_fp": "FP generation",
    "generation_quantized": "quantized generation",
    "reference_metrics": "PSNR/SSIM/LPIPS-FP",
    "fvd_fp": "FVD-FP",
    "vbench": "VBench",
}
MISSING = ("not measured", "partly measured")  # statuses that make a total a lower bound
VBENCH = "VBench was not timed (it runs in its own environment with its scoring models)"


@dataclass(frozen=True)
class Part:
    """One unit of a component (a job, or a shared FP set): its GPU-seconds, or why it has no measurement."""

    seconds: Optional[float] = None  # None: not measured (reason says why), unless `within`
    reason: str = ""  # why there is no measurement
    note: str = ""  # what the measurement stands for
    within: str = ""  # timed as part of this other component (no seconds of its own)


@dataclass(frozen=True)
class Source:
    """A benchmark JSON: its path, its content and the command that reproduces it."""

    path: str
    data: dict
    command: str


def load_source(path: str, script: str, command: Optional[str] = None) -> Source:
    """The JSON at ``path``; its command from its recorded ``overrides``, else ``command``."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"benchmark JSON '{path}' does not exist")
    data = json.loads(file.read_text())
    if "overrides" in data:
        command = " ".join(["python", script, *(shlex.quote(o) for o in data["overrides"])])
    resolved = file.resolve()  # named from the repository root where it lies inside it: outputs carry no machine paths
    name = resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else file
    return Source(str(name), data, command or "not recorded")


@contextlib.contextmanager
def hydra_context() -> Iterator[None]:
    """Compose from the repository's conf/: inside a Hydra app its own search path, else initialised here."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        yield


def sweep_jobs(entry: str, preset: str, overrides: list[str]) -> tuple[dict[str, list[str]], list[DictConfig]]:
    """(swept key -> its values, composed config of every job) of ``<entry> -m experiment=<preset> <overrides>``."""
    from hydra import compose

    with hydra_context():
        root = compose(entry, [f"experiment={preset}", *overrides], return_hydra_config=True)
        lists = job_overrides(root)
        cfgs = [compose_job(root, o) for o in lists]
    swept: dict[str, list[str]] = {k: [] for k in OmegaConf.select(root, "hydra.sweeper.params") or {}}
    for o in (o for job in lists for o in job):
        key, _, value = o.partition("=")
        if key in swept and value not in swept[key]:
            swept[key].append(value)
    return swept, cfgs


def differences(measured: dict, job: dict) -> list[str]:
    """``key measured != job`` for every key both give with other values."""
    out = []
    for key in sorted(set(measured) & set(job)):
        a, b = measured[key], job[key]
        same = (math.isclose(a, b, rel_tol=1e-9) if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in (a, b)) else a == b)
        if not same:
            out.append(f"{key} {a} (job: {b})")
    return out


def container(node) -> dict:
    """A config node as plain, resolved Python values."""
    return OmegaConf.to_container(node, resolve=True)


def calibration_part(cfg: DictConfig, sources: dict[str, Source], projection: str, strict: bool) -> Part:
    """One job's calibration from the JSON given for its method (module doc)."""
    method = str(cfg.method.name)
    if method not in sources:
        return Part(reason=f"no calibration JSON for method {method} (calibration.{method})")
    d = sources[method].data
    m = cfg.model
    iters = d.get("iters")  # the probes project at the JSON's probe_projection_iters where it records one
    if projection != "timed":
        iters = d.get("projection", {}).get("probe_projection_iters", iters)
    measured = {"iters": iters, "prompts": d.get("prompts"), "forwards_per_prompt": d.get("forwards_per_prompt"),
                "latent": d.get("latent_frame"), **{f"arch.{k}": v for k, v in d.get("arch", {}).items()}}
    job = {"iters": int(cfg.calib.iters), "prompts": int(cfg.calib.num_prompts),
           "forwards_per_prompt": len(RolloutConfig(**container(m.rollout)).forward_infos()),
           "latent": [int(m.latent.channels), int(m.latent.height), int(m.latent.width)],
           **{f"arch.{k}": v for k, v in container(m.arch).items()}}
    diffs = differences({k: v for k, v in measured.items() if v is not None}, job)
    if diffs:
        return Part(reason="the calibration JSON measured another setting: " + ", ".join(diffs))
    key, _ = PROJECTIONS[projection]
    hours = d.get("projection", {}).get(key)
    if hours is None:
        return Part(reason=f"the calibration JSON has no projection.{key}")
    variant = []
    if d.get("bits") != str(cfg.bits.name):
        variant.append(str(cfg.bits.name))
    dual = OmegaConf.select(cfg, "method.dual_scale", default=None)
    if dual is not None and bool(dual) != (d.get("dual_scale_layers", 0) > 0):
        variant.append(f"dual scale {'on' if dual else 'off'} (the JSON splits {d.get('dual_scale_layers', 0)} layers)")
    if variant and strict:
        return Part(reason="the calibration JSON measured another variant: " + ", ".join(variant))
    note = (f"{method} measured at {d.get('bits')} ({d.get('dual_scale_layers', 0)} dual-scale layers of "
            f"{d.get('outlier_columns', 0)} outlier columns)"
            + (" and used for " + ", ".join(variant) if variant else ""))
    return Part(float(hours) * 3600, note=note)


def calibration_other_part(cfg: DictConfig) -> Part:
    """The stages of a job's calibration the calibration bench does not time (none of them is measured)."""
    c = cfg.calib
    return Part(reason=f"not timed by the calibration bench: model build, frame-sensitivity rollouts "
                       f"(calib.sensitivity_prompts={c.sensitivity_prompts}, where the method needs alpha; cached per "
                       f"model), FP and quantized latent-MSE rollouts of calib.eval_prompts={c.eval_prompts} prompts")


def video_mismatch(cfg: DictConfig, d: dict) -> list[str]:
    """How the e2e JSON's videos differ from the job's (latent, encoding; architecture and rollout when recorded)."""
    m = cfg.model
    measured = {"latent": d.get("video", {}).get("latent"),
                **{f"encoding.{k}": v for k, v in d.get("encoding", {}).items()},
                **{f"arch.{k}": v for k, v in d.get("model", {}).get("arch", {}).items()},
                **{f"rollout.{k}": v for k, v in d.get("model", {}).get("rollout", {}).items()}}
    job = {"latent": [int(m.rollout.num_frames), int(m.latent.channels), int(m.latent.height), int(m.latent.width)],
           **{f"encoding.{k}": v for k, v in container(cfg.eval.video).items()},
           **{f"arch.{k}": v for k, v in container(m.arch).items()},
           **{f"rollout.{k}": v for k, v in container(m.rollout).items()}}
    return differences({k: v for k, v in measured.items() if v is not None}, job)


def video_notes(cfg: DictConfig, d: dict) -> list[str]:
    """What a generation measurement leaves unmatched: a model it does not record, other batch and writer settings."""
    notes = []
    if "model" not in d:
        latent = d.get("video", {}).get("latent")
        notes.append(f"the JSON records no architecture or rollout: matched on the latent {latent}")
    e = cfg.eval
    if (d.get("batch"), d.get("writers")) != (int(e.prompts_per_batch), int(e.writers)):
        notes.append(f"measured at batch {d.get('batch')} with {d.get('writers')} writer threads; the jobs run "
                     f"eval.prompts_per_batch={e.prompts_per_batch}, eval.writers={e.writers}")
    return notes


def per_video(row: dict, seconds: str) -> float:
    """A row's seconds per video: wall (until its last file is on disk) or generating (text + DiT + VAE)."""
    return (row["seconds"] if seconds == "wall" else row["generating_seconds"]) / row["videos"]


def quantized_row(cfg: DictConfig, rows: dict, strict: bool) -> tuple[Optional[str], str, str]:
    """(row name, what it stands for, why none) of the job's quantized videos."""
    w, a = int(cfg.bits.w_bits), int(cfg.bits.a_bits)
    if cfg.eval.deploy:
        real = [n for n, r in rows.items() if r.get("kernel") is not None and r.get("w_bits") == w]
        return (real[0], f"real {rows[real[0]]['kernel']} W{w} row", "") if real else (
            None, "", f"eval.deploy: no real-kernel row with w_bits {w}")
    fake = [n for n, r in rows.items() if r.get("kernel") is None and r.get("w_bits") is not None]
    exact = [n for n in fake if (rows[n]["w_bits"], rows[n].get("a_bits")) == (w, a)]
    if exact or (fake and not strict):
        name = (exact or fake)[0]
        r = rows[name]
        note = f"plain fake-quant W{r['w_bits']}A{r.get('a_bits')} row '{name}'" + (
            "" if exact else f", standing for {cfg.bits.name}")
        return name, note + " (no method's extra ops: smoothing, low-rank branch, dual-scale split)", ""
    why = f"no fake-quant row (kernel null, w_bits set{', W%dA%d' % (w, a) if strict else ''}) in the generation JSON"
    return None, "", why


def fp_row(rows: dict) -> tuple[Optional[str], str, str]:
    """(row name, what it stands for, why none) of the FP videos: the model as built, as evaluation makes them."""
    eager = [n for n, r in rows.items() if r.get("kernel") is None and r.get("w_bits") is None]
    if eager:
        return eager[0], f"row '{eager[0]}' (the model as built)", ""
    return None, "", ("no row of the model as built (kernel null, w_bits null: what evaluation generates FP videos with) "
                      "in the generation JSON")


def generation_part(cfg: DictConfig, src: Source, seconds: str, videos: int, row: tuple) -> Part:
    """``videos`` of one job (or FP set) at the seconds per video of ``row`` = (name, what it stands for, why none)."""
    diffs = video_mismatch(cfg, src.data)
    if diffs:
        return Part(reason="the generation JSON measured other videos: " + ", ".join(diffs))
    name, note, why = row
    if name is None:
        return Part(reason=why)
    notes = [note, *video_notes(cfg, src.data), "the job's model build and checkpoint loading not included"]
    return Part(videos * per_video(src.data["rows"][name], seconds), note="; ".join(notes))


def metric_parts(cfg: DictConfig, src: Source, videos: int) -> tuple[Part, Optional[Part]]:
    """(PSNR/SSIM/LPIPS-FP part, FVD-FP part or None without FVD-FP) of one job from the metric stage's seconds per
    pair, pooled over the rows that timed it."""
    e = cfg.eval
    needed = {k for k, on in (("psnr_fp", e.psnr), ("ssim_fp", e.ssim), ("lpips_fp", e.lpips.enabled)) if on}
    d = src.data
    timed = [r["metric_stage"] for r in d.get("rows", {}).values() if "metric_stage" in r]
    diffs = video_mismatch(cfg, d)
    got = set.intersection(*(set(t["timed"]) for t in timed)) if timed else set()
    why = ("no metric-stage timing (scripts/bench_generation_e2e.py metrics=true)" if not timed else
           "the metric JSON timed other videos: " + ", ".join(diffs) if diffs else
           "the metric stage did not time " + ", ".join(sorted(needed - got)) if needed - got else "")
    if why:
        return Part(reason=why), Part(reason=why) if e.fvd.enabled else None
    per_pair = math.fsum(t["seconds"] for t in timed) / sum(t["pairs"] for t in timed)
    stage = d.get("metric_stage", {})
    fvd_timed = "fvd_fp" in got
    backbone = stage.get("fvd_fp", {}).get("backbone")
    notes = [f"{per_pair:.3g} s per pair over {sum(t['pairs'] for t in timed)} pairs", f"LPIPS: {stage.get('lpips_fp')}"]
    if fvd_timed and not e.fvd.enabled:
        notes.append(f"includes FVD-FP features ({backbone}), which the job does not compute")
    ref = Part(videos * per_pair, note="; ".join(notes))
    if not e.fvd.enabled:
        return ref, None
    if fvd_timed and backbone == e.fvd.backbone:
        return ref, Part(within="reference_metrics")
    why = (stage.get("fvd_fp", {}).get("reason") or "") if not fvd_timed else f"it timed backbone {backbone}"
    why = why.removeprefix(NOT_MEASURED + ": ")
    return ref, Part(reason=f"the metric stage did not time FVD-FP ({e.fvd.backbone}): {why}")


def component(parts: list[Part], unit: str, sources: list[Source]) -> dict:
    """A component of a table from its parts (status, GPU-hours of the measured parts, reasons of the others)."""
    missing = Counter(p.reason for p in parts if p.seconds is None and not p.within)
    measured = len(parts) - sum(missing.values())
    seconds = [p.seconds for p in parts if p.seconds is not None]
    if not parts:
        status = "not run"
    elif all(p.within for p in parts):
        status = f"in {COMPONENTS[parts[0].within]}"
    else:
        status = "measured" if not missing else "partly measured" if measured else NOT_MEASURED
    return {"status": status, "hours": math.fsum(seconds) / 3600 if seconds else None, "units": len(parts),
            "unit": unit, "measured_units": measured, "not_measured": dict(missing),
            "notes": sorted({p.note for p in parts if p.note}),
            "sources": [{"path": s.path, "command": s.command} for s in sources]}


def table_cost(preset: str, swept: dict, cfgs: list[DictConfig], sources: dict, settings: DictConfig) -> dict:
    """Every component of one table (module doc)."""
    videos = [len(video_jobs(c)) for c in cfgs]
    fp_sets: dict[str, tuple[DictConfig, int]] = {}
    for i, (c, n) in enumerate(zip(cfgs, videos)):
        shared = copy.deepcopy(c)
        with open_dict(shared):
            shared.model.checkpoint.random_init = True  # key the folder on the config alone (one model per table)
        folder = fp_folder(shared)  # a real run's folder name also hashes the weight files: only the grouping is kept
        fp_sets.setdefault(f"{c.model.name}:{folder.name.rpartition('-')[2]}" if folder else f"job {i}", (c, n))
    calib, gen, met = sources["calibration"], sources["generation"], sources["metrics"]
    parts: dict[str, list[Part]] = {k: [] for k in COMPONENTS}
    for c, n in zip(cfgs, videos):
        parts["calibration"].append(calibration_part(c, calib, str(settings.projection), bool(settings.strict)))
        parts["calibration_other"].append(calibration_other_part(c))
        row = quantized_row(c, gen.data.get("rows", {}), bool(settings.strict))
        parts["generation_quantized"].append(generation_part(c, gen, str(settings.generation_seconds), n, row))
        ref, fvd = metric_parts(c, met, n)
        parts["reference_metrics"].append(ref)
        parts["fvd_fp"] += [fvd] if fvd else []
        if c.eval.vbench.enabled:
            parts["vbench"].append(Part(reason=VBENCH))
    for c, n in fp_sets.values():
        row = fp_row(gen.data.get("rows", {}))
        parts["generation_fp"].append(generation_part(c, gen, str(settings.generation_seconds), n, row))
        if c.eval.vbench.enabled and c.eval.vbench.score_fp:
            parts["vbench"].append(Part(reason=VBENCH))
    methods = [calib[m] for m in dict.fromkeys(str(c.method.name) for c in cfgs) if m in calib]
    comps = {"calibration": component(parts["calibration"], "job", methods),
             "calibration_other": component(parts["calibration_other"], "job", []),
             "generation_fp": component(parts["generation_fp"], "FP set", [gen]),
             "generation_quantized": component(parts["generation_quantized"], "job", [gen]),
             "reference_metrics": component(parts["reference_metrics"], "job", [met]),
             "fvd_fp": component(parts["fvd_fp"], "job", [met]),
             "vbench": component(parts["vbench"], "video set", [])}
    first = cfgs[0]
    return {"model": str(first.model.name), "jobs": len(cfgs), "swept": swept,
            "command": " ".join([f"python scripts/{settings.entry}.py -m experiment={preset}",
                                 *(shlex.quote(o) for o in settings.job_overrides)]),
            "prompt_files": sorted({str(Path(str(OmegaConf.select(c, "eval.prompts.path"))).resolve()) for c in cfgs}),
            "samples_per_prompt": sorted({int(c.eval.samples_per_prompt) for c in cfgs}),
            "videos": {"fp": sum(n for _, n in fp_sets.values()), "quantized": sum(videos),
                       "per_job": sorted(set(videos))},
            "fp_sets": sorted(fp_sets), "components": comps,
            "total_hours": math.fsum(v["hours"] for v in comps.values() if v["hours"] is not None),
            "lower_bound": any(v["status"] in MISSING for v in comps.values())}


def cell(comp: dict) -> str:
    """A component's Markdown cell: hours, hours of part of its units, "not measured", or where it is included."""
    if comp["status"] == "not run" or comp["status"].startswith("in "):
        return comp["status"]
    if comp["hours"] is None:
        return NOT_MEASURED
    hours = f"{comp['hours']:.2f}"
    if comp["status"] == "partly measured":
        return f"{hours} ({comp['measured_units']} of {comp['units']} {comp['unit']}s; rest {NOT_MEASURED})"
    return hours


def to_markdown(result: dict) -> str:
    """The cost table, its sources and, per table, what each number stands for and what was not measured."""
    s = result["settings"]
    lines = ["# GPU-hours of the paper's tables (one GPU, real models)", "",
             "Every number is computed from the measured JSON named below; \"not measured\" is never counted as 0, and "
             "a total that leaves a component out is marked >= (a lower bound).", "", "Sources:", ""]
    if not result["sources"]["calibration"]:
        lines.append("- calibration: no JSON given")
    for kind, src in result["sources"].items():
        for method, v in (src.items() if kind == "calibration" else [(None, src)]):
            extra = f"; {method}; projection `{s['projection']}`: {PROJECTIONS[s['projection']][1]}" if method else ""
            device = v["device"] or "device not recorded"
            lines.append(f"- {kind}: `{v['path']}` ({device}{extra}); reproduce: `{v['command']}`")
    if s["generation_seconds"] == "generating":
        lines.append("- generation: seconds per video = text + DiT + VAE only (the writers' queue hidden)")
    else:
        lines.append("- generation: seconds per video = wall time of a row until its last mp4 is on disk / its videos")
    header = ["table", "model", "jobs", "videos (FP + quantized)", *COMPONENTS.values(), "total GPU-h"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, t in result["tables"].items():
        total = f"{'>= ' if t['lower_bound'] else ''}{t['total_hours']:.2f}"
        videos = f"{t['videos']['fp']} + {t['videos']['quantized']}"
        cells = [name, t["model"], str(t["jobs"]), videos, *(cell(t["components"][k]) for k in COMPONENTS), total]
        lines.append("| " + " | ".join(cells) + " |")
    shared: dict[str, list[str]] = {}
    for name, t in result["tables"].items():
        for key in t["fp_sets"]:
            shared.setdefault(key, []).append(name)
    for key, names in shared.items():
        if len(names) > 1:
            lines += ["", f"{', '.join(names)} share one FP set ({key}: same model, seed, prompts, samples and encoding; "
                          "eval.share_fp keeps it in eval.fp_cache_dir): in one place it is generated once, so a sum "
                          "over these tables counts its FP generation once."]
    for name, t in result["tables"].items():
        lines += ["", f"**{name}** (`{t['command']}`; swept: "
                  + "; ".join(f"{k} = {', '.join(v)}" for k, v in t["swept"].items()) + ")"]
        for key, comp in t["components"].items():
            for note in comp["notes"]:
                lines.append(f"- {COMPONENTS[key]}: {note}")
            for why, count in comp["not_measured"].items():
                if why:
                    lines.append(f"- {COMPONENTS[key]}, {count} {comp['unit']}(s) {NOT_MEASURED}: {why}")
    return "\n".join(lines) + "\n"


def source_info(src: Source) -> dict:
    return {"path": src.path, "device": src.data.get("device"), "command": src.command}


def cost_table(cfg: DictConfig) -> tuple[dict, Path]:
    """Cost every table of ``cfg.tables``; writes ``<out>/<name>.md`` and ``.json`` (atomically) and returns
    (the result, the Markdown path)."""
    if cfg.projection not in PROJECTIONS:
        raise ValueError(f"projection={cfg.projection!r}: choose one of {', '.join(PROJECTIONS)}")
    if cfg.generation_seconds not in ("wall", "generating"):
        raise ValueError(f"generation_seconds={cfg.generation_seconds!r}: choose wall or generating")
    calib = {m: load_source(v.json, CALIBRATION_SCRIPT, v.command) for m, v in cfg.calibration.items()}
    gen = load_source(cfg.generation.json, GENERATION_SCRIPT, cfg.generation.command)
    met = load_source(cfg.metrics.json, GENERATION_SCRIPT, cfg.metrics.command) if cfg.metrics.json else gen
    sources = {"calibration": calib, "generation": gen, "metrics": met}
    tables = {}
    for preset in cfg.tables:
        swept, cfgs = sweep_jobs(str(cfg.entry), str(preset), list(cfg.job_overrides))
        tables[str(preset)] = table_cost(str(preset), swept, cfgs, sources, cfg)
    result = {"settings": {k: container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k]
                           for k in ("projection", "generation_seconds", "strict", "entry", "job_overrides")},
              "sources": {"calibration": {m: source_info(s) for m, s in calib.items()}, "generation": source_info(gen),
                          "metrics": source_info(met)},
              "tables": tables}
    out = Path(cfg.out)
    atomic_write_json(out / f"{cfg.name}.json", result)
    return result, atomic_write_text(out / f"{cfg.name}.md", to_markdown(result))
