"""CPU smoke runs of the full-scale benchmarks (shrunken dims): the calibration profile with the lock-step engine and
the end-to-end generation benchmark; the GPU runs are the same functions at Wan2.1-1.3B dims."""
from __future__ import annotations

import json

from conftest import compose


def test_calibration_profile_times_blocks_end_to_end_and_projects(tmp_path):
    from qarvd.bench.calibration_batched import profile_batched_calibration

    cfg = compose([f"out={tmp_path}", "device=cpu", "small=true", "calib.iters=4", "probe_iters=2", "probe_modes=[fp32,bf16_compile]",
                   "outlier_columns=32", "activation_init=fixed", "blocks=2"], config_name="bench/calibration_batched")
    res = json.loads(profile_batched_calibration(cfg).read_text())
    assert res["dual_scale_layers"] == 4 * 10 and len(res["units"]) == 2 * 8  # cross k/v skipped, 2 timed blocks
    assert {u.split(".")[1] for u in res["units"]} == {"0", "1"}
    assert all(u["group_size"] == 16 and not u["compiled"] for u in res["units"].values())  # one lock-step group
    p = res["projection"]
    assert p["activation_init_seconds"] == cfg.cited_activation_init_seconds
    assert p["full_calibration_seconds"] > res["seconds"]["reconstruction_timed_blocks"] * 4 / 2
    assert res["probe"]["fp32"]["seconds_per_block_iter"] > 0 and p["probe_fp32_hours"] > 0
    assert res["probe"]["bf16_compile"]["bf16"] and p["probe_bf16_compile_hours"] > 0  # compile is GPU-only: bf16 alone
    assert res["peak_rss_gb"] > 0 and "gpu_peak_gb_reconstruction" not in res


def test_probe_projection_takes_the_release_iteration_count_from_a_short_run():
    """A run timed at calib.iters=100 projects its probes at projection_iters (2000): per block one capture pass plus
    2000 x the block-iteration rate, times the blocks, plus inits and the compile once."""
    from qarvd.bench.calibration_batched import projection

    res = {"seconds": {"weight_init_all_layers": 2.0, "activation_init": 58.0, "capture_pass_one_block": 8.0},
           "arch": {"num_layers": 30}, "probe": {"bf16_compile": {"seconds_per_block_iter": 0.044, "compile_seconds": 90.0},
                                                 "bf16_compile_first": {"seconds_per_block_iter": 9.0}}}
    cfg = compose(["calib.iters=100", "projection_iters=2000"], config_name="bench/calibration_batched")
    p = projection(res, cfg)
    assert p["probe_projection_iters"] == 2000 and "probe_bf16_compile_first_hours" not in p
    assert abs(p["probe_bf16_compile_hours"] * 3600 - (60.0 + 30 * (8.0 + 0.044 * 2000) + 90.0)) < 1e-6
    assert projection(res, compose(["calib.iters=100"], config_name="bench/calibration_batched"))["probe_projection_iters"] == 100


SMALL_MODEL = ["model.arch.dim=64", "model.arch.ffn_dim=128", "model.arch.num_heads=2", "model.arch.num_layers=2",
               "model.arch.text_len=8", "model.arch.text_dim=32", "model.text_encoder.arch.vocab_size=256",
               "model.text_encoder.arch.d_ff=64", "model.text_encoder.arch.num_heads=2",
               "model.text_encoder.arch.num_layers=1", "model.text_encoder.arch.d_kv=16", "model.vae.arch.base_dim=8",
               "model.vae.arch.num_res_blocks=1", "model.latent.height=4", "model.latent.width=6",
               "model.rollout.num_frames=6"]
CPU_ROWS = ["rows.bf16.kernel=null", "rows.w8a8.kernel=torch_ref", "rows.w8a8.graphs=false", "rows.w8a8.attention=auto",
            "+rows.fake={kernel:null,w_bits:4,a_bits:8,outliers:0,attention:auto,graphs:false}"]


def test_generation_benchmark_writes_every_row_end_to_end(tmp_path):
    from qarvd.bench.generation_e2e import bench_generation

    cfg = compose([f"out={tmp_path}", "device=cpu", "videos=2", "batch=2", "writers=2", "metrics=true",
                   f"eval.fvd.backbones.i3d.path={tmp_path / 'absent_i3d.pt'}", *SMALL_MODEL, *CPU_ROWS],
                  config_name="bench/generation_e2e")
    res = json.loads(bench_generation(cfg).read_text())
    assert set(res["rows"]) == {"bf16", "w8a8", "fake"} and set(res["fps_ratio"]) == {"w8a8/bf16", "fake/bf16"}
    for row in res["rows"].values():
        assert row["videos"] == 2 and row["frames_per_video"] == 21  # 6 latent frames -> 1 + 4 x 5 video frames
        assert 0 < row["generating_seconds"] <= row["seconds"] and row["fps"] == 2 * 21 / row["seconds"]
        assert row["write_seconds_per_video"] > 0 and row["writers_fps"] > 0
    assert res["rows"]["w8a8"]["w_bits"] == 8 and res["encoding"]["name"] == "lossless"
    assert res["model"]["arch"]["dim"] == 64 and res["model"]["rollout"]["num_frames"] == 6
    # the evaluation's metric stage, first row's videos against each other row's: seconds per pair
    assert "metric_stage" not in res["rows"]["bf16"]
    for name in ("w8a8", "fake"):
        m = res["rows"][name]["metric_stage"]
        assert m["fp_row"] == "bf16" and m["pairs"] == 2 and m["seconds"] > 0 and m["seconds_per_pair"] > 0
        assert m["timed"] == ["lpips_fp", "psnr_fp", "ssim_fp"] and m["unavailable"] == {}
    stage = res["metric_stage"]
    assert "random AlexNet" in stage["lpips_fp"] and "not measured" in stage["vbench"]
    assert stage["fvd_fp"]["backbone"] == "i3d" and not stage["fvd_fp"]["timed"]  # no I3D file: nothing in its place
    assert "not measured" in stage["fvd_fp"]["reason"] and "absent_i3d.pt" in stage["fvd_fp"]["reason"]
    vae = res["vae_bf16_vs_fp32"]
    assert vae["video_shape"] == [21, 3, 32, 48] and 0 < vae["mean_abs"] < 0.05
