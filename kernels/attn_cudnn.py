"""FP8 (E4M3) attention through cuDNN's fused SDPA (``sdpa_fp8``) via the cudnn-frontend Python graph API.

Why: attention over the growing KV cache is most of the rollout's DiT time at cuDNN's bf16 rate (kernels/NOTES.md),
and the hand-written Triton FP8 kernel (kernels/attn_fp8.py) reached only 1.08x of it. cuDNN's Hopper FP8 forward
kernel runs QK^T and PV on the FP8 tensor cores with per-tensor scales (descale_q/k/v on the inputs, scale_s /
descale_s on the softmax probabilities, scale_o on the output), all read from device memory, so the launch takes no
host values and can be captured in a CUDA graph. On Hopper the output is FP8 too (bf16 output is Blackwell-only in
cuDNN 9.13+): the consumer (the attention output projection's quantizer) multiplies by ``1 / scale_o``.

Layout: q [B, Lq, H, D] and the K/V caches [B, T, H, D] (BSHD, any row stride), as the rollout stores them. One
cuDNN graph per (B, Lq, Lk, H, D, strides) is built on first use and cached: a rollout has 7 chunk shapes.

The frontend package (``nvidia-cudnn-frontend``) is optional: :func:`available` says whether it imports and the GPU
is Hopper or newer; without it the first FP8 attention call raises an ImportError naming the package (no silent
fallback to bf16 attention).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from kernels.act_quant import FP8_MAX
from kernels.act_quant import fp8_ref as quantize_fp8  # x / step rounded to E4M3, saturated: x = code * step
# Softmax probabilities lie in [0, 1]: scale_s maps 1 to the E4M3 maximum, as Transformer Engine does.
SCALE_S = FP8_MAX


def _cudnn():
    try:
        import cudnn  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError("FP8 cuDNN attention needs the nvidia-cudnn-frontend package "
                          "(pip install nvidia-cudnn-frontend)") from e
    return cudnn


def available(device: Optional[torch.device] = None) -> bool:
    """True when cudnn-frontend imports and the GPU is Hopper or newer (FP8 SDPA forward)."""
    if not torch.cuda.is_available():
        return False
    try:
        _cudnn()
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def fp8_scalars(scales: torch.Tensor) -> torch.Tensor:
    """The six scalars cuDNN's graph reads, [6, 1, 1, 1] float32 on ``scales``' device, from ``scales`` [4] =
    dequantization steps of q, k, v and the output (x = code * step): descale_q/k/v = steps, descale_s = 1 / SCALE_S,
    scale_s = SCALE_S, scale_o = 1 / step_o."""
    s = scales.reshape(4).float()
    one = torch.ones_like(s[0])
    return torch.stack([s[0], s[1], s[2], one / SCALE_S, one * SCALE_S, one / s[3]]).reshape(6, 1, 1, 1)


class CudnnFp8Attention:
    """Callable ``(q8, k8, v8, scalars, out8) -> out8``: softmax(q k^T / sqrt(D)) v with FP8 operands.

    ``scalars``: :func:`fp8_scalars` of the layer (a persistent device tensor: a captured CUDA graph keeps reading
    it, so per-layer scales stay per layer and can be changed in place between replays).
    """

    def __init__(self, device: torch.device) -> None:
        cudnn = _cudnn()
        self.device = torch.device(device)
        self.handle = cudnn.create_handle()
        self.graphs: dict = {}
        self.workspace = torch.empty(0, dtype=torch.uint8, device=self.device)

    def _graph(self, q: torch.Tensor, k: torch.Tensor, out: torch.Tensor):
        key = (tuple(q.shape), tuple(q.stride()), tuple(k.shape), tuple(k.stride()), tuple(out.stride()))
        if key in self.graphs:
            return self.graphs[key]
        cudnn = _cudnn()
        e4m3, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        g = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=f32, compute_data_type=f32, handle=self.handle)

        def bhsd(t):  # cuDNN wants [B, H, S, D] dims; BSHD storage is expressed through the strides
            return dict(dim=[t.shape[0], t.shape[2], t.shape[1], t.shape[3]],
                        stride=[t.stride(0), t.stride(2), t.stride(1), t.stride(3)])

        tq = g.tensor(name="q", data_type=e4m3, **bhsd(q))
        tk = g.tensor(name="k", data_type=e4m3, **bhsd(k))
        tv = g.tensor(name="v", data_type=e4m3, **bhsd(k))
        sc = [g.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)
              for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")]
        o, _, amax_s, amax_o = g.sdpa_fp8(q=tq, k=tk, v=tv, descale_q=sc[0], descale_k=sc[1], descale_v=sc[2],
                                          descale_s=sc[3], scale_s=sc[4], scale_o=sc[5], generate_stats=False,
                                          attn_scale=1.0 / math.sqrt(q.shape[-1]), use_causal_mask=False,
                                          name="sdpa_fp8")
        o.set_output(True).set_data_type(e4m3).set_dim(bhsd(out)["dim"]).set_stride(bhsd(out)["stride"])
        for a in (amax_s, amax_o):
            a.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        amax = torch.empty(2, 1, 1, 1, 1, dtype=torch.float32, device=self.device)
        size = g.get_workspace_size()
        if size > self.workspace.numel():
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("cuDNN FP8 attention: first call of a new shape inside CUDA graph capture; "
                                   "run one eager forward first (the graph and workspace are built then)")
            self.workspace = torch.empty(size, dtype=torch.uint8, device=self.device)
        entry = (g, (tq, tk, tv, o, amax_s, amax_o, sc), amax)
        self.graphs[key] = entry
        return entry

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scalars: torch.Tensor,
                 out: Optional[torch.Tensor] = None):
        if q.dtype != torch.float8_e4m3fn or k.dtype != q.dtype or v.dtype != q.dtype:
            raise ValueError(f"FP8 attention takes float8_e4m3fn q/k/v, got {q.dtype}, {k.dtype}, {v.dtype}")
        if k.shape != v.shape or k.stride() != v.stride():
            raise ValueError("k and v must have the same shape and strides")
        out = out if out is not None else torch.empty(q.shape, dtype=q.dtype, device=q.device)
        g, (tq, tk, tv, to, tas, tao, sc), amax = self._graph(q, k, out)
        cudnn = _cudnn()
        cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(q.device).cuda_stream)
        pack = {tq: q, tk: k, tv: v, to: out, tas: amax[0], tao: amax[1]}
        pack.update({t: scalars[i] for i, t in enumerate(sc)})
        g.execute(pack, self.workspace, handle=self.handle)
        return out


def fp8_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """What the cuDNN FP8 graph computes, in float32 torch (CPU or GPU): float inputs are quantized with ``scales``
    = (q, k, v, o) steps (FP8 inputs are taken as codes), the softmax probabilities with step 1 / SCALE_S and the
    output with step scales[3]; returns the output's FP8 codes [B, Lq, H, D] (dequantize: * scales[3]).
    Used to measure the quality cost of FP8 attention on the embedded model without a GPU."""
    s = [float(x) for x in scales.reshape(4)]
    qf, kf, vf = [(t if t.dtype == torch.float8_e4m3fn else quantize_fp8(t, st)).float() * st
                  for t, st in zip((q, k, v), s)]
    logits = torch.einsum("bqhd,bkhd->bhqk", qf, kf) / math.sqrt(q.shape[-1])
    m = logits.amax(-1, keepdim=True)
    p = torch.exp(logits - m)
    denom = p.sum(-1, keepdim=True)
    # flash attention quantizes the unnormalised probabilities exp(s - rowmax) (in [0, 1]) before PV
    p8 = quantize_fp8(p, 1.0 / SCALE_S).float() / SCALE_S
    o = torch.einsum("bhqk,bkhd->bqhd", p8, vf) / denom.permute(0, 2, 1, 3)
    return quantize_fp8(o, s[3])
