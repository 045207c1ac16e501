"""Triton kernels for real quantized inference of the CausalWan DiT on Hopper (and their torch references).

- :mod:`kernels.act_quant`: LayerNorm / adaLN modulation / GELU producers that write int8 codes (dual-scale split
  folded in), float8, or plain activations in one pass.
- :mod:`kernels.qgemm`: W8A8 / W4A8 GEMM with fused dequantization, zero-point, residual and GELU-quant epilogues.
- :mod:`kernels.glue`: q/k RMSNorm + RoPE + KV-cache write, gated residual update.
- :mod:`kernels.cutlass_gemm`, :mod:`kernels.attn_cudnn`, :mod:`kernels.fp8`: CUTLASS INT8 GEMM, cuDNN FP8 attention,
  FP8 linears.

Pure ops on tensors and plain parameters: nothing here imports ``qarvd`` (the backends that drive these kernels
from the deployed modules live in ``qarvd.deploy.backends``).
"""
