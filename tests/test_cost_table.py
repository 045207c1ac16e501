"""The cost table of the paper's tables from synthetic benchmark JSON files: the sweeps' job counts come from the
presets, the hours from the JSONs' numbers, and a component without a measurement is "not measured", not 0."""
from __future__ import annotations

import copy
import json
import math

import pytest

from conftest import compose

SF_ARCH = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, freq_dim=256, text_dim=4096, text_len=512,
               in_dim=16, out_dim=16, patch_size=[1, 2, 2], eps=1e-6, qk_norm=True, cross_attn_norm=True)
LOSSLESS = dict(name="lossless", fps=16, codec="libx264", crf=0, pix_fmt="yuv444p", threads=1, to_uint8="round")
PROMPTS = 10  # lines of the synthetic evaluation prompt file
CALIBRATION = {"device": "H100", "overrides": ["blocks=3"], "arch": {**SF_ARCH, "rope_theta": 10000.0}, "bits": "w4a8",
               "latent_frame": [16, 60, 104], "forwards_per_prompt": 35, "iters": 2000, "prompts": 1,
               "dual_scale_layers": 300, "projection": {"probe_fp32_hours": 2.0, "probe_tf32_hours": 1.0}}
GENERATION = {
    "device": "H100", "overrides": ["videos=4", "metrics=true"], "batch": 1, "writers": 2, "encoding": LOSSLESS,
    "video": {"latent": [21, 16, 60, 104], "frames": 81},
    "metric_stage": {"fvd_fp": {"backbone": "i3d", "timed": False, "reason": "not measured: no I3D file"},
                     "lpips_fp": "random AlexNet weights"},
    "rows": {
        "eager": {"kernel": None, "w_bits": None, "videos": 4, "seconds": 20.0, "generating_seconds": 16.0},
        "fake": {"kernel": None, "w_bits": 4, "a_bits": 8, "videos": 4, "seconds": 40.0, "generating_seconds": 30.0,
                 "metric_stage": {"pairs": 4, "seconds": 8.0, "timed": ["lpips_fp", "psnr_fp", "ssim_fp"]}},
        "w8a8": {"kernel": "cutlass_int8", "w_bits": 8, "videos": 4, "seconds": 12.0, "generating_seconds": 10.0}}}


def cost(tmp_path, generation: dict, tables: list[str]) -> tuple[dict, str]:
    from qarvd.bench.cost_table import cost_table

    (tmp_path / "prompts" / "vbench").mkdir(parents=True, exist_ok=True)
    for name in ("vbench/all_dimension_extended.txt", "vbench/all_dimension.txt"):
        (tmp_path / "prompts" / name).write_text("".join(f"prompt {i}\n" for i in range(PROMPTS)))
    (tmp_path / "calib.json").write_text(json.dumps(CALIBRATION))
    (tmp_path / "e2e.json").write_text(json.dumps(generation))
    cfg = compose([f"out={tmp_path / 'out'}", f"tables=[{','.join(tables)}]",
                   f'job_overrides=["paths.prompts_dir={tmp_path / "prompts"}"]',
                   f"calibration.qarvd.json={tmp_path / 'calib.json'}", f"generation.json={tmp_path / 'e2e.json'}"],
                  config_name="cost_table")
    result, md = cost_table(cfg)
    assert json.loads((tmp_path / "out" / "cost_table.json").read_text()) == json.loads(json.dumps(result))
    return result, md.read_text()


def row(md: str, table: str) -> dict:
    """The Markdown row of a table, by column header."""
    lines = [l for l in md.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    (cells,) = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:] if l.startswith(f"| {table} ")]
    return dict(zip(header, cells))


@pytest.fixture(scope="module")
def all_tables(tmp_path_factory):
    return cost(tmp_path_factory.mktemp("cost"), GENERATION, [f"table{i}" for i in range(1, 6)])


def test_job_counts_models_and_videos_come_from_the_presets(all_tables):
    result, md = all_tables
    tables = result["tables"]
    assert {k: t["jobs"] for k, t in tables.items()} == {"table1": 18, "table2": 18, "table3": 8, "table4": 4, "table5": 5}
    assert tables["table1"]["model"] == "causal_forcing_chunkwise" and tables["table2"]["model"] == "self_forcing"
    assert tables["table5"]["swept"]["method.outlier.outlier_ratio"] == ["1.1", "1.15", "1.2", "1.25", "1.3"]
    assert all(t["videos"] == {"fp": PROMPTS, "quantized": PROMPTS * t["jobs"], "per_job": [PROMPTS]}
               for t in tables.values())  # one shared FP set per table (eval.share_fp)
    assert "table2, table3, table4, table5 share one FP set" in md
    # Q-ARVD is the only method with a calibration JSON: 3 of table 2's 18 jobs are measured
    calib = tables["table2"]["components"]["calibration"]
    assert calib["status"] == "partly measured" and calib["measured_units"] == 3 and math.isclose(calib["hours"], 6.0)
    assert row(md, "table2")["calibration"] == "6.00 (3 of 18 jobs; rest not measured)"
    assert tables["table2"]["components"]["vbench"]["status"] == "not measured"  # 18 quantized sets + the FP set
    assert tables["table2"]["components"]["vbench"]["units"] == 19 and row(md, "table2")["VBench"] == "not measured"
    assert row(md, "table3")["VBench"] == "not run"  # Tables 3-5 report no VBench


def test_arithmetic_of_table4(all_tables):
    result, md = all_tables
    t = result["tables"]["table4"]
    c = t["components"]
    hours = {"calibration": 4 * 2.0,  # 4 jobs x the fp32 projection
             "generation_fp": PROMPTS * 20.0 / 4 / 3600,  # one FP set, eager row: 20 s for 4 videos
             "generation_quantized": 4 * PROMPTS * 40.0 / 4 / 3600,  # fake-quant row: 40 s for 4 videos
             "reference_metrics": 4 * PROMPTS * 8.0 / 4 / 3600}  # 8 s for 4 pairs
    for key, h in hours.items():
        assert c[key]["status"] == "measured" and math.isclose(c[key]["hours"], h), key
    assert c["fvd_fp"]["status"] == "not measured" and "no I3D file" in next(iter(c["fvd_fp"]["not_measured"]))
    assert c["calibration_other"]["status"] == "not measured" and c["vbench"]["status"] == "not run"
    assert math.isclose(t["total_hours"], sum(hours.values())) and t["lower_bound"]
    assert row(md, "table4")["total GPU-h"] == f">= {sum(hours.values()):.2f}"
    command = c["generation_quantized"]["sources"][0]["command"]  # from the JSON's overrides
    assert command == "python scripts/bench_generation_e2e.py videos=4 metrics=true"
    assert c["calibration"]["sources"][0]["command"] == "python scripts/bench_calibration_batched.py blocks=3"


def test_a_missing_component_is_not_measured_and_left_out_of_the_total(tmp_path):
    gen = copy.deepcopy(GENERATION)
    del gen["rows"]["fake"]  # no fake-quant row: quantized videos and (with it) the metric stage are not measured
    result, md = cost(tmp_path, gen, ["table4"])
    t = result["tables"]["table4"]
    c = t["components"]
    assert c["generation_quantized"]["status"] == "not measured" and c["generation_quantized"]["hours"] is None
    assert c["reference_metrics"]["status"] == "not measured"
    cells = row(md, "table4")
    assert cells["quantized generation"] == "not measured" and cells["PSNR/SSIM/LPIPS-FP"] == "not measured"
    expected = 4 * 2.0 + PROMPTS * 20.0 / 4 / 3600
    assert math.isclose(t["total_hours"], expected) and cells["total GPU-h"] == f">= {expected:.2f}"
    assert "quantized generation, 4 job(s) not measured: no fake-quant row" in md
