"""CausalWan DiT: the Wan2.1 text-to-video transformer run chunk-causally, as in self-forcing / causal-forcing.

One class serves every ARVD of the project, from the embedded CPU model to Wan2.1-T2V-1.3B, with the original
module names (``blocks.N.self_attn.q``, ``cross_attn.k``, ``ffn.0`` ...) so that checkpoints load strictly and every
quantization path that runs in CI runs on the real architecture.

Tensor layout: video latents are ``[B, C, F, H, W]``; tokens are ``[B, F*h*w, dim]`` with frames outermost.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class WanConfig:
    """Architecture hyper-parameters (defaults: Wan2.1-T2V-1.3B)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 16
    out_dim: int = 16
    patch_size: Sequence[int] = field(default_factory=lambda: (1, 2, 2))
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    rope_max_positions: int = 1024

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise ValueError(f"head_dim={self.dim // self.num_heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d


HALF_DTYPES = (torch.bfloat16, torch.float16)  # 16-bit activations (see _eager_16bit)


# ----------------------------------------------------------------------------------------------- embeddings
def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding, computed in float64: cosine half first, then sine half."""
    half = dim // 2
    position = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device).div(half))
    sinusoid = torch.outer(position, freqs)
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Split of head_dim over (time, height, width) as in Wan: 44/42/42 for head_dim 128."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_angles(head_dim: int, max_positions: int, theta: float) -> list[torch.Tensor]:
    """Per-axis angle tables [max_positions, axis_dim/2] in float64 (Wan's rope_params)."""
    tables = []
    for d in rope_split(head_dim):
        inv = 1.0 / torch.pow(theta, torch.arange(0, d, 2, dtype=torch.float64) / d)
        tables.append(torch.outer(torch.arange(max_positions, dtype=torch.float64), inv))
    return tables


def rope_pairs(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair rotation tables [L, D/2, 2] of the 16-bit RoPE path: ``(cos, sin)`` and ``(-sin, cos)``, two views of
    one [L, D/2, 3] table (two small kernels; computed once per block forward and shared by q and k)."""
    tab = torch.stack((-sin, cos, sin), dim=-1)
    return tab[..., 1:], tab[..., :2]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               pairs: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of ``x`` [B, L, H, D] by the angles behind cos/sin [L, D/2].

    The eager bf16 path (:func:`_eager_16bit`; ``pairs`` from :func:`rope_pairs`, else computed here): two kernels
    over the pair view [..., D/2, 2] of x, ``x[2i] * (cos, sin)`` into a float32 product, then one fused multiply-add
    ``+ x[2i+1] * (-sin, cos)`` stored contiguously in x's dtype. The FMA rounds the second product inside the sum
    instead of separately, so an element can differ from the two-rounding form below only where float32 rounding
    decides a bf16 rounding tie; that form took six mixed-dtype kernels with stride-2 bf16 reads and writes.
    Otherwise: float32 math (float64 stays float64) on strided views of x, each rotated half stored straight into
    x's dtype, exactly the numbers of upcasting, rotating and casting back."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    if _needs_grad(x) or torch.compiler.is_compiling():  # no out= into strided views there (autograd, dynamo)
        return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2).to(x.dtype)
    out = torch.empty_like(x)
    if _eager_16bit(x):
        t0, t1 = rope_pairs(cos, sin) if pairs is None else pairs
        xp = x.unflatten(-1, (-1, 2))
        prod = xp[..., :1] * t0[None, :, None]  # (x0 cos, x0 sin), float32
        torch.addcmul(prod, xp[..., 1:], t1[None, :, None], out=out.unflatten(-1, (-1, 2)))
        return out
    torch.sub(x0 * c, x1 * s, out=out[..., 0::2])
    torch.add(x0 * s, x1 * c, out=out[..., 1::2])
    return out


# ----------------------------------------------------------------------------------------------- norms
def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64, so double-precision reference tests stay exact)."""
    return x if x.dtype == torch.float64 else x.float()


def _needs_grad(*tensors: torch.Tensor) -> bool:
    """Autograd records this op (training): ``out=`` variants, which it cannot differentiate, are off."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _eager_16bit(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """The eager bf16 path: 16-bit activations, no autograd, no autocast. Only there do RoPE, modulation and RMSNorm
    take their fused forms (fewer kernels and bytes, rounding differences at bf16 ties); training, autocast and
    float32 / float64 models keep their arithmetic exactly."""
    return (x.dtype in HALF_DTYPES and not _needs_grad(x, *others)
            and not (x.device.type != "meta" and torch.is_autocast_enabled(x.device.type)))


def _into(dtype: torch.dtype, op, *args) -> torch.Tensor:
    """``op(*args)`` computed in the promoted dtype (float32 for bf16 activations and float32 modulation) and stored
    once in ``dtype``: the numbers of ``op(*args).to(dtype)`` without the promoted result in memory."""
    if _needs_grad(*args):
        return op(*args).to(dtype)
    out = torch.empty(torch.broadcast_shapes(*(a.shape for a in args)), dtype=dtype, device=args[0].device)
    return op(*args, out=out)


def _mul_add(h: torch.Tensor, mult: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """``h * mult + add`` (float32 ``mult``/``add`` broadcast over a 16-bit or float32 ``h``) stored in h's dtype.

    The eager bf16 path (:func:`_eager_16bit`): one fused multiply-add kernel (``torch.addcmul``), float32 arithmetic
    with the product rounded inside the FMA, one store; the two-step form runs two mixed-dtype broadcast kernels and
    writes and re-reads a float32 [B, L, dim] intermediate. The results can differ only where the float32 rounding
    of the product decides a bf16 rounding tie. Otherwise the two-step float32 arithmetic, exactly as before."""
    if _eager_16bit(h, mult, add):
        out = torch.empty(torch.broadcast_shapes(h.shape, mult.shape, add.shape), dtype=h.dtype, device=h.device)
        return torch.addcmul(add, h, mult, out=out)
    return _into(h.dtype, torch.add, h * mult, add)


class WanRMSNorm(nn.Module):
    """RMSNorm over the full model dim (across heads), computed in fp32 as in Wan: the normalised input is rounded to
    the input's dtype, then multiplied by the weight.

    The eager bf16 path (:func:`_eager_16bit`) normalises through ``F.rms_norm`` without a weight: on CUDA one fused
    kernel that reads the 16-bit input, reduces in float32 and stores the normalised input once (the upcast
    formulation below runs five kernels over [B, L, dim], two of them writing float32 copies); its float32 sum of
    squares runs in another order, so an element can differ at a bf16 rounding tie. On the CPU ``F.rms_norm`` is
    that upcast formulation, bit for bit. Other inputs compute exactly as before."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _eager_16bit(x):  # one fused kernel on CUDA; on the CPU the same upcast formulation as below
            return F.rms_norm(x, self.weight.shape, None, self.eps) * self.weight
        xf = _upcast(x)
        return _into(x.dtype, torch.mul, xf, torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm in fp32 arithmetic, output in the input's dtype (Wan keeps norms in full precision).

    F.layer_norm accumulates and normalises bf16/fp16 inputs in float32 itself, so the input is not upcast by a
    separate copy (one kernel instead of three in the eager bf16 path; outputs can differ from the upcast
    formulation only by the float32 summation order, i.e. at the bf16 rounding, e.g. 1.7e-5 of the elements on the
    CPU); float32 and float64 inputs compute exactly as before."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scaled dot-product attention on [B, L, H, D] tensors; ``mask`` is a bool [Lq, Lk] (True = attend)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


# ----------------------------------------------------------------------------------------------- cache
class LayerCache:
    """One block's part of a :class:`RolloutCache`: self-attention K/V [B, T, H, D] and the cross-attention K/V.

    The block receives this object, not a layer index into per-layer lists: ``torch.compile`` then sees the same
    inputs (tensors of one shape) for every layer and compiles the block once, instead of specialising on each
    Python-int layer index. ``k_scale`` [B, H, T] float32 holds one scale per (token, head) when the keys are int8
    codes (INT8 attention, kernels/attn_int8.py). ``early`` (16-bit K/V of the same shape) is present when the
    attention is quantized in some chunks only (qarvd.deploy.fast, ``attention_chunks``): the other chunks attend in
    16 bits on it, and each chunk's K/V are written into both."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, k_scale: Optional[torch.Tensor] = None,
                 early: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        self.k, self.v, self.k_scale = k, v, k_scale
        self.early = early  # 16-bit K/V beside the quantized ones, for the chunks that attend in bf16
        self.cross: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.max_tokens = k.shape[1]


class RolloutCache:
    """Per-video state of a chunk-wise rollout: one :class:`LayerCache` per block and the embedded text context.

    Self-attention K/V live at absolute token positions, so a chunk's forward writes its tokens at
    ``[start, end)`` and attends to ``[0, end)``: every earlier (clean) chunk plus the current chunk bidirectionally.
    Denoising steps overwrite the chunk's slot; the t=0 refresh pass leaves the clean K/V there.
    """

    def __init__(self, cfg: WanConfig, batch: int, max_tokens: int, key_dtype: torch.dtype, value_dtype: torch.dtype,
                 device: torch.device, early_dtype: Optional[torch.dtype] = None) -> None:
        shape = (batch, max_tokens, cfg.num_heads, cfg.head_dim)

        def scales():
            if key_dtype != torch.int8:
                return None
            return torch.zeros((batch, cfg.num_heads, max_tokens), dtype=torch.float32, device=device)

        def early():
            if early_dtype is None:
                return None
            return tuple(torch.zeros(shape, dtype=early_dtype, device=device) for _ in range(2))

        self.layers = [LayerCache(torch.zeros(shape, dtype=key_dtype, device=device),
                                  torch.zeros(shape, dtype=value_dtype, device=device), scales(), early())
                       for _ in range(cfg.num_layers)]
        self.context: Optional[torch.Tensor] = None  # text_embedding(context), computed once per video
        self.max_tokens = max_tokens


# ----------------------------------------------------------------------------------------------- attention
class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(self, x, cos, sin, kv: Optional[LayerCache], token_start: int, mask):
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.num_heads, self.head_dim)
        k = self.norm_k(self.k(x)).view(b, n, self.num_heads, self.head_dim)
        v = self.v(x).view(b, n, self.num_heads, self.head_dim)
        pairs = rope_pairs(cos, sin) if _eager_16bit(q) else None  # shared by q and k
        q, k = apply_rope(q, cos, sin, pairs), apply_rope(k, cos, sin, pairs)
        if kv is not None:
            end = token_start + n
            if end > kv.max_tokens:
                raise ValueError(f"KV cache holds {kv.max_tokens} tokens; this forward needs {end}")
            kv.k[:, token_start:end] = k
            kv.v[:, token_start:end] = v
            k, v = kv.k[:, :end], kv.v[:, :end]
        out = attention(q, k, v, mask)
        return self.o(out.flatten(2))


class WanCrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V [B, L, H, D] of the (embedded) text context: computed once per video and kept in the cache."""
        b = context.shape[0]
        k = self.norm_k(self.k(context)).view(b, -1, self.num_heads, self.head_dim)
        return k, self.v(context).view(b, -1, self.num_heads, self.head_dim)

    def forward(self, x, context, kv: Optional[LayerCache]):
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.num_heads, self.head_dim)
        if kv is not None and kv.cross is not None:
            k, v = kv.cross
        else:
            k, v = self.context_kv(context)
            if kv is not None:
                kv.cross = (k, v)
        return self.o(attention(q, k, v).flatten(2))


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm1 = WanLayerNorm(dim, cfg.eps)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = WanLayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = WanLayerNorm(dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e, context, cos, sin, kv, token_start, frames, mask):
        """x [B, F*S, dim]; e [B, F, 6, dim] per-latent-frame adaLN parameters; kv: this block's LayerCache or None."""
        b, n, d = x.shape
        shift0, scale0, gate0, shift1, scale1, gate1 = (self.modulation.unsqueeze(1) + e.float()).unbind(dim=2)

        def modulate(h, shift, scale):  # float32 modulation, stored in x's dtype
            return _mul_add(h.view(b, frames, -1, d), 1 + scale.unsqueeze(2), shift.unsqueeze(2)).flatten(1, 2)

        def gated(h, gate):
            return _into(x.dtype, torch.mul, h.view(b, frames, -1, d), gate.unsqueeze(2)).flatten(1, 2)

        y = self.self_attn(modulate(self.norm1(x), shift0, scale0), cos, sin, kv, token_start, mask)
        x = x + gated(y, gate0)
        x = x + self.cross_attn(self.norm3(x), context, kv)
        y = self.ffn(modulate(self.norm2(x), shift1, scale1))
        return x + gated(y, gate1)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, temb, frames):
        """x [B, F*S, dim]; temb [B, F, dim]."""
        b, n, d = x.shape
        shift, scale = (self.modulation.unsqueeze(1) + temb.float().unsqueeze(2)).unbind(dim=2)
        h = self.norm(x).view(b, frames, -1, d)
        h = _mul_add(h, 1 + scale.unsqueeze(2), shift.unsqueeze(2)).flatten(1, 2)
        return self.head(h)


# ----------------------------------------------------------------------------------------------- model
class CausalWanModel(nn.Module):
    """Wan2.1 DiT with chunk-wise KV-cache inference.

    ``forward`` predicts the flow for a chunk of latent frames. With a :class:`RolloutCache` it appends the
    chunk's K/V at ``frame_offset`` and attends causally over the cache; without one it attends over the given
    sequence, optionally under a bool ``attn_mask`` (e.g. the chunk-causal mask of a full recompute or of training).
    """

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self._rope = rope_angles(cfg.head_dim, cfg.rope_max_positions, cfg.rope_theta)  # not state: derived
        self._rope_cache: dict = {}

    # -- helpers ---------------------------------------------------------------------------------------
    def tokens_per_frame(self, height: int, width: int) -> int:
        _, ph, pw = self.cfg.patch_size
        return (height // ph) * (width // pw)

    def rope_tables(self, frame_pos: torch.Tensor, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [F*h*w, head_dim/2] for tokens at the given absolute latent-frame positions."""
        key = (tuple(frame_pos.tolist()), h, w, str(device))
        if key not in self._rope_cache:
            if int(frame_pos.max()) >= self.cfg.rope_max_positions:
                raise ValueError(f"frame position {int(frame_pos.max())} exceeds rope_max_positions")
            ft, fh, fw = self._rope
            f = frame_pos.numel()
            ang = torch.cat(
                [
                    ft[frame_pos.cpu()].view(f, 1, 1, -1).expand(f, h, w, -1),
                    fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                    fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
                ],
                dim=-1,
            ).reshape(f * h * w, -1)
            if len(self._rope_cache) > 64:
                self._rope_cache.clear()
            self._rope_cache[key] = (ang.cos().float().to(device), ang.sin().float().to(device))
        return self._rope_cache[key]

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        return self.text_embedding(context)

    def time_modulation(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B, F] -> (temb [B, F, dim], e0 [B, F, 6, dim]) in the time embedding's dtype."""
        b, f = t.shape
        w = self.time_embedding[0].weight
        sin = sinusoidal_embedding_1d(self.cfg.freq_dim, t.flatten()).to(w.dtype)
        temb = self.time_embedding(sin)
        e0 = self.time_projection(temb).unflatten(1, (6, self.cfg.dim))
        return temb.view(b, f, -1), e0.view(b, f, 6, -1)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        cache: Optional[RolloutCache] = None,
        frame_offset: int = 0,
        frame_pos: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x [B, C, F, H, W] noisy latents; t [B, F] timesteps; context [B, L, text_dim] -> flow [B, C, F, H, W]."""
        cfg = self.cfg
        if x.dim() != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"expected latents [B, {cfg.in_dim}, F, H, W], got {tuple(x.shape)}")
        b, _, frames, height, width = x.shape
        pt, ph, pw = cfg.patch_size
        if pt != 1:
            raise ValueError("CausalWanModel needs a temporal patch size of 1 (one token group per latent frame)")
        h, w = height // ph, width // pw
        if t.shape != (b, frames):
            raise ValueError(f"t must be [B, F] = {(b, frames)}, got {tuple(t.shape)}")
        dtype = self.patch_embedding.weight.dtype

        tokens = self.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2)  # [B, F*h*w, dim]
        if frame_pos is None:
            frame_pos = torch.arange(frame_offset, frame_offset + frames)
        cos, sin = self.rope_tables(frame_pos, h, w, x.device)
        temb, e0 = self.time_modulation(t, dtype)

        if cache is not None and cache.context is not None:
            ctx = cache.context
        else:
            ctx = self.embed_text(context.to(dtype))
            if cache is not None:
                cache.context = ctx
        token_start = frame_offset * h * w
        layers = cache.layers if cache is not None else [None] * len(self.blocks)
        for block, kv in zip(self.blocks, layers):
            tokens = block(tokens, e0, ctx, cos, sin, kv, token_start, frames, attn_mask)
        out = self.head(tokens, temb, frames)  # [B, F*h*w, pt*ph*pw*C]
        return self.unpatchify(out, frames, h, w)

    def unpatchify(self, out: torch.Tensor, frames: int, h: int, w: int) -> torch.Tensor:
        pt, ph, pw = self.cfg.patch_size
        c = self.cfg.out_dim
        b = out.shape[0]
        out = out.view(b, frames, h, w, pt, ph, pw, c)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # b c f pt h ph w pw
        return out.reshape(b, c, frames * pt, h * ph, w * pw)

    def cache_dtype_device(self) -> tuple:
        """(key dtype, value dtype, device, early dtype) of new KV caches: the parameters' dtype unless a deployment
        backend set ``kv_cache_dtype`` (both; float8 codes for FP8 attention) or ``key_cache_dtype`` (keys only; int8
        codes for INT8 attention), qarvd.deploy.fast; ``early_cache_dtype`` (or None) adds the 16-bit K/V of a
        chunk-adaptive rollout's chunks before the switch."""
        p = next(self.parameters())
        value = getattr(self, "kv_cache_dtype", None) or p.dtype
        return getattr(self, "key_cache_dtype", None) or value, value, p.device, getattr(self, "early_cache_dtype", None)

    def new_cache(self, batch: int, max_frames: int, height: int, width: int) -> RolloutCache:
        return RolloutCache(self.cfg, batch, max_frames * self.tokens_per_frame(height, width),
                            *self.cache_dtype_device())


def chunk_causal_mask(frames: int, frames_per_chunk: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Bool [L, L] mask: a token sees every token of its own chunk and of all earlier chunks (full recompute)."""
    chunk_of_token = torch.arange(frames, device=device).div(frames_per_chunk, rounding_mode="floor")
    chunk_of_token = chunk_of_token.repeat_interleave(tokens_per_frame)
    return chunk_of_token[:, None] >= chunk_of_token[None, :]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
