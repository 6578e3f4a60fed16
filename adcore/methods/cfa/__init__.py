"""CFA: coupled-hypersphere-based feature adaptation (registered as method ``cfa``; see method.py)."""

from adcore.methods.cfa.method import CFA, CFAConfig

__all__ = ["CFA", "CFAConfig"]
