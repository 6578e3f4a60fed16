"""FRAD: feature reconstruction with global feature extraction and feature shuffling (Lu, Li, Wang, Yang 2025).

Pipeline (paper Fig. 1 and 6): frozen backbone stages -> multi-level fusion z (extractor.py) -> convolutional
autoencoder with skip connections and GFE (network.py, gfe.py) trained to reconstruct z, and z from its grid-shuffled
copy z' (shuffle.py), with cosine-distance losses (loss.py). The anomaly map is the cosine distance between z and its
reconstruction; the base class upsamples it, blurs it (sigma 4) and takes the maximum as the image score.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator

from adcore.config import Section
from adcore.methods.base import AnomalyModel, FitData, RawPrediction, TrainOptions
from adcore.methods.common.distances import cosine_distance_map
from adcore.methods.frad.extractor import STAGE_STRIDES, LevelNorm, fuse_levels
from adcore.methods.frad.gfe import SmallMapGrid
from adcore.methods.frad.loss import total_loss
from adcore.methods.frad.network import Downsample, FRADNetwork, GFEAt
from adcore.methods.frad.shuffle import grid_shuffle, random_permutations
from adcore.methods.registry import register


class FRADConfig(Section):
    stages: list[int] = Field([2, 3], description="backbone stages fused into z (Table 4): 1, 2, 3, 4 = stride "
                                                   "4, 8, 16, 32 (ResNet layer1..layer4)")
    channels: int = Field(512, gt=0, description="C, channels of the fused feature map z (paper: 512)")
    width: int | None = Field(None, gt=0, description="channels inside the autoencoder; None: C")
    reduction: int = Field(4, gt=0, description="bottleneck channel reduction of the 1x1 -> 3x3 -> 1x1 layers")
    grid: int = Field(4, gt=0, description="K: K x K grid of the feature shuffle and of GFE (paper: 4)")
    gfe: bool = Field(True, description="global feature extraction module (Table 3 ablation)")
    # Switches where the paper leaves a choice open; the defaults are our reading of the paper (network.py,
    # gfe.py and extractor.py say what each value does).
    downsample: Downsample = Field("first", description="where the encoder halves the resolution: 'first' "
                                   "bottleneck of each module (ResNet convention, the paper's reading), 'last' "
                                   "bottleneck of each module, or 'deep' (first module keeps it: bottleneck 1/4 of z "
                                   "instead of 1/8); the decoder mirrors it")
    gfe_at: GFEAt = Field("bottleneck", description="GFE at the 'bottleneck' only (the paper's reading) or at "
                          "'every_level': also on every skip connection")
    level_norm: LevelNorm = Field("none", description="per-level normalisation of the backbone features: 'none' "
                                  "(paper eqs. 1-3), 'l2' (unit channel vector per position before the channel "
                                  "pooling of eq. 2) or 'pooled_l2' (after it, so every level has an equal share "
                                  "of z)")
    small_map_grid: SmallMapGrid = Field("keep", description="GFE grid on maps smaller than K x K (e.g. the 2x2 "
                                         "bottleneck at 128 px): 'keep' K (regions repeat; the paper's 256 px never "
                                         "meets it) or 'clamp' K to min(K, H, W)")
    shuffle: bool = Field(True, description="feature-shuffle self-supervision (Table 3 ablation)")
    ssl_weight: float = Field(0.1, ge=0.0, description="lambda of L = L_rec + lambda L_ssl (eq. 11)")
    epochs: int = Field(100, gt=0, description="fixed number of epochs; never chosen on test data")
    min_steps: int = Field(0, ge=0, description="at least this many optimiser steps: epochs become "
                                               "max(epochs, ceil(min_steps / steps per epoch)) on small categories")
    batch_size: int = Field(16, gt=0, description="training batch size (feature maps)")
    lr: float = Field(1e-3, gt=0.0)
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas (paper: 0.5, 0.999)")

    @field_validator("stages")
    @classmethod
    def _check_stages(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("at least one stage")
        bad = [s for s in value if s not in STAGE_STRIDES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; choose from {sorted(STAGE_STRIDES)}")
        if len(set(value)) != len(value):
            raise ValueError(f"repeated stage in {value}")
        return sorted(value)


@register
class FRAD(AnomalyModel[FRADNetwork]):
    """Feature reconstruction anomaly detection.

    Profiles: ``paper`` follows section 2.3 (WRN50-2 from the timm hub, stages 2 and 3, C = 512, input 256, Adam
    lr 1e-3 betas (0.5, 0.999), batch 16, 100 epochs, K = 4, lambda = 0.1). ``cpu`` generalises the backbone
    (EfficientNet-Lite0 offline weights; stages 2 and 3 are its stride-8 and stride-16 maps, 40 and 112 channels)
    and shrinks C to 64 and the number of epochs to 10, so that one category trains in minutes on two CPU cores;
    the architecture, losses, K and lambda are the paper's.

    ``feature_strides`` depends on the configured ``stages`` (Table 4): see :meth:`backbone_strides`.
    """

    name = "frad"
    Config = FRADConfig
    feature_strides = (8, 16)
    smoke_overrides = ("method.frad.channels=16", "method.frad.epochs=2", "method.frad.batch_size=4",
                       "method.frad.grid=2")
    profiles = {
        "paper": {
            "data": {"batch_size": 16},
            "method": {"channels": 512, "epochs": 100, "batch_size": 16, "lr": 1e-3, "betas": [0.5, 0.999],
                       "grid": 4, "ssl_weight": 0.1},
        },
        "cpu": {"method": {"channels": 64, "epochs": 10, "batch_size": 16}},
    }

    def backbone_strides(self) -> tuple[int, ...]:
        # Table 4: the stage choice decides which backbone strides are extracted (and cached).
        return tuple(STAGE_STRIDES[s] for s in self.config.stages)

    def build_network(self, info: dict[str, Any]) -> FRADNetwork:
        c = self.config
        size = info.get("feature_size")  # z's (H, W); absent from models saved before the clamp switch existed
        return FRADNetwork(c.channels, c.width, gfe=c.gfe, grid=c.grid, reduction=c.reduction,
                           downsample=c.downsample, gfe_at=c.gfe_at, small_map_grid=c.small_map_grid,
                           input_size=tuple(size) if size else None)

    # ---- features ------------------------------------------------------------------------------------------------
    def fuse(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """z from backbone stage maps (paper 1.1)."""
        return fuse_levels(stages, self.config.channels, self.config.level_norm)

    def anomaly_map(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine distance between z and its reconstruction (eq. 8), (B, H, W) at feature resolution."""
        return cosine_distance_map(z, self.check_is_fitted()(z))

    # ---- training ------------------------------------------------------------------------------------------------
    def fit_network(self, features, data: FitData, options: TrainOptions) -> None:
        cfg = self.config
        size = [max(int(s.shape[-2]) for s in features.stages), max(int(s.shape[-1]) for s in features.stages)]
        network = self.new_network({"feature_size": size})
        val = self.read_features(data.val, data.transform, options) if data.val else None
        optimizer = torch.optim.Adam(network.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))

        def train_epoch(epoch: int, rng: np.random.Generator) -> dict[str, float]:
            network.train()
            sums: dict[str, float] = {}
            seen = 0
            for _, stages in features.batches(cfg.batch_size, shuffle=True, rng=rng, device=self.device):
                z = self.fuse(stages)
                b = z.shape[0]
                if cfg.shuffle:
                    # Fig. 1: z and its shuffled copy z' go through the network together; both target z (eqs. 9-10).
                    z_shuffled = grid_shuffle(z, cfg.grid, random_permutations(b, cfg.grid, rng))
                    out = network(torch.cat([z, z_shuffled]))
                    z_hat, z_hat_shuffled = out[:b], out[b:]
                else:
                    z_hat, z_hat_shuffled = network(z), None
                loss, parts = total_loss(z, z_hat, z_hat_shuffled, cfg.ssl_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                parts["loss"] = float(loss.detach())
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * b
                seen += b
            losses = {k: v / max(seen, 1) for k, v in sums.items()}
            losses["steps"] = (epoch + 1) * per_epoch  # optimiser steps so far: the loss curve's length
            if val is not None:  # monitoring only (the loss curve): the number of epochs is fixed by the config
                losses["val_loss_rec"] = self._mean_distance(val)
            return losses

        per_epoch = steps_per_epoch(len(features), cfg.batch_size)
        epochs = epochs_for(cfg.epochs, cfg.min_steps, len(features), cfg.batch_size)
        self.fit_info["epochs_planned"] = epochs
        self.run_epochs(data, options, epochs, train_epoch, {"network": network, "optimizer": optimizer})
        self.fit_info["feature_shape"] = [cfg.channels, *features.stages[0].shape[-2:]]

    @torch.no_grad()
    def _mean_distance(self, features) -> float:
        network = self.check_is_fitted()
        network.eval()
        total, n = 0.0, 0
        for _, stages in features.batches(self.config.batch_size, device=self.device):
            d = self.anomaly_map(self.fuse(stages))
            total += float(d.mean(dim=(1, 2)).sum())
            n += d.shape[0]
        network.train()
        return total / max(n, 1)

    # ---- inference -----------------------------------------------------------------------------------------------
    def predict_raw(self, images: torch.Tensor) -> RawPrediction:
        z = self.fuse(self.backbone_features(images))
        return RawPrediction(maps=self.anomaly_map(z))  # no shuffling at inference (paper 1.5)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps in one epoch: one per batch of ``batch_size`` feature maps, the last batch possibly smaller."""
    return max(1, math.ceil(n_train / batch_size))


def epochs_for(epochs: int, min_steps: int, n_train: int, batch_size: int) -> int:
    """``max(epochs, ceil(min_steps / steps_per_epoch))``: a small category still gets ``min_steps`` optimiser
    steps."""
    return max(epochs, math.ceil(min_steps / steps_per_epoch(n_train, batch_size)))
