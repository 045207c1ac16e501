"""Storage layout shared by the quantization kernels, the GEMMs and the deployment packer.

Activations of a quantized linear are int8 ``[M, Kp]`` with the input columns permuted so that the outlier group
of a dual-scale layer comes first: columns ``[0, kop)`` hold the outlier group, ``[kop, Kp)`` the normal group, and
each group is zero-padded to a multiple of :data:`PAD`. Pad columns of the activation are never written (their
weights are zero, so they cannot contribute); a single-group layer has ``kop = 0``.

Stored integers are signed int8: an unsigned quantizer range [0, 2^b - 1] is stored shifted by -2^(b-1), so
``x_q - z = x_s - zs`` with ``zs = z - offset`` and the clamp range shifted alike. int4 weights are packed two per
byte: inside every block of 128 columns, byte j holds column j (low nibble) and column j + 64 (high nibble), so the
GEMM feeds each half of a byte tile straight to the MMA without interleaving registers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch

PAD = 128  # column groups are padded to this; every K tile divides it and int4 packs blocks of this width
INT4_HALF = PAD // 2


def padded(k: int) -> int:
    return -(-int(k) // PAD) * PAD


@dataclass
class ActQuant:
    """Static per-tensor activation quantization of one consumer linear, as its producer kernel applies it.

    ``col_scale[k]`` is the scale of source column k (the group's scale times the smoothing factor), ``col_zero[k]``
    its stored zero point (``z - offset``), ``dest[k]`` its column in the padded layout. ``scale``/``zero`` [2] are
    the per-group values (group 0 = outliers, 1 = normal) the GEMM epilogue needs. ``uniform``: one group, no
    smoothing, identity order, so kernels may use the scalars instead of the vectors.

    Split layout (a dual-scale layer without smoothing: the column scale is the group's scale): ``n_out`` > 0
    outlier columns and ``src[j]`` [K] the source column of the j-th column of the permuted order (the outliers as
    stored, then the normal columns ascending). A producer then reads its input through ``src`` and writes two
    contiguous runs, ``[0, n_out)`` and ``[kop, kop + K - n_out)``, with the two group scales: the same codes as
    scattering through ``dest``, without per-column vectors or scattered stores. ``src_identity``: the input
    already arrives in that order (ffn.2 after :func:`qarvd.deploy.packing.permute_ffn_hidden`), no gather.

    Head layout (``head``, :func:`qarvd.deploy.modules.head_layout`): the outlier run ``[0, n_out)`` as above, then
    every source column in its own order at ``[kop, kop + K)`` with the normal group's step and zero point; the
    outlier columns' places there are holes whose weights are zero. A producer writes the body like a plain layer
    (no gather, whole rows of aligned stores) and gathers only the ``n_out`` outlier columns, for a longer K.
    """

    col_scale: torch.Tensor
    col_zero: torch.Tensor
    dest: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    kp: int
    kop: int
    lo: int
    hi: int
    uniform: bool
    src: Optional[torch.Tensor] = None
    n_out: int = 0
    src_identity: bool = False
    head: bool = False

    @property
    def k(self) -> int:
        return self.col_scale.numel()

    def to(self, device) -> "ActQuant":
        return ActQuant(*(getattr(self, f).to(device) for f in ("col_scale", "col_zero", "dest", "scale", "zero")),
                        self.kp, self.kop, self.lo, self.hi, self.uniform,
                        None if self.src is None else self.src.to(device), self.n_out, self.src_identity, self.head)


@dataclass
class StackedAct:
    """C consumers of one producer (e.g. self_attn.q/k/v reading the same normalised tokens), stacked for a kernel."""

    col_scale: torch.Tensor  # [C, K]
    col_zero: torch.Tensor  # [C, K]
    dest: torch.Tensor  # [C, K] int32
    kop: torch.Tensor  # [C] int32
    kops: tuple  # the same on the host (no device sync to read it)
    kp: int
    lo: int
    hi: int
    uniform: bool
    # split layout of every consumer (ActQuant): outlier counts, group scales / zeros [C, 2], sources [C, K] (None:
    # every consumer reads its input in order)
    nouts: tuple = ()
    gscale: Optional[torch.Tensor] = None
    gzero: Optional[torch.Tensor] = None
    src: Optional[torch.Tensor] = None
    head: bool = False  # every consumer has the head layout (ActQuant): a plain body plus the gathered outliers

    @property
    def count(self) -> int:
        return self.col_scale.shape[0]

    @property
    def split(self) -> bool:
        """Every consumer has the split layout: the producer writes two contiguous runs per consumer."""
        return bool(self.nouts) and not self.head

    def scattered(self) -> "StackedAct":
        """The same quantization through the per-column vectors (dest scatter), without the split layout."""
        return replace(self, nouts=(), gscale=None, gzero=None, src=None, head=False)


def stack_acts(acts: Sequence[ActQuant]) -> StackedAct:
    kps = {a.kp for a in acts}
    ranges = {(a.lo, a.hi) for a in acts}
    if len(kps) != 1 or len(ranges) != 1:
        raise ValueError(f"consumers of one producer need one padded width and clamp range, got {kps} / {ranges}")
    heads = {a.head for a in acts}
    if len(heads) != 1:
        raise ValueError("consumers of one producer need one layout: all in the head layout or none")
    split = {}
    if all(a.n_out > 0 for a in acts):
        split = dict(nouts=tuple(a.n_out for a in acts), gscale=torch.stack([a.scale for a in acts]).float(),
                     gzero=torch.stack([a.zero for a in acts]).float(),
                     src=None if all(a.src_identity for a in acts) else torch.stack([a.src for a in acts]),
                     head=heads.pop())
    return StackedAct(
        torch.stack([a.col_scale for a in acts]), torch.stack([a.col_zero for a in acts]),
        torch.stack([a.dest for a in acts]), torch.tensor([a.kop for a in acts], dtype=torch.int32,
                                                           device=acts[0].col_scale.device),
        tuple(a.kop for a in acts), kps.pop(), *ranges.pop(), all(a.uniform for a in acts), **split)


@dataclass
class PackedGroup:
    """C quantized linears with the same K, N and format, stacked along N for one grouped GEMM launch.

    ``weight``: int8 [C*N, Kp] or packed int4 uint8 [C*N, Kp/2]. Per output channel n and group g (0 outliers,
    1 normal): ``w_scale[g, n]``; ``w_zero[g, n]`` the stored weight zero point (int8: z - offset, corrected with
    the activation row sums; int4: the raw nibble zero point, subtracted in-kernel); ``corr[g, n]`` the exact
    integer correction for the activation zero point; ``ratio[n]`` the integer outlier/normal scale ratio of the
    single-accumulator dual-scale variant. ``a_scale`` [C, 2] and ``kop`` [C] come from each consumer's ActQuant.
    """

    weight: torch.Tensor
    w_scale: torch.Tensor
    w_zero: torch.Tensor
    corr: torch.Tensor
    ratio: torch.Tensor
    bias: Optional[torch.Tensor]
    a_scale: torch.Tensor
    kop: torch.Tensor
    n: int
    kp: int
    count: int
    int4: bool
    dual: str  # "none" | "exact" | "int_ratio"
    has_wzp: bool  # int8 weights with a non-zero zero point: the activation row sums are needed
    has_corr: bool


def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """[N, Kp] unsigned nibbles (0..15, Kp multiple of PAD) -> [N, Kp/2] uint8 in the block layout above."""
    n, kp = u.shape
    if kp % PAD:
        raise ValueError(f"int4 packing needs Kp % {PAD} == 0, got {kp}")
    if int(u.min()) < 0 or int(u.max()) > 15:
        raise ValueError("int4 values must lie in 0..15")
    blocks = u.to(torch.uint8).view(n, kp // PAD, 2, INT4_HALF)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, kp // 2).contiguous()


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: [N, Kp/2] uint8 -> [N, Kp] uint8 nibbles."""
    n, half = p.shape
    blocks = p.view(n, half // INT4_HALF, 1, INT4_HALF)
    return torch.cat([blocks & 15, blocks >> 4], dim=2).reshape(n, half * 2)
