"""Why is the eager bf16 forward slower than the public self-forcing code? Count and classify what one block launches.

    python docs/experiments/eager_block_traffic.py ours
    git show <rev>:qarvd/models/wan.py > /tmp/wan_before.py
    python docs/experiments/eager_block_traffic.py ours --wan /tmp/wan_before.py
    python docs/experiments/eager_block_traffic.py public --peer-dir ../shared/peer/self-forcing

Runs one cached block forward at the self-forcing shapes (``--batch`` videos, default 2 as in the latency bench;
one 3-frame chunk = 4680 tokens per video, dim 1536, 12 heads, a second chunk attending over the first) in bf16 on
the CPU under a dispatch mode that records every aten kernel that is not a view or an allocation, the bytes of its
distinct tensor operands (inputs + outputs once each: a kernel's minimum memory traffic) and the host syncs
(``.item()``). ``--wan FILE`` runs another version of qarvd/models/wan.py (e.g. an earlier commit's) in place of
the installed one. The public block is imported from ``--peer-dir`` (a checkout of the Apache-2.0 Self-Forcing
code, never copied here); its cross-attention calls flash_attn, absent on a CPU, so that call is routed to the SDPA
branch of its own ``attention()``, as when flash_attn is not installed.

Each elementwise kernel is put in the class of CUDA loop PyTorch would run it with (ATen CUDALoops.cuh): all operands
contiguous, same size and one dtype -> vectorized; contiguous but mixed dtypes -> unrolled loads/stores with casts;
broadcast or strided -> the offset-calculator kernel, and with mixed dtypes also a per-element dtype switch on every
load and store (``fetch_and_cast``), the slowest form. ``F.rms_norm`` on 16-bit inputs is one fused kernel on CUDA
(``aten::_fused_rms_norm``) but decomposes on the CPU: it is counted as the CUDA kernel (input and output bytes).
A diagnostic for kernels/NOTES.md, not a benchmark: GPU time depends on each kernel's access pattern too.
"""
import argparse
import collections
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

FREE = {"view", "_unsafe_view", "transpose", "permute", "unsqueeze", "squeeze", "expand", "slice", "select", "t",
        "unflatten", "as_strided", "alias", "detach", "split", "split_with_sizes", "unbind", "view_as_real",
        "view_as_complex", "_reshape_alias", "lift_fresh", "empty", "empty_like", "empty_strided"}
GEMM = {"mm", "addmm", "bmm", "_scaled_dot_product_flash_attention_for_cpu"}
NORM = {"native_layer_norm", "_fused_rms_norm", "mean", "sum"}
COPY = {"_to_copy", "copy_", "cat", "stack", "clone"}
ELEMENTWISE = {(True, False): "elementwise, contiguous, one dtype (vectorized)",
               (True, True): "elementwise, contiguous, mixed dtypes (unrolled, casts)",
               (False, False): "elementwise, broadcast/strided, one dtype (offset calculator)",
               (False, True): "elementwise, broadcast/strided, mixed dtypes (offset calculator + dtype switch)"}
SMALL = 1e6  # bytes: kernels below this (per-frame modulation, rstd, tables) are counted apart
B, F_, S, DIM, H, HD, FFN, TEXT = 2, 3, 1560, 1536, 12, 128, 8960, 512


def kernel_class(name, operands, out):
    if out is None:
        return "host sync"
    if name in GEMM:
        return "GEMM / attention"
    if name in NORM:
        return "norm / row reduction"
    if name in COPY:
        return "copy / cast / cat"
    same = all(t.numel() == out.numel() and t.is_contiguous() for t in operands)
    return ELEMENTWISE[(same, len({t.dtype for t in operands}) > 1)]


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.rows, self.paused = [], False

    def record(self, name, tensors, out):
        seen = {id(t): t for t in tensors}  # an out= tensor is an input and the output: count it once
        nbytes = sum(t.numel() * t.element_size() for t in seen.values())
        self.rows.append((name, kernel_class(name, list(seen.values()), out), nbytes, list(seen.values())))

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not self.paused and name not in FREE:
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            self.record(name, ins + outs, outs[0] if outs else None)
        return out


class CudaRmsNorm(TorchFunctionMode):
    """Count ``F.rms_norm`` on a 16-bit input as the one kernel CUDA runs for it, not its CPU decomposition."""

    def __init__(self, count):
        super().__init__()
        self.count = count

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        if func is not F.rms_norm or args[0].dtype not in (torch.bfloat16, torch.float16) or self.count.paused:
            return func(*args, **(kwargs or {}))
        self.count.paused = True
        try:
            out = func(*args, **(kwargs or {}))
        finally:
            self.count.paused = False
        self.count.record("_fused_rms_norm", [args[0], out], out)
        return out


def ours(wan_file=None):
    if wan_file:
        spec = importlib.util.spec_from_file_location("wan_under_test", wan_file)
        wan = importlib.util.module_from_spec(spec)
        sys.modules["wan_under_test"] = wan
        spec.loader.exec_module(wan)
    else:
        import qarvd.models.wan as wan

    block = wan.WanAttentionBlock(wan.WanConfig(dim=DIM, ffn_dim=FFN, num_heads=H, num_layers=1)).to(torch.bfloat16).eval()
    ft, fh, fw = wan.rope_angles(HD, 1024, 10000.0)
    hh, ww = 30, 52
    ang = torch.cat([ft[F_:2 * F_].view(F_, 1, 1, -1).expand(F_, hh, ww, -1), fh[:hh].view(1, hh, 1, -1).expand(F_, hh, ww, -1),
                     fw[:ww].view(1, 1, ww, -1).expand(F_, hh, ww, -1)], -1).reshape(F_ * S, -1)
    kv = wan.LayerCache(*(torch.zeros(B, 2 * F_ * S, H, HD, dtype=torch.bfloat16) for _ in range(2)))
    x, e = torch.randn(B, F_ * S, DIM, dtype=torch.bfloat16), torch.randn(B, F_, 6, DIM, dtype=torch.bfloat16)
    ctx = torch.randn(B, TEXT, DIM, dtype=torch.bfloat16)
    args = (x, e, ctx, ang.cos().float(), ang.sin().float(), kv)
    block(*args, 0, F_, None)  # the first chunk: fills the cross-attention cache
    return lambda: block(*args, F_ * S, F_, None)


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
    cache = {"k": torch.zeros(B, 2 * F_ * S, H, HD, dtype=torch.bfloat16), "v": torch.zeros(B, 2 * F_ * S, H, HD,
                                                                                          dtype=torch.bfloat16),
             "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])}
    cross = {"k": None, "v": None, "is_init": False}
    kw = dict(e=torch.randn(B, F_, 6, DIM, dtype=torch.bfloat16), seq_lens=torch.tensor([F_ * S] * B),
              grid_sizes=torch.tensor([[F_, 30, 52]] * B), freqs=freqs,
              context=torch.randn(B, TEXT, DIM, dtype=torch.bfloat16), context_lens=None, block_mask=None,
              kv_cache=cache, crossattn_cache=cross)
    x = torch.randn(B, F_ * S, DIM, dtype=torch.bfloat16)
    block(x, current_start=0, **kw)
    return lambda: block(x, current_start=F_ * S, **kw)


def main():
    global B
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=["ours", "public"])
    p.add_argument("--peer-dir", default=None)
    p.add_argument("--wan", default=None, help="another qarvd/models/wan.py to run (ours)")
    p.add_argument("--batch", type=int, default=B)
    p.add_argument("--ops", action="store_true", help="list every kernel of at least 1 MB")
    a = p.parse_args()
    B = a.batch
    with torch.no_grad():
        fn = ours(a.wan) if a.which == "ours" else public(a.peer_dir)
        count = Count()
        with CudaRmsNorm(count), count:
            fn()
    rows = [r for r in count.rows if r[0] != "_local_scalar_dense"]
    syncs = len(count.rows) - len(rows)
    big = [r for r in rows if r[2] >= SMALL]
    total = sum(r[2] for r in rows)
    glue = [r for r in big if r[1] != "GEMM / attention"]
    print(f"{a.which}{' ' + a.wan if a.wan else ''}, batch {B}: {len(rows)} kernels ({len(big)} of >= 1 MB, "
          f"{len(glue)} of them outside GEMMs and attention), {syncs} host syncs; {total / 1e6:.0f} MB operand "
          f"bytes, {sum(r[2] for r in glue) / 1e6:.0f} MB in the >= 1 MB kernels outside GEMMs and attention")
    by = collections.defaultdict(lambda: [0, 0.0])
    for _, cls, nbytes, _ in big:
        by[cls][0] += 1
        by[cls][1] += nbytes
    small = [r for r in rows if r[2] < SMALL]
    by["small kernels (< 1 MB)"] = [len(small), sum(r[2] for r in small)]
    for cls, (n, nbytes) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"  {cls:80s} {n:3d} kernels {nbytes / 1e6:8.0f} MB")
    if a.ops:
        for name, cls, nbytes, ts in big:
            shapes = " ".join(f"{str(t.dtype)[6:]}{list(t.shape)}{'' if t.is_contiguous() else '~'}" for t in ts)
            print(f"  {name:28s} {nbytes / 1e6:7.1f} MB  {cls.split(', ', 1)[-1][:40]:40s} {shapes}")


if __name__ == "__main__":
    main()
