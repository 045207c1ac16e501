"""AdaRound: the shared layer-wise reconstruction with uniform chunk weights and no dual scale.

This is Q-ARVD with both of its components off (paper Table 3, first row); conf/method/adaround.yaml.
"""
from dataclasses import dataclass

from qarvd.methods.base import Recipe


@dataclass
class AdaRound(Recipe):
    """The shared recipe as configured by conf/method/adaround.yaml (reconstruction on, no components)."""
