"""N-Net's network: every trained part (FPMs, forward student, NFS, FFC, reverse student); which exist depends on
the switches of :class:`adcore.methods.nnet.method.NNetConfig`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from adcore.backbones import FeatureExtractor
from adcore.methods.nnet.decoder import ReverseStudent
from adcore.methods.nnet.ffc import FusionCompression
from adcore.methods.nnet.fpm import FeatureProjection
from adcore.methods.nnet.nfs import NormalFeatureStore, sample_rows


class NNetNetwork(nn.Module):
    """Every trained part of N-Net; which parts exist depends on the switches.

    The deepest teacher FPM and the recalled F'_3 (``fpm_recall``). The forward branch projects F_3 into P_3, the
    reverse branch projects the recall F'_3 of the NFS. The paper uses one teacher FPM for both: "多尺度特征 F_1, F_2,
    F'_3 经过特征映射模块得到适应特征 P_i (i=1, 2, 3)" (F_1, F_2, F'_3 pass through the feature projection module and
    give the adapted features P_i, the same P_i as the forward branch's), and the reverse branch exists to constrain
    exactly that module: "为了约束教师适应特征 P_i, 避免教师网络 T 的特征映射模块的参数收敛到平凡解, 本文引入逆向学生
    网络 S_2" (to constrain P_i and keep the parameters of the teacher's FPM from a trivial solution, the reverse
    student S2 is introduced). A separate FPM for F'_3 would leave the forward branch's P_3 without that constraint.
    The paper says nothing of normalisation, but one BatchNorm fed both inputs mixes two very different
    distributions in its running statistics (F_3 has mean |x| of several units, F'_3 may be far smaller), so that at
    evaluation P_3 is normalised with statistics that are neither F_3's nor F'_3's. Hence:

    - ``split_bn`` (default): one teacher FPM, its convolutions shared by F_3 and F'_3 (the paper's reading), with
      one BatchNorm per input kind (``fpm_t[-1].norms[0]`` sees F_3 only, ``norms[1]`` F'_3 only);
    - ``separate``: a second FPM of its own for F'_3 (``fpm_r``); FPM_T's P_3 is then not trained by L_RKD;
    - ``shared``: one FPM with one BatchNorm for both (round 1, mixed running statistics; kept for comparison).

    With a single branch there is one kind of input and the switch has no effect.
    """

    def __init__(self, backbone_name: str, channels: list[int], strides: list[int], cfg: Any) -> None:
        super().__init__()
        self.branch, self.use_fpm, self.use_nfs = cfg.branch, cfg.fpm, cfg.nfs
        self.forward_branch = cfg.branch in ("both", "forward")
        self.reverse_branch = cfg.branch in ("both", "reverse")
        both = self.forward_branch and self.reverse_branch
        self.fpm_recall = cfg.fpm_recall if both else "shared"
        self.recall_source = 1 if self.fpm_recall == "split_bn" else 0
        if cfg.fpm:
            last = len(channels) - 1
            self.fpm_t = nn.ModuleList(
                FeatureProjection(c, cfg.fpm_reduction, sources=2 if i == last and self.recall_source else 1)
                for i, c in enumerate(channels)
            )
            if self.fpm_recall == "separate":
                self.fpm_r = FeatureProjection(channels[-1], cfg.fpm_reduction)
        if self.forward_branch:
            self.student = FeatureExtractor(backbone_name, strides, "random", trainable=True)
            if cfg.fpm:
                self.fpm_s = nn.ModuleList(FeatureProjection(c, cfg.fpm_reduction) for c in channels)
        if self.reverse_branch:
            if cfg.nfs:
                self.nfs = NormalFeatureStore(channels[-1], cfg.nfs_items, cfg.nfs_shrink, cfg.nfs_addressing)
            out = cfg.bottleneck_channels or 2 * channels[-1]
            if cfg.ffc:
                self.ffc = FusionCompression(channels, strides, out, blocks=cfg.ffc_blocks, fuse=True)
            else:  # RD4AD's one-class bottleneck: concatenation and 3 bottleneck blocks
                self.ffc = FusionCompression(channels, strides, out, blocks=3, fuse=False)
            self.decoder = ReverseStudent(out, channels, cfg.decoder_blocks)

    def init_memory(self, f3: np.ndarray, seed: int) -> None:
        """Initialise the NFS items with sampled training F_3 vectors; ``f3``: (images, C, H, W) (nfs.py)."""
        if not hasattr(self, "nfs"):
            raise ValueError("init_memory: this network has no normal-feature store")
        self.nfs.init_from(sample_rows(f3, self.nfs.memory.shape[0], seed))

    def project(self, feats: list[torch.Tensor], which: str) -> list[torch.Tensor]:
        if not self.use_fpm:
            return list(feats)
        modules = self.fpm_t if which == "teacher" else self.fpm_s
        return [m(f) for m, f in zip(modules, feats, strict=True)]

    def project_recall(self, f3: torch.Tensor) -> torch.Tensor:
        """P_3 of the reverse branch, from the recalled F'_3 (see the class docstring)."""
        if self.fpm_recall == "separate":
            return self.fpm_r(f3)
        return self.fpm_t[-1](f3, source=self.recall_source)

    def forward(self, teacher: list[torch.Tensor], images: torch.Tensor | None,
                branches: str = "both") -> dict[str, Any]:
        """Every output of the trained branches; ``branches`` ('reverse' or 'forward') skips the other one, for an
        inference that scores one branch's maps only."""
        out: dict[str, Any] = {"F": teacher}
        if self.forward_branch and branches != "reverse":
            if images is None:
                raise ValueError("the forward branch needs the images")
            sf = self.student(images)
            out.update(SF=sf, P=self.project(teacher, "teacher"), SP=self.project(sf, "student"))
        if self.reverse_branch and branches != "forward":
            f3, weights = teacher[-1], None
            if self.use_nfs:
                f3, weights = self.nfs(f3)
            if self.use_fpm:
                # P_1, P_2 are shared with the forward branch; P_3 here is the projection of the recalled F'_3.
                if "P" in out:
                    shallow = out["P"][:-1]
                else:
                    shallow = [m(f) for m, f in zip(self.fpm_t[:-1], teacher[:-1], strict=True)]
                adapted = [*shallow, self.project_recall(f3)]
            else:
                adapted = [*teacher[:-1], f3]
            out["D"] = self.decoder(self.ffc(adapted), [tuple(f.shape[-2:]) for f in teacher])
            out["weights"] = weights
        return out
