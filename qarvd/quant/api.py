"""torchao-style entry point: ``quantize_(model, config, filter_fn=None)`` swaps Linear layers in place.

A config is a dataclass; a handler registered for its type turns one ``nn.Linear`` into its quantized module, so
new configs (e.g. a real-kernel deployment format) plug in with :func:`register_quantize_handler`. A user quantizes
their own ARVD without Hydra::

    outliers = OutlierConfig(tau=3.5, outlier_ratio=1.2, multiple=None, multiple_reference=(1536, 32),
                             model_width=model.cfg.dim, max_fraction=0.5)  # multiple None: 32 scaled to the width
    quantize_(model, QuantConfig(w_bits=4, a_bits=8, dual_scale=outliers))
    calibrate_activations_(model, lambda: pipeline.generate_latents(prompts, seeds))
    reconstruct_model(pipeline, prompts, seeds, recon_config(calib, skip_roles, seed), CaptureBudget())   # optional (AdaRound)
    harden_(model); save_artifact(model, "out/")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from qarvd.quant.linear import QuantLinear, quant_layers, quant_state
from qarvd.quant.outliers import OutlierConfig, column_norms, detect_outliers
from qarvd.quant.quantizer import DEFAULT_PERCENTILES, ActivationHistogram, check_bits
from qarvd.quant.roles import BLOCK_ROLES, try_role
from qarvd.quant.select import DEFAULT_KEEP, is_kept, set_module

CONFIG_VERSION = 1


@dataclass
class QuantConfig:
    """Uniform affine fake quantization: weights per output channel, activations per tensor (static)."""

    w_bits: int = 4
    a_bits: int = 8
    symmetric: bool = False  # False: asymmetric with zero point (the release); True: paper Eq. 1
    percentiles: tuple = DEFAULT_PERCENTILES  # clip percentiles searched by MSE
    keep: tuple = DEFAULT_KEEP  # module-name patterns left in float (used when no filter_fn is given)
    dual_scale: Optional[OutlierConfig] = None  # Q-ARVD outlier/normal column split (None: off)
    dual_scale_roles: tuple = BLOCK_ROLES  # roles the split applies to (the release: block linears only)
    init_weights: bool = True  # False: the caller transforms the weights first and initialises them itself
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "w_bits")
        check_bits(self.a_bits, "a_bits")
        self.percentiles = tuple(float(p) for p in self.percentiles)
        if not self.percentiles or not all(0.5 < p <= 1.0 for p in self.percentiles):
            raise ValueError(f"clip percentiles must lie in (0.5, 1], got {self.percentiles}")
        if self.version != CONFIG_VERSION:
            raise ValueError(f"QuantConfig version {self.version} is not supported (this qarvd: {CONFIG_VERSION})")


_HANDLERS: dict[type, Callable[[nn.Linear, object, str], nn.Module]] = {}


def register_quantize_handler(config_type: type) -> Callable:
    """Decorator: ``handler(linear, config, fqn) -> module`` used by :func:`quantize_` for ``config_type``."""
    def deco(fn):
        _HANDLERS[config_type] = fn
        return fn

    return deco


def _handler(config) -> Callable:
    for t in type(config).__mro__:
        if t in _HANDLERS:
            return _HANDLERS[t]
    raise TypeError(f"no quantize handler registered for {type(config).__name__}; known: {[t.__name__ for t in _HANDLERS]}")


def quantize_(model: nn.Module, config, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> nn.Module:
    """Replace every Linear accepted by ``filter_fn(module, fqn)`` (default: not in ``config.keep``), in place."""
    handler = _handler(config)
    if filter_fn is None:
        keep = tuple(getattr(config, "keep", DEFAULT_KEEP))
        filter_fn = lambda m, n: not is_kept(n, keep)  # noqa: E731
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and filter_fn(m, n)]
    for n in names:
        set_module(model, n, handler(model.get_submodule(n), config, n))
    return model


def split_outliers(layer: QuantLinear, cfg: OutlierConfig):
    """Detect outlier input columns of the layer's (smoothed/residual) weight and split it into two groups."""
    res = detect_outliers(column_norms(layer.target_weight()), cfg)
    layer.set_groups([res.outliers, res.normal] if res.count > 0 else None)
    return res


@register_quantize_handler(QuantConfig)
def _quantize_linear(linear: nn.Linear, config: QuantConfig, name: str) -> QuantLinear:
    layer = QuantLinear(linear, config.w_bits, config.a_bits, config.symmetric, name=name)
    if config.dual_scale is not None and try_role(name) in config.dual_scale_roles:
        split_outliers(layer, config.dual_scale)
    if config.init_weights:
        layer.init_weights(config.percentiles)
    return layer


def calibrate_activations_(model: nn.Module, run: Callable[[], object], percentiles=DEFAULT_PERCENTILES,
                           bins: int = 32768) -> dict[str, list[int]]:
    """Initialise every activation quantizer from a calibration run with quantized weights.

    ``run()`` must perform the calibration forwards (e.g. rollouts); it is called twice: a range pass, then the
    histogram pass. Activations are observed, not quantized, during the run, so all layers are initialised from
    the same run. Samples are weighted by each layer's ``chunk_weights``. Returns the chosen percentile indices.
    """
    layers = quant_layers(model)
    for l in layers.values():
        for g in l.groups:
            g.hist = ActivationHistogram(bins)
    try:
        with quant_state(model, weights=True, acts=False):
            for mode in ("range", "hist"):
                for l in layers.values():
                    l.observing = mode
                run()
    finally:
        for l in layers.values():
            l.observing = None
    chosen = {}
    for n, l in layers.items():
        try:
            chosen[n] = [g.hist.search(g.aq, percentiles) for g in l.groups]
        except RuntimeError as e:
            raise RuntimeError(f"layer '{n}': {e} (is it reached by the calibration run?)") from e
        for g in l.groups:
            g.hist = None
    return chosen


def harden_(model: nn.Module) -> None:
    """Fix integer weight codes in every QuantLinear (the state that is saved and deployed)."""
    for l in quant_layers(model).values():
        l.harden()
