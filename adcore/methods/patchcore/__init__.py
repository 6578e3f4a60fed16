"""PatchCore (registered as ``patchcore``; see method.py)."""

from adcore.methods.patchcore.method import PatchCore, PatchCoreConfig
from adcore.methods.patchcore.network import PatchCoreNetwork

__all__ = ["PatchCore", "PatchCoreConfig", "PatchCoreNetwork"]
