"""PatchCore's fitted state: the coreset-subsampled memory bank of patch features, as a buffer."""

from __future__ import annotations

import torch
from torch import nn


class PatchCoreNetwork(nn.Module):
    """Holds the memory bank (M, D); nothing is trained."""

    def __init__(self, memory_size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("memory", torch.zeros(memory_size, dim))

    memory: torch.Tensor
