"""FRAD: feature reconstruction with global features and feature shuffling (registered as ``frad``; see method.py)."""

from adcore.methods.frad.method import FRAD, FRADConfig
from adcore.methods.frad.network import FRADNetwork

__all__ = ["FRAD", "FRADConfig", "FRADNetwork"]
