"""qarvd.bench: the latency rows come from conf/kernel choices and reproduce the rows that used to be built by hand;
every benchmark config composes; bad rows fail before anything runs, naming the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qarvd.bench.report import settings
from qarvd.bench.rows import FASTEST, backend, row_specs
from qarvd.deploy.backends import Bf16Backend, CutlassInt8Backend, Fp8Backend, TritonInt8Backend

from conftest import CONF_DIR, compose

# the rows scripts/bench_latency.py ran by default before its rows became config (benchmarks/results/*.json use them)
OLD_ROWS = ["bf16_eager_flash", "bf16_eager_cudnn", "bf16_fused", "w8a8", "w8a8_asymw", "w8a8_flash", "w8a8_dual_exact",
            "w8a8_dual_int_ratio", "w4a8", "fp8", "torchao_int8", "bf16_fused_graph", "w8a8_graph", "w4a8_graph",
            "fp8_graph", "bf16_fused_fp8attn_graph", "w8a8_fp8attn_graph", "fp8_fp8attn_graph", "w8a8_cutlass_graph",
            "w8a8_cutlass_fp8attn_graph", "w8a8_cutlass_unfused_graph", "w8a8_dual_exact_graph",
            "w8a8_dual_int_ratio_graph"]
SIZE_ROWS = ("w8a8", "w8a8_asymw", "w4a8", "w8a8_dual_exact", "fp8")
# rows old commands named beyond the default list; the issue-22 rows after them are checked by their own test
OLD_CATALOGUE = OLD_ROWS + ["w8a8_fp8attn", "w8a8_cutlass", "bf16_fused_fp8attn", "fp8_fp8attn", "w8a8_cutlass_fp8attn"]


def latency_cfg(*overrides):
    return compose(["out=/tmp/unused", *overrides], config_name="bench/latency")


def old_row(name: str, asym_w8: bool = False) -> dict:
    """What the hand-written builder made of a row name: its backend settings and weight format."""
    graphs = name.endswith("_graph")
    base = name.removesuffix("_graph")
    fp8attn = base.endswith("_fp8attn")
    base = base.removesuffix("_fp8attn")
    out = dict(graphs=graphs, attention="cudnn_fp8" if fp8attn else "flash" if base.endswith("_flash") else FASTEST)
    if base.startswith("bf16_eager"):
        return dict(build="eager", attention=base.rsplit("_", 1)[1])
    if base == "torchao_int8":
        return dict(build="torchao_int8", attention=FASTEST)
    if base == "bf16_fused":
        return dict(out, cls=Bf16Backend)
    if base == "fp8":
        return dict(out, cls=Fp8Backend, asym_w=True)
    asym = base == "w8a8_asymw" or asym_w8 or base == "w4a8"
    out.update(dual_mode="int_ratio" if base.endswith("int_ratio") else "exact", asym_w=asym,
               weights="artifact" if asym else "symmetric", w_bits=4 if base == "w4a8" else 8,
               outliers=128 if "dual" in base else 0)
    if base.startswith("w8a8_cutlass"):
        return dict(out, cls=CutlassInt8Backend, fuse_epilogues="unfused" not in base)
    return dict(out, cls=TritonInt8Backend)


@pytest.mark.parametrize("asym_w8", [False, True])
def test_every_row_reproduces_the_hand_built_one(asym_w8):
    cfg = latency_cfg(*(["w8_weights=artifact"] if asym_w8 else []))
    rows = row_specs(cfg)
    assert list(cfg.rows) == OLD_ROWS and "w8a8_fp8attn" in rows and "w8a8_cutlass" in rows  # profile rows
    for name in OLD_CATALOGUE:
        row, old = rows[name], old_row(name, asym_w8)
        assert row.attention == old["attention"], name
        if "cls" not in old:
            assert row.build == old["build"] and row.kernel is None and not row.graphs, name
            continue
        be = backend(cfg, row.kernel, **row.set, attention="auto", graphs=row.graphs)
        assert type(be) is old["cls"] and be.graphs == old["graphs"] and be.fused, name
        if "asym_w" in old:  # the min-max format: zero points exactly when the backend deploys the artifact's weights
            assert (be.weights == "artifact") == old["asym_w"], name
        if old["cls"] in (TritonInt8Backend, CutlassInt8Backend):
            assert (be.dual_mode, be.weights, row.w_bits, row.outliers) == \
                (old["dual_mode"], old["weights"], old["w_bits"], old["outliers"]), name
        if old["cls"] is CutlassInt8Backend:
            assert be.fuse_epilogues == old["fuse_epilogues"], name


def test_twins_sizes_and_baselines_follow_the_old_name_rules():
    rows = row_specs(latency_cfg())
    for name in OLD_CATALOGUE:
        row = rows[name]
        twin = name.replace("_unfused", "") if "_unfused" in name else name.removesuffix("_graph")
        assert row.twin == (twin if twin != name else None), name
        fmt = name.removesuffix("_graph")
        assert row.sizes == (fmt if fmt in SIZE_ROWS else None), name
        assert row.bf16_baseline == (name.startswith("bf16_") and "_fp8attn" not in name), name


def test_issue22_rows():
    """FA4, INT8 attention, torch.compile, the split/scatter dual-scale ablation and the Eq. 12 layer subset as rows."""
    cfg = latency_cfg()
    rows = row_specs(cfg)
    assert rows["bf16_compiled"].build == "compiled" and rows["bf16_compiled"].bf16_baseline
    assert rows["bf16_fused_fa4_graph"].attention == "fa4" and rows["bf16_fused_fa4_graph"].bf16_baseline
    # cuDNN pinned beside the FA4 rows: `fastest` picked FA4 for every unpinned row on the H100
    assert rows["bf16_fused_cudnn_graph"].attention == "cudnn" and rows["bf16_fused_cudnn_graph"].bf16_baseline
    assert rows["w8a8_cutlass_cudnn_graph"].attention == "cudnn" and rows["w8a8_cutlass_cudnn_graph"].graphs
    assert rows["w8a8_cutlass_int8attn_graph"].attention == "int8_sage"
    assert rows["w8a8_cutlass_int8attn_graph"].twin == "w8a8_cutlass_int8attn"
    split = backend(cfg, "triton_int8", **rows["w8a8_dual_int_ratio_graph"].set, attention="auto", graphs=True)
    scatter = backend(cfg, "triton_int8", **rows["w8a8_dual_int_ratio_scatter_graph"].set, attention="auto", graphs=True)
    assert (split.dual_layout, scatter.dual_layout) == ("split", "scatter")
    eq12 = rows["w8a8_cutlass_dual_int_ratio_eq12_graph"]
    assert eq12.outliers == 128 and "ffn.0" not in eq12.outlier_roles and "ffn.2" in eq12.outlier_roles
    assert rows["w8a8_cutlass_dual_int_ratio_graph"].outlier_roles is None  # every block linear: the worst case
    # CUTLASS defaults to the head layout; the split rows name theirs, so a head row and its split twin differ only there
    assert backend(cfg, "cutlass_int8", attention="auto").dual_layout == "head"
    for name in ("w8a8_cutlass_dual_int_ratio_eq12_head_graph", "w8a8_cutlass_dual_int_ratio_head_graph"):
        head, twin = rows[name], rows[rows[name].twin]
        assert (head.set["dual_layout"], twin.set["dual_layout"]) == ("head", "split")
        assert {k: v for k, v in head.set.items() if k != "dual_layout"} == \
            {k: v for k, v in twin.set.items() if k != "dual_layout"} and head.outlier_roles == twin.outlier_roles


@pytest.mark.parametrize("override, message", [
    ("+row_specs.x={kernel:nope}", "row_specs.x.kernel='nope' is not composed"),
    ("+row_specs.x={kernel:fp8,set:{dual_mode:exact}}", "row_specs.x.set: ['dual_mode'] are not keys of kernels.fp8"),
    ("+row_specs.x={kernel:bf16,set:{graphs:true}}", "attention and graphs are keys of the row itself"),
    ("+row_specs.x={build:eager,graphs:true}", "build=eager makes no kernel backend"),
    ("+row_specs.x={build:nope}", "row_specs.x.build='nope'; choose from"),
    ("+row_specs.x={kernel:bf16,tiwn:bf16_fused}", "row_specs.x: unknown keys ['tiwn']"),
    ("+row_specs.x={kernel:bf16,twin:nope}", "row_specs.x.twin='nope' is not a row"),
])
def test_a_bad_row_fails_naming_its_key(override, message):
    with pytest.raises(ValueError) as err:
        row_specs(latency_cfg(override))
    assert message in str(err.value)


def test_unknown_rows_and_sections_fail_before_anything_runs(tmp_path):
    from qarvd.bench.latency import bench_latency

    with pytest.raises(ValueError, match=r"rows: unknown rows \['w9a9'\]"):
        bench_latency(latency_cfg(f"out={tmp_path}", "rows=[w8a8,w9a9]"))
    with pytest.raises(ValueError, match=r"sections: unknown \['rolout'\]"):
        bench_latency(latency_cfg(f"out={tmp_path}", "sections=[rolout]"))
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(CONF_DIR) / "bench").glob("*.yaml")))
def test_every_bench_config_composes_and_resolves(name):
    from omegaconf import OmegaConf

    def own(file_node, node):  # the values this file sets (a group it overrides keeps its other keys unresolved)
        if isinstance(file_node, dict):
            return {k: own(file_node[k], node[k]) for k in file_node if k != "defaults"}
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

    cfg = compose(["out=/tmp/unused"], config_name=f"bench/{name}")
    resolved = own(OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "bench" / f"{name}.yaml")), cfg)
    assert resolved["out"] == "/tmp/unused" and resolved["task_name"] and "paths" not in resolved
    json.dumps(resolved)  # plain JSON, as the records store settings
    if name == "latency":
        assert settings(cfg)["row_specs"]["w8a8"]["set"]["weights"] == "symmetric"  # interpolations resolved


@pytest.mark.slow  # a CPU smoke run of the latency benchmark (~40 s on 2 cores with the Triton interpreter)
def test_latency_rollout_rows_on_the_tiny_arch(tmp_path):
    from qarvd.bench.latency import bench_latency

    path = bench_latency(latency_cfg(f"out={tmp_path}", "name=b", "device=cpu", "arch=tiny", "sections=[rollout]",
                                     "rows=[bf16_eager_flash,bf16_fused,w8a8,w8a8_graph]", "batches=[1]", "repeats=1",
                                     "frames=3", "steps=1", "height=4", "width=4"))
    res = json.loads(path.read_text())
    assert [(e["row"], e["batch"]) for e in res["rollout"]] == [
        ("bf16_eager_flash", 1), ("bf16_fused", 1), ("w8a8", 1), ("w8a8_graph", 1)]
    by = {e["row"]: e for e in res["rollout"]}
    assert all("error" not in e and e["finite"] for e in by.values())
    assert by["bf16_eager_flash"]["attention"] == "auto"  # eager off CUDA: PyTorch's own choice
    assert by["w8a8_graph"]["twin_row"] == "w8a8" and by["w8a8_graph"]["equal_to_twin_row"]
    assert by["bf16_fused"]["latent_rel_diff_to_bf16_fused"] == 0 < by["w8a8"]["latent_rel_diff_to_bf16_fused"] < 0.1
    assert set(res["sizes"]) == {"params", "bf16", "w8a8"} and 1 < res["sizes"]["w8a8"]["x_smaller_than_bf16"] < 2
    r = res["rollout_ratios"]["w8a8@b1"]
    assert r["strongest_bf16"] in ("bf16_eager_flash", "bf16_fused")
    assert r["speedup_vs_bf16_flash"] == pytest.approx(by["bf16_eager_flash"]["seconds"] / by["w8a8"]["seconds"])
    assert "| w8a8_graph | 1 | auto |" in (tmp_path / "b.md").read_text()


def test_bench_environment_names_the_code_that_ran():
    import torch
    from qarvd.app.provenance import code_identity
    from qarvd.bench.report import environment

    env = environment(torch.device("cpu"), latency_cfg())
    ident = code_identity()
    assert {k: env[k] for k in ident} == ident and len(env["source_sha256"]) == 64
    assert env["device"] == "cpu" and env["args"]["sections"]


def test_attention_section_calls_each_backend_on_the_cache_layout():
    """The attention bench times SDPA backends on [B, L, H, D] through transposes and fa4 on the layout itself; both
    compute the same attention (fa4 through its package: without it, the call names what to install)."""
    import torch
    import torch.nn.functional as F
    from qarvd.bench.attention import attention_call

    q, kv = torch.randn(2, 6, 3, 8), torch.randn(2, 10, 3, 8)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), kv.transpose(1, 2), kv.transpose(1, 2))
    torch.testing.assert_close(attention_call("math", q, kv)(), ref)
    with pytest.raises(ImportError, match="flash-attn-4"):
        attention_call("fa4", q, kv)()


@pytest.mark.parametrize("fa2_api", [False, True])
def test_peer_takes_a_flash_attn_4_namespace_for_no_fa2(fa2_api):
    """The public code's `import flash_attn` also finds FlashAttention-4's namespace (no FA2 API): the peer section
    must then route its attention to SDPA as the public code does without FA2, and leave a real FA2 alone."""
    import types

    from qarvd.bench.peer import route_attention

    flash = types.SimpleNamespace(**({"flash_attn_varlen_func": object()} if fa2_api else {}))
    wa = types.SimpleNamespace(FLASH_ATTN_2_AVAILABLE=True, FLASH_ATTN_3_AVAILABLE=False, flash_attn=flash,
                               attention=lambda q, k, v: ("sdpa", q, k, v))
    original = object()
    wm = types.SimpleNamespace(flash_attention=original)
    route_attention(wa, wm)
    assert wa.FLASH_ATTN_2_AVAILABLE is fa2_api
    if fa2_api:
        assert wm.flash_attention is original
    else:
        assert wm.flash_attention(1, 2, 3, k_lens=None, causal=False) == ("sdpa", 1, 2, 3)
