"""CFA: coupled-hypersphere-based feature adaptation (registered as ``cfa``; see method.py)."""

from adcore.methods.cfa.method import CFA, CFAConfig
from adcore.methods.cfa.network import CFANetwork

__all__ = ["CFA", "CFAConfig", "CFANetwork"]
