"""Which part of FP8 self-attention costs the quality on the embedded model? (diagnostic, CPU, torch_ref)

    OMP_NUM_THREADS=2 python docs/experiments/fp8_attention_ablation.py <train_quant run dir> 32 "q+k+v+p+o,q,k,v,p,o,kmean+vmean+q+k+v+p+o"

Converts the run's W8A8 artifact to the real torch_ref model (bf16-path attention), then swaps the self-attention
for a float32 version that rounds only the named operands to E4M3 with static per-layer per-tensor scales (amax of one
calibration rollout / 448, as qarvd.deploy.calibrate_attention_): q, k, v, p (unnormalised probabilities, step
1/448), o (output). ``kmean``/``vmean`` subtract the calibrated per-channel mean of k / v first (softmax-invariant
for k; the v mean is added back to the output); ``rot`` rotates q and k (after any centring) by an orthonormal
Hadamard matrix over the head dim before rounding, which leaves q k^T unchanged; ``vrot`` rotates v the same way
(the output comes out rotated and is rotated back after its rounding). Prints each variant's latent MSE to FP as a ratio to the real
model's. A research probe, not a deployment path: it patches qarvd.deploy.fast.attention.
"""
import copy, json, sys, math
import torch
from omegaconf import OmegaConf
import qarvd.deploy.fast as fast
from kernels.act_quant import fp8_ref
from qarvd.deploy.backends import TorchRefBackend
from qarvd.deploy import accelerate_, convert_to_real
from qarvd.deploy.from_quant import real_specs
from qarvd.app.calibrate import calibration_prompts
from qarvd.models.pipeline import build_pipeline
from qarvd.quant.artifact import load_artifact
from qarvd.quant.sensitivity import generate, latent_mse_by_chunk

run = sys.argv[1]; nprompt = int(sys.argv[2]); variants = sys.argv[3].split(",")
cfg = OmegaConf.load(f"{run}/resolved_config.yaml")
calib_prompts, _, prompts = calibration_prompts(cfg)
prompts = prompts[:nprompt]
seeds = [int(cfg.seed) + i for i in range(len(prompts))]
cseeds = [int(cfg.seed) + i for i in range(len(calib_prompts))]
pipe = build_pipeline(cfg.model, "cpu")
chunks = pipe.rollout_cfg.chunk_frames()
gen = lambda ps, ss: generate(pipe, ps, ss, 16).cpu()
with torch.no_grad():
    fp = gen(prompts, seeds)
    load_artifact(pipe.model, run)
    qm = pipe.model
    be = TorchRefBackend(attention="auto", dual_mode="exact", weights="artifact")
    pipe.model = accelerate_(convert_to_real(copy.deepcopy(qm), real_specs(qm), be), be)
    real = gen(prompts, seeds)
base = latent_mse_by_chunk(real, fp, chunks)
print("real", base["overall"], flush=True)

blocks = list(pipe.model.blocks)
state = dict(layer=None, call=0, mode="off", var=None)
stats = {}
for i, b in enumerate(blocks):
    def hook(mod, args, i=i):
        state["layer"], state["call"] = i, 0
    b.register_forward_pre_hook(hook)
orig = fast.attention

def hadamard(d: int) -> torch.Tensor:
    """Orthonormal Sylvester-Hadamard matrix [d, d] (d a power of two): q H (k H)^T = q k^T exactly."""
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(d)


def q8(t, amax):
    step = amax / 448.0
    return fp8_ref(t.float(), step).float() * step

def patched(q, k, v, mask=None):
    state["call"] += 1
    if state["call"] != 1 or state["mode"] == "off":
        return orig(q, k, v, mask)
    st = stats.setdefault(state["layer"], dict(amax=torch.zeros(4), ksum=0, vsum=0, n=0))
    if state["mode"] == "calib":
        o = orig(q, k, v, mask)
        kf, vf = k.float(), v.float()
        st["ksum"] = st["ksum"] + kf.sum((0, 1)); st["vsum"] = st["vsum"] + vf.sum((0, 1)); st["n"] += kf.shape[0] * kf.shape[1]
        st["amax"] = torch.maximum(st["amax"], torch.stack([q.abs().amax(), k.abs().amax(), v.abs().amax(), o.abs().amax()]).float())
        return o
    var = state["var"]
    qf, kf, vf = q.float(), k.float(), v.float()
    kbar = st["ksum"] / st["n"] if "kmean" in var else 0
    vbar = st["vsum"] / st["n"] if "vmean" in var else 0
    a = (st["camax"] if ("kmean" in var or "vmean" in var) else st["amax"]).clone()
    kc = kf - kbar
    if "rot" in var.split("+"):  # rotate q and (centred) k over the head dim before rounding (exact for the logits)
        hd = hadamard(q.shape[-1])
        qf, kc = qf @ hd, kc @ hd
        a[0], a[1] = st["ramax"][0], st["ramax"][2 if "kmean" in var else 1]
    if "q" in var.split("+"): qf = q8(qf, a[0])
    if "k" in var.split("+"): kc = q8(kc, a[1])
    vc = vf - vbar
    if "vrot" in var.split("+"):  # rotate v over the head dim, so the output comes out rotated: undone after o
        if "vmean" in var:
            raise ValueError("vrot with vmean: the rotated amax is calibrated on the uncentred v and o")
        vc = vc @ hadamard(q.shape[-1])
        a[2], a[3] = st["ramax"][3], st["ramax"][4]
    if "v" in var.split("+"): vc = q8(vc, a[2])
    logits = torch.einsum("bqhd,bkhd->bhqk", qf, kc) / math.sqrt(q.shape[-1])
    m = logits.amax(-1, keepdim=True); p = torch.exp(logits - m); den = p.sum(-1, keepdim=True)
    if "p" in var.split("+"): p = fp8_ref(p, 1 / 448.0).float() / 448.0
    o = torch.einsum("bhqk,bkhd->bqhd", p, vc) / den.permute(0, 2, 1, 3)
    if "o" in var.split("+"): o = q8(o, a[3])
    if "vrot" in var.split("+"): o = o @ hadamard(q.shape[-1]).T
    return (o + vbar).to(q.dtype)

fast.attention = patched
with torch.no_grad():
    state["mode"] = "calib"; gen(calib_prompts, cseeds)
    # centred amax pass
    for s in stats.values():
        s["kbar"] = s["ksum"] / s["n"]; s["vbar"] = s["vsum"] / s["n"]
    def calib2(q, k, v, mask=None):
        state["call"] += 1
        if state["call"] != 1: return orig(q, k, v, mask)
        st = stats[state["layer"]]
        o = orig(q, k, v, mask)
        c = torch.stack([q.abs().amax(), (k.float() - st["kbar"]).abs().amax(), (v.float() - st["vbar"]).abs().amax(), (o.float() - st["vbar"]).abs().amax()]).float()
        st["camax"] = torch.maximum(st.get("camax", torch.zeros(4)), c)
        hd = hadamard(q.shape[-1])
        r = torch.stack([(q.float() @ hd).abs().amax(), (k.float() @ hd).abs().amax(),
                         ((k.float() - st["kbar"]) @ hd).abs().amax(), (v.float() @ hd).abs().amax(),
                         (o.float() @ hd).abs().amax()])
        st["ramax"] = torch.maximum(st.get("ramax", torch.zeros(5)), r)  # q, k, centred k, v, o after the rotation
        return o
    fast.attention = calib2; gen(calib_prompts, cseeds); fast.attention = patched
    for i, s in stats.items():
        print(i, "amax", s["amax"].tolist(), "camax", s["camax"].tolist(), "|kbar|", s["kbar"].norm().item(), flush=True)
    res = {}
    state["mode"] = "quant"
    for var in variants:
        state["var"] = var
        lat = gen(prompts, seeds)
        mse = latent_mse_by_chunk(lat, fp, chunks)
        res[var] = mse["overall"] / base["overall"]
        print(var, mse["overall"], "x real", res[var], [round(a / b, 2) for a, b in zip(mse["chunks"], base["chunks"])] if "chunks" in mse else "", flush=True)
print(json.dumps(res))
