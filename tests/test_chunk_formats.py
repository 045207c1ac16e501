"""Per-chunk linear formats in fake quant (qarvd.quant.chunk_formats; deploy_quality's `formats` rows): a chunk runs
exactly the layers of the format the schedule gives it, on the debug=tiny model (two chunks)."""
from __future__ import annotations

import copy
import json

import pytest


def test_format_rows_run_each_chunk_in_its_scheduled_format(tmp_path):
    from conftest import compose
    from qarvd.app.calibrate import train_quant
    from qarvd.app.deploy_quality import deploy_quality
    from quant_helpers import tiny_cfg

    w8, w4 = tmp_path / "w8a8", tmp_path / "w4a8"
    train_quant(tiny_cfg("method=minmax", "bits=w8a8"), w8)
    train_quant(tiny_cfg("method=minmax", "bits=w4a8"), w4)
    common = ["kernels=[]", "attention=[]", "prompts_per_batch=2"]
    own4 = deploy_quality(compose([f"run='{w4}'", *common], "deploy_quality"), tmp_path / "own4")["fake_quant"]
    res = deploy_quality(compose([f"run='{w8}'", *common, f"+format_runs={{w4a8: '{w4}'}}",
                                  "formats=[w4a8,w4a8@1]"], "deploy_quality"), tmp_path / "mixed")
    own8 = res["fake_quant"]
    uniform, late = res["format_rows"]
    assert (uniform["alternate_chunks"], late["alternate_chunks"]) == ([0, 1], [1])
    assert uniform["latent_mse"]["per_prompt"] == own4["per_prompt"]  # every chunk: the W4A8 run's rollout, exactly
    assert uniform["vs_fake_quant"] == pytest.approx(own4["overall"] / own8["overall"], rel=1e-12)
    assert late["latent_mse"]["per_chunk"][0] == own8["per_chunk"][0]  # chunk 0 (and its cache refresh) in W8A8
    assert late["latent_mse"]["per_chunk"][1] not in (own8["per_chunk"][1], own4["per_chunk"][1])  # a mixed chunk 1
    lo, hi = late["vs_fake_quant_interval"]
    assert lo <= late["vs_fake_quant"] <= hi
    assert json.loads((tmp_path / "mixed" / "deploy_quality.json").read_text())["format_rows"][1]["formats"] == "w4a8@1"


def test_a_schedule_needs_both_formats_of_every_layer(tiny_model):
    from qarvd.quant.api import QuantConfig, quantize_
    from qarvd.quant.chunk_formats import ChunkFormatLinear, chunk_formats_

    a = quantize_(copy.deepcopy(tiny_model), QuantConfig(w_bits=8, a_bits=8), filter_fn=lambda m, n: n.startswith("blocks."))
    b = quantize_(copy.deepcopy(tiny_model), QuantConfig(w_bits=4, a_bits=8), filter_fn=lambda m, n: n.startswith("blocks.0."))
    with pytest.raises(ValueError, match="quantize different layers"):
        chunk_formats_(a, b, [1])
    b = quantize_(copy.deepcopy(tiny_model), QuantConfig(w_bits=4, a_bits=8), filter_fn=lambda m, n: n.startswith("blocks."))
    chunk_formats_(a, b, [2, 1])
    wrapped = [m for m in a.modules() if isinstance(m, ChunkFormatLinear)]
    assert wrapped and all(m.chunks == {1, 2} for m in wrapped)
