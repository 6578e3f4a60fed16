"""Multi-size self-attention MSA (PRN 3.3, Eq. 3).

Each head splits the map (C, h, w) into patches of side p_s in {h, h/2, h/4, h/8} and attends between patches:
A^s = softmax(Q^s K^s^T / c^s) V^s with one token per patch. The paper embeds each flattened patch of
2c x p x p values with a fully connected layer into c^s = 2c x p x p dimensions, i.e. (2c p^2)^2 weights: about
7e10 for ResNet-18's first scale at 256 px, which cannot be built. Here the embedding is per position (a 1x1
convolution to ``dim`` channels) and the token of a patch is the flattened embedding of its pixels
(c^s = dim x p x p). The heads' outputs (reshaped back to the map) are concatenated, projected back to C channels,
added to the input, and passed through a 2-D residual block.

Scaling (``attention_scale``): Eq. 3 as printed divides Q K^T by c^s ("c"). With c^s in the hundreds or thousands and
freshly initialised embeddings the logits are then about 1/sqrt(c^s) in size, so every head starts out (almost)
exactly uniform and attends to nothing until training scales the embeddings up. 1/sqrt(c^s) ("sqrt_c", the
scaled dot product of Vaswani et al. that the paper cites) may well be what was meant; the paper profile keeps the
literal 1/c^s.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def patch_sizes(h: int, n_heads: int = 4) -> list[int]:
    """p_s = h / 2^s for s = 0..n_heads-1, at least 1 (rounded up: maps are padded to a multiple)."""
    return [max(1, -(-h // 2 ** s)) for s in range(n_heads)]


def _to_tokens(x: torch.Tensor, p: int) -> tuple[torch.Tensor, tuple[int, int]]:
    b, c, h, w = x.shape
    ph, pw = -(-h // p) * p, -(-w // p) * p
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))
    t = x.reshape(b, c, ph // p, p, pw // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (ph // p) * (pw // p), c * p * p)
    return t, (ph, pw)


def _from_tokens(t: torch.Tensor, c: int, p: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    b = t.shape[0]
    ph, pw = padded
    x = t.reshape(b, ph // p, pw // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, ph, pw)
    return x[..., :size[0], :size[1]]


AttentionScale = Literal["c", "sqrt_c"]


def attention_weights(q: torch.Tensor, k: torch.Tensor, scale: AttentionScale = "c") -> torch.Tensor:
    """softmax(Q K^T / t) over tokens (B, N, c^s): t = c^s (Eq. 3 as printed, ``"c"``) or sqrt(c^s) (``"sqrt_c"``)."""
    d = q.shape[-1]
    if scale == "c":
        temperature = float(d)
    elif scale == "sqrt_c":
        temperature = math.sqrt(d)
    else:
        raise ValueError(f"attention_scale {scale!r}: expected 'c' or 'sqrt_c'")
    return torch.softmax(q @ k.transpose(1, 2) / temperature, dim=-1)


class MultiSizeAttention(nn.Module):
    """One MSA layer on a (B, C, h, w) map with heads on patch sizes ``patch_sizes(h)``."""

    def __init__(self, channels: int, height: int, dim: int, n_heads: int = 4,
                 attention_scale: AttentionScale = "c") -> None:
        super().__init__()
        self.sizes = patch_sizes(height, n_heads)
        self.dim = dim
        self.attention_scale = attention_scale
        self.qkv = nn.ModuleList([nn.Conv2d(channels, 3 * dim, 1) for _ in self.sizes])
        self.proj = nn.Sequential(nn.Conv2d(dim * len(self.sizes), channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.block = ResidualBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        heads = []
        for p, qkv in zip(self.sizes, self.qkv, strict=True):
            q, k, v = qkv(x).chunk(3, dim=1)
            (tq, padded), (tk, _), (tv, _) = _to_tokens(q, p), _to_tokens(k, p), _to_tokens(v, p)
            attn = attention_weights(tq, tk, self.attention_scale)  # Eq. 3
            heads.append(_from_tokens(attn @ tv, self.dim, p, padded, size))
        return self.block(x + self.proj(torch.cat(heads, dim=1)))


class MSAStack(nn.Module):
    """``depth`` MSA layers (N = 3 in the paper); ``depth=0`` is the identity (ablation "without MSA")."""

    def __init__(self, channels: int, height: int, dim: int, depth: int, attention_scale: AttentionScale = "c") -> None:
        super().__init__()
        self.layers = nn.Sequential(*[MultiSizeAttention(channels, height, dim, attention_scale=attention_scale)
                                      for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
