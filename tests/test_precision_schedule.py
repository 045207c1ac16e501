"""Chunk-adaptive precision: the allocator's schedule is the brute-force optimum of the additive costs."""
from __future__ import annotations

import itertools
import random

import pytest

from qarvd.deploy.precision_schedule import ChunkCosts, allocate, schedule_frontier


def _brute(options, budget):
    best = None
    for choice in itertools.product(options, repeat=len(next(iter(options.values())).seconds)):
        s = sum(options[n].seconds[c] for c, n in enumerate(choice))
        q = sum(options[n].quality[c] for c, n in enumerate(choice))
        if s <= budget and (best is None or (q, s) < (best[1], best[0])):
            best = (s, q, choice)
    return best


def test_lossy_attention_goes_to_the_late_chunks():
    # chunk c attends over c + 1 chunks: attention time grows with c; an error costs less the later it happens
    bf16 = ChunkCosts(seconds=[1.0 * (c + 1) for c in range(7)], quality=[0.0] * 7)
    fp8 = ChunkCosts(seconds=[0.6 * (c + 1) for c in range(7)], quality=[8.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.1])
    out = allocate({"cudnn": bf16, "cudnn_fp8": fp8}, [0.73, 0.08, 0.07, 0.05, 0.04, 0.02, 0.01], latency_budget=22.0)
    assert out["schedule"][0] == "cudnn" and out["schedule"][-1] == "cudnn_fp8"
    assert out["predicted_seconds"] <= 22.0 and out["per_chunk"][0]["frame_alpha"] == 0.73
    fastest = allocate({"cudnn": bf16, "cudnn_fp8": fp8}, [0.1] * 7, quality_budget=100.0)
    assert fastest["schedule"] == ["cudnn_fp8"] * 7


@pytest.mark.parametrize("seed", range(5))
def test_frontier_choice_equals_brute_force(seed):
    rng = random.Random(seed)
    options = {n: ChunkCosts([rng.uniform(0.1, 2) for _ in range(5)], [rng.uniform(0, 1) for _ in range(5)])
               for n in ("a", "b", "c")}
    front = schedule_frontier(options)
    assert all(f[0] < g[0] and f[1] > g[1] for f, g in zip(front, front[1:]))  # strictly a Pareto front
    for budget in (2.0, 4.0, 6.0):
        brute = _brute(options, budget)
        if brute is None:
            with pytest.raises(ValueError, match="no schedule fits"):
                allocate(options, [0.2] * 5, latency_budget=budget)
            continue
        out = allocate(options, [0.2] * 5, latency_budget=budget)
        assert out["predicted_quality_cost"] == pytest.approx(brute[1]) and out["predicted_seconds"] <= budget


def test_bad_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        allocate({"a": ChunkCosts([1.0], [0.0])}, [1.0])
    with pytest.raises(ValueError, match="one value per chunk"):
        schedule_frontier({"a": ChunkCosts([1.0, 2.0], [0.0]), "b": ChunkCosts([1.0], [0.0])})


def _files(tmp_path, mse_from, chunk_ref, chunk_fast, seconds):
    """A deploy_quality.json and a bench JSON: the schedule switching at chunk k has per-prompt MSE ``mse_from[k]``
    (k = 0: quantized everywhere, k = len: the bf16 row) times a per-prompt factor; the bench rows' seconds."""
    import json

    factors = [0.5, 1.0, 1.5, 2.0]
    names = ["cudnn_fp8"] + [f"cudnn_fp8@{k}" for k in range(1, len(mse_from) - 1)] + ["default"]
    rows = [{"kernel": "torch_ref", "attention": n, "latent_mse": {"overall": m * 1.25, "per_prompt": [m * f for f in factors]}}
            for n, m in zip(names, mse_from)]
    rows.append({"kernel": "torch_ref", "attention": "cudnn_fp8@0+2", "latent_mse": {"overall": 2.5, "per_prompt": [
        2.0 * f for f in factors]}})  # a chunk set (not a suffix): quantized in chunks 0 and 2
    (tmp_path / "q.json").write_text(json.dumps({"prompts": 4, "rows": rows}))
    bench = [{"row": "ref", "batch": 2, "seconds": sum(chunk_ref), "chunk_seconds": chunk_ref},
             {"row": "fast", "batch": 2, "seconds": sum(chunk_fast), "chunk_seconds": chunk_fast},
             *({"row": f"from{k}", "batch": 2, "seconds": s} for k, s in seconds.items())]
    (tmp_path / "b.json").write_text(json.dumps({"device": "test", "rollout": bench}))


def test_schedule_report_from_switch_measurements(tmp_path):
    import json

    from conftest import compose
    from qarvd.app.schedule_report import schedule_report

    # 3 chunks; FP8 in chunk 0 costs most (3.0 -> 1.5), in chunks 1 and 2 little (1.5 -> 1.2 -> 1.0 = bf16)
    _files(tmp_path, [3.0, 1.5, 1.2, 1.0], [1.0, 2.0, 3.0], [0.9, 1.4, 2.0], {1: 4.6})
    res = schedule_report(compose([f"quality={tmp_path / 'q.json'}", f"latency={tmp_path / 'b.json'}", f"out={tmp_path}",
                                   "reference.latency=ref", "quantized.latency=fast", "~schedules", "+schedules={from1: 1}",
                                   "quality_budget_ratio=1.25"], config_name="schedule_report"))
    assert res["options"]["cudnn_fp8"]["quality_cost"] == pytest.approx([1.875, 0.375, 0.25])  # differences (x 1.25: mean factor)
    assert res["allocation"]["schedule"] == ["default", "default", "cudnn_fp8"]  # +0.2 fits 1.25x; +0.5 would not
    assert res["allocation"]["predicted_seconds"] == pytest.approx(5.0)
    by = {m["schedule"]: m for m in res["measured"]}
    assert by["default"]["mse_ratio"] == 1 and by["cudnn_fp8@1"]["mse_ratio"] == pytest.approx(1.5)
    assert by["cudnn_fp8@2"]["mse_ratio_interval"] == pytest.approx([1.2, 1.2])  # every prompt 1.2x: no spread
    assert by["cudnn_fp8@1"]["speed_gain_recovered"] == pytest.approx((6.0 - 4.6) / (6.0 - 4.3))
    assert by["cudnn_fp8@2"]["within_quality_budget"] == {"point": True, "interval": True}
    assert by["cudnn_fp8@1"]["seconds_measured"] and not by["cudnn_fp8@2"]["seconds_measured"]  # no bench row: predicted
    assert by["cudnn_fp8@2"]["seconds"] == pytest.approx(1.0 + 2.0 + 2.0)  # bf16 chunks 0-1, quantized chunk 2
    assert by["cudnn_fp8@0+2"]["quantized_chunks"] == [0, 2] and by["cudnn_fp8@0+2"]["mse_ratio"] == pytest.approx(2.0)
    assert by["cudnn_fp8@0+2"]["seconds"] == pytest.approx(0.9 + 2.0 + 2.0)
    assert [f["mse_ratio"] for f in res["frontier"]][-1] == 1.0  # the slowest point: bf16 everywhere
    assert json.loads((tmp_path / "schedule_report.json").read_text())["allocation"] == res["allocation"]
    assert res["settings"]["quality_budget_ratio"] == 1.25 and "paths" not in res["settings"]
    assert "| cudnn_fp8@2 |" in (tmp_path / "schedule_report.md").read_text()
    assert (tmp_path / "schedule_report.png").read_bytes()[:4] == b"\x89PNG"
    extra = json.loads((tmp_path / "q.json").read_text())
    extra["rows"] = [dict(r, attention="cudnn_fp8@1+2") if r["attention"] == "cudnn_fp8@2" else r for r in extra["rows"]]
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    joined = schedule_report(compose([f"quality={tmp_path / 'q.json'}", f"latency={tmp_path / 'b.json'}", f"out={tmp_path}",
                                      f"extra_quality=[{tmp_path / 'extra.json'}]", "reference.latency=ref",
                                      "quantized.latency=fast", "~schedules", "+schedules={}"], config_name="schedule_report"))
    assert {m["schedule"] for m in joined["measured"]} >= {"cudnn_fp8@1+2", "cudnn_fp8@0+2"}
    extra["rows"][-2]["latent_mse"]["per_prompt"][0] *= 2  # the reference row (last but one) of another run
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    with pytest.raises(ValueError, match="cannot be paired"):
        schedule_report(compose([f"quality={tmp_path / 'q.json'}", f"latency={tmp_path / 'b.json'}", f"out={tmp_path}",
                                 f"extra_quality=[{tmp_path / 'extra.json'}]", "reference.latency=ref",
                                 "quantized.latency=fast", "~schedules", "+schedules={}"], config_name="schedule_report"))
    with pytest.raises(ValueError, match="no attention row 'cudnn_fp8@1'"):
        _files(tmp_path, [3.0, 1.0], [1.0, 2.0, 3.0], [0.9, 1.4, 2.0], {})
        schedule_report(compose([f"quality={tmp_path / 'q.json'}", f"latency={tmp_path / 'b.json'}", f"out={tmp_path}",
                                 "reference.latency=ref", "quantized.latency=fast"], config_name="schedule_report"))


def test_deploy_quality_attention_rows_name_chunk_sets():
    from qarvd.app.deploy_quality import attention_choice

    assert attention_choice("cudnn_fp8@2", 7) == ("cudnn_fp8", (2, 3, 4, 5, 6))  # from chunk 2 on
    assert attention_choice("int8_sage@6+1+5", 7) == ("int8_sage", (1, 5, 6))  # a set, sorted
    assert attention_choice("cudnn_fp8@0", 7) == ("cudnn_fp8", None)  # every chunk: the uniform attention
    assert attention_choice("cudnn_fp8@3") == ("cudnn_fp8", None)  # syntax only, before the rollout is known
    for bad, message in (("cudnn_fp8@7", "chunks 0..6"), ("default@2", "unknown"), ("cudnn_fp8@1+x", "unknown")):
        with pytest.raises(ValueError, match=message):
            attention_choice(bad, 7)
