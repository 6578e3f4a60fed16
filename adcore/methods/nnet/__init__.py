"""N-Net: bidirectional constrained distillation (registered as ``nnet``; see method.py)."""

from adcore.methods.nnet.method import NNet, NNetConfig
from adcore.methods.nnet.network import NNetNetwork

__all__ = ["NNet", "NNetConfig", "NNetNetwork"]
