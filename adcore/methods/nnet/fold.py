"""Inference copy of a network with every BatchNorm folded into the convolution that feeds it.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one convolution with scaled
weights and a shifted bias: one pass over the activations fewer per pair. N-Net's forward student is a second
backbone (about half of N-Net's inference time, docs/RESULTS.md), and its decoder and FFC are conv + BatchNorm
blocks too.

The pairs are found by running a probe input once and matching each BatchNorm's input tensor with the output of
the convolution that produced it; a convolution called more than once (shared weights, e.g. the teacher FPM's
convolutions seen by F_3 and F'_3) or whose output feeds anything but one BatchNorm call is left alone. The folded
copy is checked against the original on the probe.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

Conv = nn.Conv2d | nn.ConvTranspose2d
M = TypeVar("M", bound=nn.Module)


def fold_batchnorms(module: M, run: Callable[[M], Any], *, atol: float = 1e-4) -> M:
    """An eval-mode deep copy of ``module`` whose conv -> BatchNorm pairs are folded into the convolutions.

    ``run(m)`` calls ``m`` on a probe input and returns its outputs (tensors, or lists / dicts of them); the copy's
    outputs must match the original's within ``atol`` (relative to each output's largest magnitude), else
    RuntimeError.
    """
    folded = copy.deepcopy(module).eval()  # the caller's module (and its train/eval mode) is left alone
    with torch.no_grad():
        reference = run(folded)
        pairs = _conv_bn_pairs(folded, run)
        for conv, bn in pairs:
            _fold_pair(conv, bn)
        for name, norm in _named(folded, {id(bn) for _, bn in pairs}):
            _replace(folded, name, _after_norm(norm))
        _check_close(reference, run(folded), atol)
    return folded


def _named(root: nn.Module, ids: set[int]) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in root.named_modules() if id(m) in ids]


def _conv_bn_pairs(root: M, run: Callable[[M], Any]) -> list[tuple[Conv, nn.BatchNorm2d]]:
    produced: dict[int, Conv] = {}  # id(output tensor) -> the convolution that returned it
    keep: list[torch.Tensor] = []  # keeps the outputs alive, so that their ids stay unique during the probe
    conv_calls: dict[int, int] = {}
    consumers: dict[int, list[nn.BatchNorm2d]] = {}  # id(conv) -> the BatchNorm calls that took its output
    bn_calls: dict[int, int] = {}

    def after_conv(mod: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        conv_calls[id(mod)] = conv_calls.get(id(mod), 0) + 1
        produced[id(output)] = mod  # type: ignore[assignment]
        keep.append(output)

    def before_bn(mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        bn_calls[id(mod)] = bn_calls.get(id(mod), 0) + 1
        conv = produced.get(id(inputs[0]))
        if conv is not None:
            consumers.setdefault(id(conv), []).append(mod)  # type: ignore[arg-type]

    handles = []
    for m in root.modules():
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.ConvTranspose2d) and m.groups == 1):
            handles.append(m.register_forward_hook(after_conv))
        elif isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_var is not None:
            handles.append(m.register_forward_pre_hook(before_bn))
    try:
        run(root)
    finally:
        for h in handles:
            h.remove()
    convs = {id(m): m for m in root.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)}
    pairs = []
    for conv_id, bns in consumers.items():
        bn = bns[0]
        if conv_calls[conv_id] == 1 and len(bns) == 1 and bn_calls[id(bn)] == 1:
            pairs.append((convs[conv_id], bn))
    return pairs


def _fold_pair(conv: Conv, bn: nn.BatchNorm2d) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out, kh, kw), groups == 1
        conv.weight.mul_(scale.view(1, -1, 1, 1))
    else:  # weight (out, in / groups, kh, kw)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)


def _after_norm(bn: nn.Module) -> nn.Module:
    """What remains of a folded BatchNorm: nothing, or timm's BatchNormAct2d's dropout and activation."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _flatten(v)]
    return []


def _check_close(reference: Any, got: Any, atol: float) -> None:
    for a, b in zip(_flatten(reference), _flatten(got), strict=True):
        tol = atol * max(1.0, float(a.abs().max()))
        err = float((a - b).abs().max())
        if err > tol:
            raise RuntimeError(f"fold_batchnorms: folded output differs by {err:.3g} (tolerance {tol:.3g})")
