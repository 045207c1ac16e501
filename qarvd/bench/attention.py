"""The ``attention`` section of the latency benchmark: each attention backend (``attention_backends``: SDPA's, and
``fa4``, and the quantized ``sage2``) over the growing KV cache of one batch-2 video (the 7 chunk shapes); the fastest
bf16 one becomes the attention of every row that asks for ``fastest``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from kernels import attn_fa4, attn_sage
from qarvd.bench.report import Report, log
from qarvd.bench.timing import bench_ms
from qarvd.deploy.backends import sdpa_context


def attention_call(name: str, q: torch.Tensor, kv: torch.Tensor):
    """One self-attention of [B, L, H, D] q over kv as backend ``name`` runs it: FlashAttention-4 for fa4 and
    SageAttention2 for sage2 (the fused block's calls, no transposes), else SDPA under that backend."""
    if name == "fa4":
        return lambda: attn_fa4.fa4_attention(q, kv, kv)
    if name == "sage2":  # quantizes q, k and v on each call, as the fused block's sage2 attention does
        return lambda: attn_sage.sage_attention(q, kv, kv)
    if name == "sage2_kernel":  # its kernel alone, on codes made once: the cost with codes kept in the cache
        return attn_sage.kernel_only(q, kv, kv)

    def sdpa():
        with sdpa_context(name):
            return F.scaled_dot_product_attention(q.transpose(1, 2), kv.transpose(1, 2), kv.transpose(1, 2))
    return sdpa


def attention_section(cfg: DictConfig, device, rep: Report, arch) -> str:
    """Returns the name of the fastest backend ("auto" when none ran)."""
    tokens = cfg.frames_per_chunk * (cfg.height // 2) * (cfg.width // 2)
    chunks = cfg.frames // cfg.frames_per_chunk
    res = {}
    for name in cfg.attention_backends:
        total, per = 0.0, []
        try:
            for c in range(1, chunks + 1):
                q = torch.randn(2, tokens, arch.num_heads, arch.head_dim, device=device, dtype=torch.bfloat16)
                kv = torch.randn(2, tokens * c, arch.num_heads, arch.head_dim, device=device, dtype=torch.bfloat16)
                t = bench_ms(attention_call(name, q, kv), device)
                per.append(t)
                total += t
            flop = sum(4 * 2 * arch.num_heads * tokens * tokens * c * arch.head_dim for c in range(1, chunks + 1))
            res[name] = dict(ms_per_chunk=per, ms_sum=total, tflops=flop / total / 1e9,
                             est_video_s=total * (cfg.steps + 1) * arch.num_layers / 1e3)
        except Exception as e:  # noqa: BLE001
            res[name] = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
    ok = {k: v["ms_sum"] for k, v in res.items() if "ms_sum" in v and not k.startswith("sage2")}  # bf16 rows' choice
    fastest = min(ok, key=ok.get) if ok else "auto"
    rep.put("attention", dict(batch=2, tokens_per_chunk=tokens, backends=res, fastest=fastest))
    log("attention", {k: v.get("ms_sum", v.get("error")) for k, v in res.items()}, "fastest", fastest)
    return fastest
