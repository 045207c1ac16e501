"""How much latent quality does INT8 self-attention cost on the embedded model, and which recipe? (CPU, torch_ref)

    OMP_NUM_THREADS=2 python docs/experiments/int8_attention_ablation.py <train_quant run dir> <prompts> \
        "sage,q1+k1+km,q1+k1" [--probe-prompts 8] [--out result.json]

Converts the run's W8A8 artifact to the real torch_ref model (full-precision attention: the base), then measures
each variant's latent MSE to the FP rollout over the first ``prompts`` held-out prompts (same prompts and per-prompt
seeds), as a ratio to the base's, with a 95 % paired bootstrap interval over prompts (2000 resamples). The rollout
ratio is noisy (a perturbation anywhere grows chaotically along the chunks, real W8A8 included), so the script also
prints each variant's *operator* error: the relative L2 error of the self-attention output against exact attention
on the same inputs, over a rollout of the first ``--probe-prompts`` held-out prompts with exact attention flowing.

Variants (``+``-joined tokens; without a q / k token that operand stays exact):
- ``sage``: the deployed path itself, ``TorchRefBackend(attention="int8_sage")`` calibrated by
  ``qarvd.deploy.calibrate_attention_`` on the run's calibration prompts (kernels/attn_int8.py's reference);
- ``qN`` / ``kN``: symmetric int8 q / k with one scale per head and block of N tokens (1: per token; k blocks start at
  cache position 0, as a kernel's key tiles);
- ``km``: subtract the calibrated mean key first (softmax-invariant);
- ``rot``: rotate q and k (after centring) by an orthonormal Hadamard matrix over the head dim (exact for q k^T);
- ``pvbf16``: P and V rounded to bf16 before P.V (what a bf16 GPU model's kernel does; the CPU model is float32);
- ``pvfp8``: V in E4M3 with one static per-channel scale (calibrated amax / 448), P in E4M3 (p * 448).
A research probe, not a deployment path: it patches qarvd.deploy.fast.attention for the emulated variants.
"""
import argparse
import copy
import json
import math
import time

import torch
from omegaconf import OmegaConf

import qarvd.deploy.fast as fast
from kernels.act_quant import fp8_ref
from qarvd.app.calibrate import calibration_prompts
from qarvd.deploy import accelerate_, calibrate_attention_, convert_to_real
from qarvd.deploy.backends import TorchRefBackend
from qarvd.deploy.from_quant import real_specs
from qarvd.models.pipeline import build_pipeline
from qarvd.quant.artifact import load_artifact
from qarvd.quant.sensitivity import generate

p = argparse.ArgumentParser()
p.add_argument("run")
p.add_argument("prompts", type=int)
p.add_argument("variants")
p.add_argument("--probe-prompts", type=int, default=8)
p.add_argument("--out", default=None)
args = p.parse_args()
variants = args.variants.split(",")
cfg = OmegaConf.load(f"{args.run}/resolved_config.yaml")
cfg.calib.eval_prompts = max(args.prompts, args.probe_prompts)
cfg.model.prompts.eval.count = max(int(cfg.model.prompts.eval.count), cfg.calib.eval_prompts)  # procedural: prefix-stable
calib_prompts, _, prompts = calibration_prompts(cfg)
seeds = [int(cfg.seed) + i for i in range(len(prompts))]
cseeds = [int(cfg.seed) + i for i in range(len(calib_prompts))]
pipe = build_pipeline(cfg.model, "cpu")
gen = lambda ps, ss: generate(pipe, ps, ss, 16).cpu()  # noqa: E731
t0 = time.time()
with torch.no_grad():
    fp = gen(prompts[:args.prompts], seeds[:args.prompts])
    load_artifact(pipe.model, args.run)
    qm = pipe.model
    be = TorchRefBackend(attention="auto", dual_mode="exact", weights="artifact")
    real_model = accelerate_(convert_to_real(copy.deepcopy(qm), real_specs(qm), be), be)
    pipe.model = real_model
    real = gen(prompts[:args.prompts], seeds[:args.prompts])
print(f"fp + real rollouts {time.time() - t0:.0f} s", flush=True)


def per_prompt(lat):
    return ((lat - fp) ** 2).flatten(1).mean(1).double()


base = per_prompt(real)
print("real W8A8, full-precision attention: latent MSE", float(base.mean()), flush=True)
boot_idx = torch.randint(0, args.prompts, (2000, args.prompts), generator=torch.Generator().manual_seed(0))

# ---------------------------------------------------------------------------------------------- emulation
state = dict(layer=None, call=0, mode="off", var=None)
stats: dict = {}
for i, b in enumerate(real_model.blocks):
    def hook(mod, a, i=i):
        state["layer"], state["call"] = i, 0
    b.register_forward_pre_hook(hook)
exact_attention = fast.attention


def hadamard(d: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(d)


def int8_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """x [B, L, H, D] -> dequantized symmetric int8, one scale per (sample, block of tokens, head)."""
    b, n, h, d = x.shape
    pad = (-n) % block
    xp = torch.cat([x, x.new_zeros(b, pad, h, d)], 1) if pad else x
    xb = xp.view(b, -1, block, h, d)
    step = xb.abs().amax(dim=(2, 4), keepdim=True).clamp_min(1e-30) / 127
    return (torch.round(xb / step).clamp(-127, 127) * step).view(b, -1, h, d)[:, :n]


def emulate(q, k, v, var: str, st: dict) -> torch.Tensor:
    tok = var.split("+")
    h, d = q.shape[2], q.shape[3]
    qf, kf = q.double(), k.double()
    if "km" in tok:
        kf = kf - (st["ksum"] / st["n"]).view(h, d)
    if "rot" in tok:
        qf, kf = qf @ hadamard(d), kf @ hadamard(d)
    for t in tok:
        if t[0] == "q" and t[1:].isdigit():
            qf = int8_blocks(qf, int(t[1:]))
        if t[0] == "k" and t[1:].isdigit():
            kf = int8_blocks(kf, int(t[1:]))
    logits = (torch.einsum("bqhd,bkhd->bhqk", qf, kf) / math.sqrt(d)).float()
    pr = torch.exp(logits - logits.amax(-1, keepdim=True))
    den = pr.sum(-1, keepdim=True)
    vv = v.float()
    if "pvbf16" in tok:
        pr, vv = pr.bfloat16().float(), vv.bfloat16().float()
    if "pvfp8" in tok:
        sv = (st["vamax"] / 448).clamp_min(1e-12).view(h, d)
        vv = fp8_ref(vv, sv).float() * sv
        pr = fp8_ref(pr, torch.tensor(1 / 448.0)).float() / 448
    o = torch.einsum("bhqk,bkhd->bqhd", pr, vv) / den.permute(0, 2, 1, 3)
    return o.to(q.dtype)


def patched(q, k, v, mask=None):
    state["call"] += 1
    if state["call"] != 1 or state["mode"] == "off":  # the second call of a block is cross-attention
        return exact_attention(q, k, v, mask)
    st = stats.setdefault(state["layer"], dict(ksum=0, n=0, vamax=torch.zeros(q.shape[2] * q.shape[3])))
    o = exact_attention(q, k, v, mask)
    if state["mode"] == "calib":  # this chunk's keys (the last q-length tokens of the cache), as calibrate_attention_
        kn = k[:, -q.shape[1]:].double()
        st["ksum"] = st["ksum"] + kn.sum((0, 1))
        st["n"] += kn.shape[0] * kn.shape[1]
        st["vamax"] = torch.maximum(st["vamax"], v.float().abs().amax((0, 1)).flatten())
        return o
    if state["mode"] == "probe":
        for var in probe_vars:
            e = emulate(q, k, v, var, st)
            errs[var][0] += float((e.double() - o.double()).norm() ** 2)
        errs["_ref"][0] += float(o.double().norm() ** 2)
        return o
    return emulate(q, k, v, state["var"], st)


fast.attention = patched
res = {}
with torch.no_grad():
    state["mode"] = "calib"
    gen(calib_prompts, cseeds)
    probe_vars = [v for v in variants if v != "sage"]
    errs = {v: [0.0] for v in probe_vars + ["_ref"]}
    state["mode"] = "probe"
    gen(prompts[:args.probe_prompts], seeds[:args.probe_prompts])
    for var in probe_vars:
        print(f"{var}: attention output rel. error {math.sqrt(errs[var][0] / errs['_ref'][0]):.5f}", flush=True)
        res.setdefault(var, {})["op_rel_error"] = math.sqrt(errs[var][0] / errs["_ref"][0])
    state["mode"] = "quant"
    for var in variants:
        t = time.time()
        if var == "sage":
            state["mode"] = "off"
            sb = TorchRefBackend(attention="int8_sage", dual_mode="exact", weights="artifact")
            pipe.model = accelerate_(convert_to_real(copy.deepcopy(qm), real_specs(qm), sb), sb)
            calibrate_attention_(pipe.model, lambda: gen(calib_prompts, cseeds))
            lat = gen(prompts[:args.prompts], seeds[:args.prompts])
            pipe.model, state["mode"] = real_model, "quant"
        else:
            state["var"] = var
            lat = gen(prompts[:args.prompts], seeds[:args.prompts])
        mse = per_prompt(lat)
        boot = mse[boot_idx].mean(1) / base[boot_idx].mean(1)
        lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        res.setdefault(var, {}).update(latent_mse=float(mse.mean()), x_real=float(mse.mean() / base.mean()),
                                       ci95=[lo, hi])
        print(f"{var}: latent MSE {float(mse.mean()):.4e}, x real {float(mse.mean() / base.mean()):.4f} "
              f"[{lo:.4f}, {hi:.4f}] ({time.time() - t:.0f} s)", flush=True)
out = dict(run=args.run, prompts=args.prompts, probe_prompts=args.probe_prompts, real_latent_mse=float(base.mean()),
           variants=res)
print(json.dumps(out))
if args.out:
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
