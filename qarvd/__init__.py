"""qarvd: post-training quantization of autoregressive video diffusion models (Q-ARVD and baselines)."""

__version__ = "0.1.0"
