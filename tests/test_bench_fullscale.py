"""CPU smoke runs of the full-scale benchmarks (shrunken dims): the calibration profile with the lock-step engine and
the end-to-end generation benchmark; the GPU runs are the same functions at Wan2.1-1.3B dims."""
from __future__ import annotations

import json

from conftest import compose


def test_calibration_profile_times_blocks_end_to_end_and_projects(tmp_path):
    from qarvd.bench.calibration_batched import profile_batched_calibration

    cfg = compose([f"out={tmp_path}", "device=cpu", "small=true", "calib.iters=4", "probe_iters=2", "probe_modes=[fp32]",
                   "outlier_columns=32", "activation_init=fixed", "blocks=2"], config_name="bench/calibration_batched")
    res = json.loads(profile_batched_calibration(cfg).read_text())
    assert res["dual_scale_layers"] == 4 * 10 and len(res["units"]) == 2 * 8  # cross k/v skipped, 2 timed blocks
    assert {u.split(".")[1] for u in res["units"]} == {"0", "1"}
    assert all(u["group_size"] == 16 and not u["compiled"] for u in res["units"].values())  # one lock-step group
    p = res["projection"]
    assert p["activation_init_seconds"] == cfg.cited_activation_init_seconds
    assert p["full_calibration_seconds"] > res["seconds"]["reconstruction_timed_blocks"] * 4 / 2
    assert res["probe"]["fp32"]["seconds_per_block_iter"] > 0 and p["probe_fp32_hours"] > 0
    assert res["peak_rss_gb"] > 0 and "gpu_peak_gb_reconstruction" not in res
