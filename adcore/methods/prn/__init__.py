"""PRN: prototypical residual network (registered as ``prn``; see method.py)."""

from adcore.methods.prn.method import PRN, PRNConfig
from adcore.methods.prn.network import PRNNetwork

__all__ = ["PRN", "PRNConfig", "PRNNetwork"]
