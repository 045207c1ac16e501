"""The quantization core: quantizers, QuantLinear, capture, reconstruction, outliers, sensitivity, artifacts."""
from qarvd.quant.api import QuantConfig, calibrate_activations_, harden_, quantize_, register_quantize_handler
from qarvd.quant.artifact import load_artifact, save_artifact
from qarvd.quant.linear import QuantLinear
from qarvd.quant.outliers import OutlierConfig

__all__ = ["QuantConfig", "OutlierConfig", "QuantLinear", "quantize_", "calibrate_activations_", "harden_",
           "register_quantize_handler", "save_artifact", "load_artifact"]
