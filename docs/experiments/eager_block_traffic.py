"""Why is the eager bf16 forward slower than the public self-forcing code? Count what one block forward launches.

    python docs/experiments/eager_block_traffic.py ours
    python docs/experiments/eager_block_traffic.py public --peer-dir ../shared/peer/self-forcing

Runs one cached block forward at the self-forcing shapes (batch 1, one 3-frame chunk = 4680 tokens, dim 1536, 12
heads, a second chunk attending over the first) in bf16 on the CPU under a dispatch mode that counts every aten
kernel that is not a view or an allocation, the bytes of its tensor operands (inputs + outputs: a kernel's
minimum memory traffic) and the host syncs (``.item()``). The public block is imported from ``--peer-dir`` (a
checkout of the Apache-2.0 Self-Forcing code, never copied here); its cross-attention calls flash_attn, absent on a
CPU, so that call is routed to the SDPA branch of its own ``attention()``, as when flash_attn is not installed.
A diagnostic for kernels/NOTES.md, not a benchmark: GPU time also depends on each kernel's access pattern.
"""
import argparse
import collections
import sys
import types

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

FREE = {"view", "_unsafe_view", "transpose", "permute", "unsqueeze", "squeeze", "expand", "slice", "select", "t",
        "unflatten", "as_strided", "alias", "detach", "split", "split_with_sizes", "unbind", "view_as_real",
        "view_as_complex", "_reshape_alias", "lift_fresh", "empty", "empty_like", "empty_strided"}
MATMUL = {"mm", "addmm", "bmm", "_scaled_dot_product_flash_attention_for_cpu"}
B, F, S, DIM, H, HD, FFN, TEXT = 1, 3, 1560, 1536, 12, 128, 8960, 512


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kernels, self.bytes = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in FREE:
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            self.kernels[name] += 1
            self.bytes[name] += sum(t.numel() * t.element_size() for t in tensors)
        return out


def ours():
    from qarvd.models.wan import LayerCache, WanAttentionBlock, WanConfig, rope_angles

    block = WanAttentionBlock(WanConfig(dim=DIM, ffn_dim=FFN, num_heads=H, num_layers=1)).to(torch.bfloat16).eval()
    ft, fh, fw = rope_angles(HD, 1024, 10000.0)
    hh, ww = 30, 52
    ang = torch.cat([ft[F:2 * F].view(F, 1, 1, -1).expand(F, hh, ww, -1), fh[:hh].view(1, hh, 1, -1).expand(F, hh, ww, -1),
                     fw[:ww].view(1, 1, ww, -1).expand(F, hh, ww, -1)], -1).reshape(F * S, -1)
    kv = LayerCache(*(torch.zeros(B, 2 * F * S, H, HD, dtype=torch.bfloat16) for _ in range(2)))
    x, e = torch.randn(B, F * S, DIM, dtype=torch.bfloat16), torch.randn(B, F, 6, DIM, dtype=torch.bfloat16)
    ctx = torch.randn(B, TEXT, DIM, dtype=torch.bfloat16)
    args = (x, e, ctx, ang.cos().float(), ang.sin().float(), kv)
    block(*args, 0, F, None)  # the first chunk: fills the cross-attention cache
    return lambda: block(*args, F * S, F, None)


def public(peer_dir: str):
    for name, sub in (("wan", ""), ("wan.modules", "/modules")):  # skip wan/__init__ (it imports the 14B configs)
        mod = types.ModuleType(name)
        mod.__path__ = [f"{peer_dir}/wan{sub}"]
        sys.modules[name] = mod
    sys.path.insert(0, peer_dir)
    import wan.modules.attention as wa
    import wan.modules.model as wm
    from wan.modules.causal_model import CausalWanAttentionBlock

    wm.flash_attention = lambda q, k, v, k_lens=None: wa.attention(q, k, v)
    block = CausalWanAttentionBlock("t2v_cross_attn", DIM, FFN, H, qk_norm=True, cross_attn_norm=True,
                                    eps=1e-6).to(torch.bfloat16).eval()
    freqs = torch.cat([wm.rope_params(1024, HD - 4 * (HD // 6)), wm.rope_params(1024, 2 * (HD // 6)),
                       wm.rope_params(1024, 2 * (HD // 6))], dim=1)
    cache = {"k": torch.zeros(B, 2 * F * S, H, HD, dtype=torch.bfloat16), "v": torch.zeros(B, 2 * F * S, H, HD,
                                                                                        dtype=torch.bfloat16),
             "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])}
    cross = {"k": None, "v": None, "is_init": False}
    kw = dict(e=torch.randn(B, F, 6, DIM, dtype=torch.bfloat16), seq_lens=torch.tensor([F * S]),
              grid_sizes=torch.tensor([[F, 30, 52]]), freqs=freqs, context=torch.randn(B, TEXT, DIM, dtype=torch.bfloat16),
              context_lens=None, block_mask=None, kv_cache=cache, crossattn_cache=cross)
    x = torch.randn(B, F * S, DIM, dtype=torch.bfloat16)
    block(x, current_start=0, **kw)
    return lambda: block(x, current_start=F * S, **kw)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=["ours", "public"])
    p.add_argument("--peer-dir", default=None)
    a = p.parse_args()
    with torch.no_grad():
        fn = ours() if a.which == "ours" else public(a.peer_dir)
        count = Count()
        with count:
            fn()
    total = sum(count.bytes.values())
    glue = total - sum(v for k, v in count.bytes.items() if k in MATMUL)
    syncs = count.kernels["_local_scalar_dense"]
    print(f"{a.which}: {sum(count.kernels.values()) - syncs} kernels, {syncs} host syncs, {total / 1e6:.0f} MB "
          f"operand bytes, {glue / 1e6:.0f} MB outside GEMMs and attention")
    for k, v in sorted(count.bytes.items(), key=lambda kv: -kv[1]):
        print(f"  {k:45s} {count.kernels[k]:3d} {v / 1e6:8.0f} MB")


if __name__ == "__main__":
    main()
