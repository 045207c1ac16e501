"""Our CausalWan DiT against the public Self-Forcing ``CausalWanModel``, forward by forward, in KV-cache inference.

Opt-in: set ``QARVD_PEER_DIR`` to a checkout of github.com/guandeh17/Self-Forcing (Apache-2.0; read from there at
test time, nothing of it is copied into this repository; it needs diffusers and einops). Both models get the same
random weights (our state dict loads strictly into theirs) and the same inputs for every forward of a 3-chunk rollout
(4 denoising steps + the t=0 K/V refresh per chunk). Its attention is routed to its own SDPA fallback (no flash_attn
on a CPU) in the model's dtype, since that fallback casts to bf16 otherwise.

float32: the two implementations agree to float32 rounding. bf16: both differ from our float64 model by their bf16
rounding; ours (float32 modulation, as Wan) is not less accurate than the public code (bf16 modulation)."""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from qarvd.models.wan import CausalWanModel, WanConfig

PEER = os.environ.get("QARVD_PEER_DIR")
pytestmark = pytest.mark.skipif(not PEER, reason="needs a Self-Forcing checkout in QARVD_PEER_DIR")
ARCH = dict(dim=128, ffn_dim=256, num_heads=2, num_layers=2, freq_dim=32, text_dim=64, text_len=16)
B, C, FPC, CHUNKS, H, W = 2, 16, 3, 3, 8, 12
STEPS = [1000.0, 937.5, 833.3, 625.0, 0.0]  # self-forcing's warped list, then the refresh at t=0


@pytest.fixture(scope="module")
def public_model_class():
    pytest.importorskip("diffusers")
    pytest.importorskip("einops")
    before = set(sys.modules)
    for name, sub in (("wan", ""), ("wan.modules", "/modules")):  # skip wan/__init__ (it imports the 14B configs)
        mod = types.ModuleType(name)
        mod.__path__ = [f"{PEER}/wan{sub}"]
        sys.modules[name] = mod
    sys.path.insert(0, PEER)
    try:
        import wan.modules.attention as wa
        import wan.modules.causal_model as cm
        import wan.modules.model as wm

        wm.flash_attention = lambda q, k, v, k_lens=None, **kw: wa.attention(q, k, v, dtype=q.dtype)
        cm.attention = lambda q, k, v, **kw: wa.attention(q, k, v, dtype=q.dtype)
        yield cm.CausalWanModel
    finally:
        sys.path.remove(PEER)
        for name in set(sys.modules) - before:
            if name == "wan" or name.startswith("wan."):
                del sys.modules[name]


def _inputs():
    torch.manual_seed(0)
    ours = CausalWanModel(WanConfig(**ARCH)).eval()
    with torch.no_grad():
        for p in ours.parameters():  # nonzero everywhere (Wan's init zeroes the head)
            p.normal_(0, 0.05)
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(B, ARCH["text_len"], ARCH["text_dim"], generator=g)
    xs = [[torch.randn(B, C, FPC, H, W, generator=g) for _ in STEPS] for _ in range(CHUNKS)]
    return ours, ctx, xs


def _ours(dtype):
    model, ctx, xs = _inputs()
    model = model.to(dtype)
    cache = model.new_cache(B, FPC * CHUNKS, H, W)
    with torch.no_grad():
        return [model(x.to(dtype), torch.full((B, FPC), t), ctx.to(dtype), cache=cache, frame_offset=c * FPC).double()
                for c in range(CHUNKS) for x, t in zip(xs[c], STEPS)]


def _public(cls, dtype):
    ours, ctx, xs = _inputs()
    model = cls(model_type="t2v", patch_size=(1, 2, 2), in_dim=C, out_dim=C, qk_norm=True, cross_attn_norm=True,
                eps=1e-6, **ARCH)
    model.load_state_dict(ours.state_dict(), strict=True)
    model = model.to(dtype).eval()
    tokens, hd = CHUNKS * FPC * (H // 2) * (W // 2), ARCH["dim"] // ARCH["num_heads"]
    kv = [{"k": torch.zeros(B, tokens, ARCH["num_heads"], hd, dtype=dtype),
           "v": torch.zeros(B, tokens, ARCH["num_heads"], hd, dtype=dtype),
           "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])} for _ in range(ARCH["num_layers"])]
    cross = [{"k": None, "v": None, "is_init": False} for _ in range(ARCH["num_layers"])]
    with torch.no_grad():
        return [model(x.to(dtype), t=torch.full((B, FPC), t), context=ctx.to(dtype), seq_len=tokens, kv_cache=kv,
                      crossattn_cache=cross, current_start=c * FPC * (H // 2) * (W // 2)).double()
                for c in range(CHUNKS) for x, t in zip(xs[c], STEPS)]


def _rel(a, b):
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b))


def test_every_forward_matches_the_public_model(public_model_class):
    ref = _ours(torch.float64)
    assert _rel(_ours(torch.float32), _public(public_model_class, torch.float32)) < 1e-5
    ours16, public16 = _ours(torch.bfloat16), _public(public_model_class, torch.bfloat16)
    assert _rel(ours16, ref) <= _rel(public16, ref) < 2e-2
    assert _rel(ours16, public16) < 1e-2
