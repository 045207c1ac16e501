"""SageAttention2 (thu-ml/SageAttention, Apache-2.0) as the fused block's quantized self-attention (``sage2``).

Why: the W8A8 rollout spends ~1.7 s of its 3.0 s in bf16 attention (FA4), and the two quantized attentions at hand
each miss one side of issue 22's target: cuDNN's FP8 attention is fast but doubles the embedded model's latent MSE
(the E4M3 keys: their 3-bit mantissa costs the error, docs/experiments/fp8_attention_ablation.md; subtracting the
mean key, ``kernel.smooth_keys``, leaves 1.95x against 1.97x, results/fp8_attention_keys/), and this project's Triton
INT8 Q.K^T kernel keeps W8A8 quality but is slower than FA4. SageAttention2's Hopper kernel has both halves: INT8 Q.K^T (wgmma) on keys with the sequence mean
subtracted, FP8 P.V with per-channel V scales and a float32 buffer around the FP22 accumulator, warp-specialised
with TMA (the SageAttention2 paper, arXiv 2411.10958; ~870 TOPS at head dim 128 on the H100 in its README).

Numerics of ``sageattn_qk_int8_pv_fp8_cuda_sm90`` (``qk_quant_gran="per_thread"``, ``pv_accum_dtype="fp32+fp32"``,
``smooth_k=True``), which :func:`sage_attention_ref` emulates in float32 torch for the CPU:

- keys: k - mean(k over this call's keys, per batch, head and channel) (softmax-invariant); INT8 codes with one
  scale per (batch, head, 128-key block, key index mod 8 // 2): the 32 keys one thread's wgmma fragment holds;
- queries: one scale per (batch, head, 16-row block, row mod 8): 2 rows;
  scale = amax / 127 + 1e-7, codes rounded half away from zero;
- P: exp(s - rowmax) * 448 cast to E4M3 (round to nearest even); the row sum from the unrounded P;
- V: E4M3 codes with one scale per (batch, head, channel) = amax over the call's values / 448; P.V in float32;
- output in q's dtype.

The cache stays bf16: each call quantizes q, the keys and the values it reads (the library's own Triton / CUDA
quantizers), so this costs one pass over K and V per forward on top of the kernel; keeping codes in the cache, as
``int8_sage`` does for its keys, is the next step. The package is optional and imported on first use; it has no
wheel on PyPI for its CUDA kernels (1.0.6 there is the Triton-only SageAttention1), so it is built from source:
``TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation git+https://github.com/thu-ml/SageAttention``. Its 2.2.0
kernels launch on the legacy default stream, which CUDA graphs do not capture: for ``kernel.graphs=true`` build it
with the launches on ``at::cuda::getCurrentCUDAStream()`` (kernels/NOTES.md, session 9); :func:`_check_stream`
refuses graphs otherwise.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

FP8_MAX = 448.0
INSTALL = ("SageAttention2 with its sm90 kernels: TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation "
           "git+https://github.com/thu-ml/SageAttention (PyPI's sageattention 1.0.6 has no CUDA kernels)")


def _sm90():
    try:
        import sageattention  # noqa: PLC0415 - optional dependency, imported on first use
        from sageattention.core import SM90_ENABLED  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(f"kernel.attention=sage2 needs {INSTALL}") from e
    if not SM90_ENABLED:
        raise ImportError(f"the installed sageattention has no sm90 kernels; kernel.attention=sage2 needs {INSTALL}")
    return sageattention.sageattn_qk_int8_pv_fp8_cuda_sm90


def available(device: Optional[torch.device] = None) -> bool:
    """True when the package imports with its sm90 kernels and the GPU is a Hopper (sm_90)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability(device) != (9, 0):
        return False
    try:
        _sm90()
    except ImportError:
        return False
    return True


_STREAM_OK: dict = {}  # device -> whether the installed kernels launch on PyTorch's current stream


def _check_stream(device: torch.device) -> None:
    """SageAttention 2.2.0's CUDA launches name no stream: they run on the legacy default stream, so a CUDA graph
    captured around them records nothing and its replays leave the output unwritten (seen on an H100: a "1.88 s"
    rollout that skipped attention). Once per device, before any capture, replay a small call in a graph and compare
    with the eager call; refuse graphs when they differ (build with the launches on ``at::cuda::
    getCurrentCUDAStream()``, kernels/NOTES.md, or use kernel.graphs=false)."""
    if device in _STREAM_OK:
        ok = _STREAM_OK[device]
    elif torch.cuda.is_current_stream_capturing():
        raise RuntimeError("kernel.attention=sage2: first call inside CUDA graph capture; run one eager forward first")
    else:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, 256, 2, 128, device=device, generator=g).to(torch.bfloat16) for _ in range(3))
        run = lambda: _sm90()(q, k, v, tensor_layout="NHD", is_causal=False, qk_quant_gran="per_thread",  # noqa: E731
                              pv_accum_dtype="fp32+fp32", smooth_k=True)
        eager = run().clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="relaxed"):
            out = run()
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize(device)
        ok = _STREAM_OK[device] = bool(torch.equal(out, eager))
    if not ok and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("the installed sageattention launches its CUDA kernels on the legacy default stream, so "
                           "CUDA graphs would skip them: rebuild it with the launches on the current stream "
                           "(kernels/NOTES.md, session 9) or set kernel.graphs=false")


def sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v with SageAttention2's Hopper kernel; [B, Lq, H, D] q and [B, Lk, H, D] k, v (cache
    slices: unit stride in D), bf16/fp16 (float32 inputs go through bf16); returns [B, Lq, H, D] in q's dtype."""
    attend = _sm90()
    _check_stream(q.device)
    dtype = q.dtype
    if dtype == torch.float32:
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    out = attend(q, k, v, tensor_layout="NHD", is_causal=False, qk_quant_gran="per_thread", pv_accum_dtype="fp32+fp32",
                 smooth_k=True)
    return out.to(dtype)


def kernel_only(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """A thunk that runs only the attention kernel of :func:`sage_attention` on codes made once here (the library's
    own quantizers, as one call makes them): what the attention would cost with codes kept in the cache, for the
    benchmark's ``sage2_kernel`` entry."""
    from sageattention import sm90_compile  # noqa: PLC0415 - optional dependency
    from sageattention.quant import per_channel_fp8  # noqa: PLC0415
    from sageattention.triton.quant_per_thread import per_thread_int8  # noqa: PLC0415

    km = k.mean(dim=1, keepdim=True)
    q8, qs, k8, ks = per_thread_int8(q, k, km, tensor_layout="NHD", BLKQ=64, WARPQ=16, BLKK=128, WARPK=128)
    pad = (-k.shape[1]) % 128
    vp = torch.cat([v, v.new_zeros(v.shape[0], pad, *v.shape[2:])], 1) if pad else v
    v8, vs, _ = per_channel_fp8(vp, tensor_layout="NHD", smooth_v=False)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    scale = q.shape[-1] ** -0.5
    return lambda: sm90_compile.qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf(q8, k8, v8, out, qs, ks, vs, 0, 0,
                                                                                     3, scale, 0)


def _int8_groups(x: torch.Tensor, split: tuple, shared: tuple) -> torch.Tensor:
    """x [B, L, H, D] float32 with the library's symmetric INT8 rounding: rows in blocks of prod(split), each block's
    row index split into ``split`` digits; rows that differ only in the ``shared`` digits share one scale. Returns
    codes x scale."""
    b, n, h, d = x.shape
    block = math.prod(split)
    pad = (-n) % block
    xp = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)).view(b, (n + pad) // block, *split, h, d)
    dims = tuple(2 + i for i in shared) + (xp.dim() - 1,)
    scale = xp.abs().amax(dims, keepdim=True) / 127.0 + 1e-7
    y = xp / scale
    codes = torch.trunc(y + 0.5 * torch.where(y >= 0, 1.0, -1.0)).clamp(-128, 127)
    return (codes * scale).view(b, n + pad, h, d)[:, :n]


def sage_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`sage_attention`'s numerics in float32 torch on any device (the CPU path of ``kernel.attention=sage2``
    and the reference of the GPU test; see the module docstring)."""
    dtype = q.dtype
    q, k, v = (t.float() for t in (q, k, v))
    k = k - k.mean(1, keepdim=True)
    qd = _int8_groups(q, (2, 8), shared=(0,))  # row = 8a + r: rows r and r + 8 of a 16-row block share a scale
    kd = _int8_groups(k, (16, 4, 2), shared=(0, 2))  # key = 8a + 2c + e: c names the scale in a 128-key block
    vs = v.abs().amax(1, keepdim=True) / FP8_MAX + 1e-12
    v8 = (v / vs).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    s = torch.einsum("bqhd,bkhd->bhqk", qd, kd) / math.sqrt(q.shape[-1])
    p = torch.exp(s - s.amax(-1, keepdim=True))
    p8 = (p * FP8_MAX).to(torch.float8_e4m3fn).float()
    o = torch.einsum("bhqk,bkhd->bqhd", p8, v8) / (FP8_MAX * p.sum(-1)).permute(0, 2, 1)[..., None] * vs
    return o.to(dtype)
