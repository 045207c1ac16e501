"""kernel.attention=sage2 (kernels/attn_sage.py) on the CPU: the float32 emulation of SageAttention2's numerics
(its scale groups, rounding and FP8 P.V) and the fused block's use of it through torch_ref; the kernel itself
against the emulation in test_kernels_gpu.py."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kernels import attn_sage
from qarvd.app.deploy_quality import attention_choice
from qarvd.deploy import accelerate_
from qarvd.deploy.backends import TorchRefBackend, sdpa_context

from test_attention_fp8 import _video, real  # noqa: F401 - the same small real model and rollout


def test_emulation_scale_groups_follow_the_kernel_fragments():
    """Keys 8a + 2c + e of a 128-key block share a scale per c (one thread's wgmma fragment); query rows r and r + 8
    of a 16-row block share one."""
    x = torch.zeros(1, 256, 1, 4)
    x[0, 0], x[0, 9], x[0, 2], x[0, 128] = 1.0, 100.0, 1.0, 1.0  # 0 and 9 share (c = 0); 2 (c = 1), 128 (block 2) not
    k = attn_sage._int8_groups(x, (16, 4, 2), shared=(0, 2))
    assert float(k[0, 0, 0, 0]) == pytest.approx(100 / 127, rel=1e-4)  # code 1 at the shared scale
    assert float(k[0, 2, 0, 0]) == pytest.approx(1.0, rel=1e-4) and float(k[0, 128, 0, 0]) == pytest.approx(1.0, rel=1e-4)
    y = torch.zeros(1, 16, 1, 4)
    y[0, 1], y[0, 9], y[0, 2] = 1.0, 127.0, 1.0
    qd = attn_sage._int8_groups(y, (2, 8), shared=(0,))
    assert float(qd[0, 1, 0, 0]) == pytest.approx(1.0, rel=1e-4) and float(qd[0, 9, 0, 0]) == pytest.approx(127.0, rel=1e-4)
    assert float(qd[0, 2, 0, 0]) == pytest.approx(1.0, rel=1e-4)


def test_emulation_error_is_small_and_mean_key_invariant():
    """A few percent from exact attention (FP8 P and V dominate on random values), and adding one vector to every
    key changes nothing but rounding: the mean key is subtracted before the INT8 codes."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 70, 2, 64, generator=g) * 2, torch.randn(2, 300, 2, 64, generator=g) * 2, \
        torch.randn(2, 300, 2, 64, generator=g)
    exact = F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    out = attn_sage.sage_attention_ref(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert 1e-3 < float((out.double() - exact).norm() / exact.norm()) < 0.05
    shifted = attn_sage.sage_attention_ref(q, k + torch.randn(64, generator=g) * 5, v)
    assert float((shifted - out).norm() / out.norm()) < 1e-4


def test_sage2_runs_in_the_fused_block_in_the_chosen_chunks(real):
    """torch_ref emulates sage2 in the fused block's self-attention: the latents move a little from bf16 attention;
    with attention_chunks=[1] chunk 0 attends in bf16 (its frames equal the bf16 rollout's bit for bit) and chunk 1
    in sage2, over the same bf16 cache; the eager path refuses it; SDPA keeps PyTorch's choice for the
    cross-attention."""
    ctx = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(4))
    base = _video(accelerate_(copy.deepcopy(real), TorchRefBackend()), ctx)
    got = _video(accelerate_(copy.deepcopy(real), TorchRefBackend(attention="sage2")), ctx)
    assert 1e-5 < float((got - base).norm() / base.norm()) < 0.1
    late = _video(accelerate_(copy.deepcopy(real), TorchRefBackend(attention="sage2", attention_chunks=[1])), ctx)
    assert torch.equal(late[:, :2], base[:, :2]) and not torch.equal(late[:, :2], got[:, :2])
    assert not torch.equal(late[:, 2:4], base[:, 2:4])
    with pytest.raises(ValueError, match="fused=true"):
        accelerate_(copy.deepcopy(real), TorchRefBackend(attention="sage2", fused=False))
    with pytest.raises(ValueError, match="default@2"):
        attention_choice("default@2", 3)
    assert attention_choice("sage2", 3) == ("sage2", None) and attention_choice("sage2@2", 3) == ("sage2", (2,))
    assert type(sdpa_context("sage2")).__name__ == "nullcontext"
    if not attn_sage.available():
        with pytest.raises(ImportError, match="SageAttention"):
            attn_sage.sage_attention(*(torch.zeros(1, 2, 1, 64),) * 3)
