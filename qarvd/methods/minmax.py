"""MinMax: percentile clip-search initialisation of every quantizer, no reconstruction (conf/method/minmax.yaml)."""
from dataclasses import dataclass

from qarvd.methods.base import Recipe


@dataclass
class MinMax(Recipe):
    """The shared recipe as configured by conf/method/minmax.yaml (reconstruction off)."""
