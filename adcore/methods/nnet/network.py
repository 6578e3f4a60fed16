"""N-Net's network: every trained part (FPMs, forward student, NFS, FFC, reverse student); which exist depends on
the switches of :class:`adcore.methods.nnet.method.NNetConfig`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adcore.backbones import FeatureExtractor
from adcore.methods.nnet.decoder import ReverseStudent
from adcore.methods.nnet.ffc import FusionCompression
from adcore.methods.nnet.fpm import FeatureProjection
from adcore.methods.nnet.nfs import NormalFeatureStore


class NNetNetwork(nn.Module):
    """Every trained part of N-Net; which parts exist depends on the switches."""

    def __init__(self, backbone_name: str, channels: list[int], strides: list[int], cfg: Any) -> None:
        super().__init__()
        self.branch, self.use_fpm, self.use_nfs = cfg.branch, cfg.fpm, cfg.nfs
        self.forward_branch = cfg.branch in ("both", "forward")
        self.reverse_branch = cfg.branch in ("both", "reverse")
        if cfg.fpm:
            self.fpm_t = nn.ModuleList(FeatureProjection(c, cfg.fpm_reduction) for c in channels)
        if self.forward_branch:
            self.student = FeatureExtractor(backbone_name, strides, "random", trainable=True)
            if cfg.fpm:
                self.fpm_s = nn.ModuleList(FeatureProjection(c, cfg.fpm_reduction) for c in channels)
        if self.reverse_branch:
            if cfg.nfs:
                self.nfs = NormalFeatureStore(channels[-1], cfg.nfs_items, cfg.nfs_shrink)
            out = cfg.bottleneck_channels or 2 * channels[-1]
            if cfg.ffc:
                self.ffc = FusionCompression(channels, strides, out, blocks=cfg.ffc_blocks, fuse=True)
            else:  # RD4AD's one-class bottleneck: concatenation and 3 bottleneck blocks
                self.ffc = FusionCompression(channels, strides, out, blocks=3, fuse=False)
            self.decoder = ReverseStudent(out, channels, cfg.decoder_blocks)

    def project(self, feats: list[torch.Tensor], which: str) -> list[torch.Tensor]:
        if not self.use_fpm:
            return list(feats)
        modules = self.fpm_t if which == "teacher" else self.fpm_s
        return [m(f) for m, f in zip(modules, feats, strict=True)]

    def forward(self, teacher: list[torch.Tensor], images: torch.Tensor | None) -> dict[str, Any]:
        out: dict[str, Any] = {"F": teacher}
        if self.forward_branch:
            if images is None:
                raise ValueError("the forward branch needs the images")
            sf = self.student(images)
            out.update(SF=sf, P=self.project(teacher, "teacher"), SP=self.project(sf, "student"))
        if self.reverse_branch:
            f3, weights = teacher[-1], None
            if self.use_nfs:
                f3, weights = self.nfs(f3)
            if self.use_fpm:
                # P_1, P_2 are shared with the forward branch; P_3 here is FPM_T of the recalled F'_3.
                if "P" in out:
                    shallow = out["P"][:-1]
                else:
                    shallow = [m(f) for m, f in zip(self.fpm_t[:-1], teacher[:-1], strict=True)]
                adapted = [*shallow, self.fpm_t[-1](f3)]
            else:
                adapted = [*teacher[:-1], f3]
            out["D"] = self.decoder(self.ffc(adapted), [tuple(f.shape[-2:]) for f in teacher])
            out["weights"] = weights
        return out
