"""The offline sm_90 compile check (qarvd.bench.compile_sm90), run in fresh processes without the Triton interpreter.

The conftest turns the interpreter on in this process and Triton fixes the mode when a kernel is decorated, so the
check runs in subprocesses, each with an empty Triton cache so that every kernel really goes through the compiler.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SMEM_LIMIT = 232448  # bytes of shared memory per block on sm_90 (227 KB)
INT_LAUNCHES = ["norm1_mod->qkv_int8", "gemm_qkv_store", "attn->o_int8", "attn_fp8codes->o_int8",
                "gemm_o_residual_gate", "norm3->cross_q_int8", "gemm_cross_q_store", "gemm_cross_o_residual",
                "norm2_mod->ffn0_int8", "gemm_ffn0_gelu_quant", "gemm_ffn2_residual_gate", "gemm_ffn0_store_module",
                "gemm_ffn2_store_module"]
EXPECTED = ([f"{fam}/{name}" for fam in ("w8", "w8_asymw", "w8_dual_exact", "w8_dual_int_ratio", "w4")
             for name in INT_LAUNCHES]
            + ["w8/cutlass_ffn0_out->ffn2_int8"]
            + [f"bf16/{n}" for n in ("norm1_mod->bf16", "norm3->bf16", "norm2_mod->bf16", "attn_fp8codes->bf16")]
            + [f"fp8/{n}" for n in ("norm1_mod->fp8", "attn->fp8", "attn_fp8codes->fp8", "norm3->fp8",
                                    "norm2_mod->fp8", "ffn0_out_gelu->fp8")]
            + [f"glue/{n}" for n in ("qk_norm_rope_self_bf16_cache", "qk_norm_rope_self_fp8_cache",
                                     "qk_norm_rope_cross_q", "residual_gate", "residual")]
            + ["attn_fp8/attend_first_chunk", "attn_fp8/attend_full_cache"])


def _run(args: list, tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# ~30 s on 2 CPU cores (83 launches, ptxas included): part of every run, so CI compiles what the GPU would
def test_every_rollout_kernel_compiles_for_sm90(tmp_path):
    res = _run(["scripts/compile_sm90.py", "jobs=2", f"out={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path,
               timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert f"results: {tmp_path / 'compile_sm90.json'}" in res.stdout
    rows = {r["name"]: r for r in json.loads((tmp_path / "compile_sm90.json").read_text())}
    assert sorted(rows) == sorted(EXPECTED)
    for r in rows.values():
        assert r["ok"] and r["error"] is None, r
        assert 0 <= r["shared"] <= SMEM_LIMIT and r["regs"] * 32 * r["num_warps"] <= 65536, r
    # the GEMMs compiled at the frozen sm_90 tiles (kernels/configs_sm90.py), not the interpreter's 32x32 ones: ffn.2
    # of w8 is 256x128x128 in 4 stages, 4 * (256 + 128) * 128 B of A/W tiles, plus its 256 x 64 bf16 TMA-store tile
    r = rows["w8/gemm_ffn2_residual_gate"]
    assert (r["num_warps"], r["num_stages"]) == (8, 4) and r["shared"] >= 4 * 384 * 128 + 256 * 64 * 2


BAD_KERNEL = '''
import triton
import triton.language as tl


@triton.jit
def _value(x, s, CODE: tl.constexpr):  # two return types: the interpreter runs it, the compiler refuses it
    if CODE:
        return x * s
    return x.to(tl.bfloat16)


@triton.jit
def bad_kernel(x_ptr, s, CODE: tl.constexpr):
    tl.store(x_ptr, _value(tl.load(x_ptr), s, CODE))
'''

PROBE = '''
import importlib.util, json, sys
import torch
from qarvd.bench.compile_sm90 import check, compile_only
spec = importlib.util.spec_from_file_location("bad", sys.argv[1])
bad = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bad)
from kernels import qgemm
from kernels.configs_sm90 import GemmConfig
from qarvd.deploy.modules import RealQuantLinear

g = RealQuantLinear.random(256, 256, asym_w=False).group()
a, x = torch.empty((1, 512, g.kp), dtype=torch.int8), torch.zeros(4)
cases = {"gemm_128x128_3_stages": lambda: qgemm.qgemm(a, None, g, 512, config=GemmConfig(128, 128, 128, 8, 8, 3)),
         "gemm_256x256_4_stages": lambda: qgemm.qgemm(a, None, g, 512, config=GemmConfig(256, 256, 128, 8, 8, 4)),
         "one_return_type": lambda: bad.bad_kernel[(1,)](x, 2.0, CODE=False),
         "two_return_types": lambda: bad.bad_kernel[(1,)](x, 2.0, CODE=True)}
with compile_only() as compiled:
    print(json.dumps({name: check(name, fn, compiled) for name, fn in cases.items()}))
'''


def test_check_flags_what_only_the_gpu_used_to_catch(tmp_path):
    """The two kinds of error the interpreter lets through: a shared-memory overflow (Triton compiles it; the launch
    fails) and a helper with two return types (the interpreter runs it; the compiler refuses it)."""
    (tmp_path / "bad.py").write_text(BAD_KERNEL)
    res = _run(["-c", PROBE, str(tmp_path / "bad.py")], tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = json.loads(res.stdout.splitlines()[-1])
    fits, big = rows["gemm_128x128_3_stages"], rows["gemm_256x256_4_stages"]
    assert fits["ok"] and 3 * 256 * 128 <= fits["shared"] <= SMEM_LIMIT
    assert not big["ok"] and big["shared"] >= 4 * 512 * 128 > SMEM_LIMIT and "shared memory" in big["error"]
    assert rows["one_return_type"]["ok"]
    assert not rows["two_return_types"]["ok"] and "Return type mismatch" in rows["two_return_types"]["error"]
