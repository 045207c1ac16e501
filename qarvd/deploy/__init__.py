"""Deployment: fake-quant artifact -> real low-bit modules (int8 / packed int4 / fp8) -> fused inference.

``convert_to_real(model, artifact, backend)`` swaps the quantized linears, ``accelerate_(model, backend)`` switches
the blocks to the fused forward (and, with ``backend.graphs``, ``graph_`` replays each rollout forward as a CUDA
graph), ``save_real`` / ``load_real`` store the result (safetensors + JSON).
"""
from qarvd.deploy.convert import convert_to_real, real_layers, set_backend_
from qarvd.deploy.fast import (accelerate_, calibrate_attention_, restore_, set_attention_fp8_scales_,
                               set_attention_key_means_)
from qarvd.deploy.graphs import graph_, ungraph_
from qarvd.deploy.io import load_real, save_real
from qarvd.deploy.spec import RealLayerSpec

__all__ = ["RealLayerSpec", "accelerate_", "calibrate_attention_", "convert_to_real", "graph_", "load_real",
           "real_layers", "restore_", "save_real", "set_attention_fp8_scales_", "set_attention_key_means_", "set_backend_", "ungraph_"]
