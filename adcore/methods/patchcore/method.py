"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022): the yardstick.

1. Locally aware patch features: each of two middle stages is averaged over a 3x3 neighbourhood (paper Eq. 2,
   zero padding counted as the reference's ``Unfold`` does), the deeper map is upsampled to the shallower one's
   resolution, each stage is brought to ``embedding_dim`` channels by adaptive average pooling over channels
   (the reference's ``Preprocessing``/``MeanMapper``, pretrain_embed_dimension), and the stack of the stages is
   pooled once more to ``embedding_dim`` (its ``Aggregator``, target_embed_dimension). Every stage thus holds an
   equal share of the embedding whatever its width: WRN50's layer2 (512) and layer3 (1024) 512 channels each.
   One detail differs: the reference pools each position's flattened C x 3 x 3 patch, here the 3x3 mean per
   channel is pooled. For layer3 (1024 channels -> 1024) the two are equal; for layer2 (512 -> 1024) the reference's
   bins hold 5 of a channel's 9 neighbours each, which after the final pooling weighs the centre 2/10 and each
   other neighbour 1/10 instead of 1/9 each.
2. Greedy coreset subsampling (Alg. 1) on a Johnson-Lindenstrauss random projection, keeping ``coreset_ratio``.
3. Score: distance of each test patch to its nearest memory patch; the image score is the largest patch score,
   reweighted as in Eq. 7 by how isolated its memory neighbour is among its own ``reweight_k`` neighbours.

Paper profile: WideResNet-50-2 with torchvision's weights (as the reference), layers 2 and 3 (strides 8 and 16),
image 256 cropped to 224, embedding 1024 (pretrain and target dimension), coreset ratio 0.1.
Generalised: any timm backbone with strides 8 and 16 (cpu profile: the offline EfficientNet-Lite0 at 256 px, a 1%
coreset, which the paper also evaluates, and a 224-d embedding: 112 per stage, Lite0's deeper stage has 112
channels, so none is averaged away and the nearest-neighbour search stays near the cost of the 152-d
concatenation).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from adcore.config import Section
from adcore.methods.base import AnomalyModel, FitData, RawPrediction, TrainOptions
from adcore.methods.common.coreset import greedy_coreset
from adcore.methods.common.patch_features import pool_channels, pooled_patch_features
from adcore.methods.patchcore.anomaly_map import patch_scores, reweighted_image_score
from adcore.methods.patchcore.network import PatchCoreNetwork
from adcore.methods.registry import register


class PatchCoreConfig(Section):
    coreset_ratio: float = Field(0.1, gt=0.0, le=1.0, description="share of training patches kept in memory")
    coreset_min: int = Field(0, ge=0, description="keep at least this many patches (small datasets, low ratios)")
    projection_dim: int = Field(128, gt=0, description="random projection size for coreset selection")
    embedding_dim: int = Field(1024, gt=0, description="channels each stage is pooled to, and the stack of stages "
                               "after it (reference: pretrain and target embed dimension, 1024)")
    patch_size: int = Field(3, ge=1, description="neighbourhood of the local aggregation (paper: 3)")
    reweight_k: int = Field(9, ge=1, description="neighbours used by the image-score reweighting (paper: b = 9)")
    reweight: bool = Field(True, description="apply the Eq. 7 image-score reweighting")
    chunk_size: int = Field(4096, gt=0, description="query rows per nearest-neighbour block")


def embed_stages(stages: list[torch.Tensor], dim: int, patch_size: int = 3) -> torch.Tensor:
    """Reference PatchCore embedding of stage maps (largest first) -> (B, dim, H_0, W_0).

    Per stage: ``patch_size`` average (zero padding counted) on its own grid, bilinear upsampling to the first
    stage's grid, adaptive pooling of its channels to ``dim``; then the (B, n_stages * dim) stack is pooled to
    ``dim``, so stage i fills channels [i * dim / n, (i + 1) * dim / n) whatever its width.
    """
    joined = pooled_patch_features(stages, patch_size, count_include_pad=True)
    per_stage = joined.split([s.shape[1] for s in stages], dim=1)
    return pool_channels(torch.cat([pool_channels(s, dim) for s in per_stage], dim=1), dim)


@register
class PatchCore(AnomalyModel[PatchCoreNetwork]):
    """PatchCore: a memory bank of locally aware patch features, coreset-subsampled; scores are NN distances."""

    name = "patchcore"
    Config = PatchCoreConfig
    feature_strides = (8, 16)
    smoke_overrides = ("method.patchcore.coreset_min=200",)
    profiles = {
        "paper": {"data": {"crop_size": 224}, "method": {"coreset_ratio": 0.1, "embedding_dim": 1024}},
        # cpu: a 1% coreset (the paper reports 1% next to 10%) keeps inference near the backbone's cost and fitting
        # within minutes on 2 cores (docs/RESULTS.md). At least 2000 patches, so that small categories (the demo
        # data) keep enough memory.
        # 224 = 2 x 112, the channels of Lite0's deeper stage: each stage gets 112 of the embedding (module docstring).
        "cpu": {"method": {"coreset_ratio": 0.01, "coreset_min": 2000, "embedding_dim": 224}},
    }

    def embed(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Locally aware patch features (B, embedding_dim, h, w): each stage pooled to ``embedding_dim`` channels on
        its own, then their stack pooled to ``embedding_dim`` (equal shares per stage, as the reference)."""
        return embed_stages(stages, self.config.embedding_dim, self.config.patch_size)

    def build_network(self, info: dict[str, Any]) -> PatchCoreNetwork:
        return PatchCoreNetwork(*info["memory_shape"])

    def fit_network(self, features, data: FitData, options: TrainOptions) -> None:
        patches = []
        for _, stages in features.batches(self.settings.data.batch_size, device=self.device):
            emb = self.embed(stages)
            feature_shape = list(emb.shape[-2:])
            patches.append(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).cpu())
        bank = torch.cat(patches)
        cfg = self.config
        n_select = min(bank.shape[0], max(1, cfg.coreset_min, int(round(cfg.coreset_ratio * bank.shape[0]))))
        if n_select < bank.shape[0]:
            idx = greedy_coreset(bank.to(self.device), n_select, cfg.projection_dim, seed=self.settings.train.seed,
                                 show_progress=options.progress)
            bank = bank[idx.cpu()]
        network = self.new_network({"memory_shape": list(bank.shape), "feature_shape": feature_shape})
        network.memory.copy_(bank)
        self.fit_info.update({"n_patches": int(sum(p.shape[0] for p in patches)), "memory_size": int(bank.shape[0])})

    def predict_raw(self, images: torch.Tensor) -> RawPrediction:
        memory = self.check_is_fitted().memory
        emb = self.embed(self.backbone(images))
        memory_sq = (memory * memory).sum(1)
        maps, nearest = patch_scores(emb, memory, self.config.chunk_size, memory_sq)
        if not self.config.reweight or memory.shape[0] <= self.config.reweight_k:
            return RawPrediction(maps=maps)
        scores = reweighted_image_score(emb, maps, nearest, memory, self.config.reweight_k, memory_sq)
        return RawPrediction(maps=maps, scores=scores)
