"""Q-ARVD: final-quality guided frame weighting + outlier-aware adaptive dual-scale quantization.

Both components are stages of the shared recipe (``frame_weighting``, ``dual_scale``), so every ablation of the
paper (Tables 3-5, Fig. 6) is a config override of this method, not a code path (conf/method/qarvd.yaml).
"""
from dataclasses import dataclass

from qarvd.methods.base import Recipe


@dataclass
class QARVD(Recipe):
    """The shared recipe with both components on by default (conf/method/qarvd.yaml)."""
