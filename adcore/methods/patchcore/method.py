"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022): the yardstick.

1. Locally aware patch features: each of two middle stages is averaged over a 3x3 neighbourhood (paper Eq. 2),
   the deeper map is upsampled to the shallower one's resolution, and the concatenation is reduced to
   ``embedding_dim`` channels by adaptive average pooling over channels (as in the reference implementation).
2. Greedy coreset subsampling (Alg. 1) on a Johnson-Lindenstrauss random projection, keeping ``coreset_ratio``.
3. Score: distance of each test patch to its nearest memory patch; the image score is the largest patch score,
   reweighted as in Eq. 7 by how isolated its memory neighbour is among its own ``reweight_k`` neighbours.

Paper profile: WideResNet-50-2, layers 2 and 3 (strides 8 and 16), image 256 cropped to 224, coreset ratio 0.1.
Generalised: any timm backbone with strides 8 and 16 (cpu profile: the offline EfficientNet-Lite0 at 256 px and a
1% coreset, which the paper also evaluates).
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
    embedding_dim: int = Field(1024, gt=0, description="channels after adaptive pooling of the concatenated stages")
    patch_size: int = Field(3, ge=1, description="neighbourhood of the local aggregation (paper: 3)")
    reweight_k: int = Field(9, ge=1, description="neighbours used by the image-score reweighting (paper: b = 9)")
    reweight: bool = Field(True, description="apply the Eq. 7 image-score reweighting")
    chunk_size: int = Field(4096, gt=0, description="query rows per nearest-neighbour block")


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
        "cpu": {"method": {"coreset_ratio": 0.01, "coreset_min": 2000, "embedding_dim": 1024}},
    }

    def embed(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Locally aware patch features (B, D, h, w), D at most ``embedding_dim``."""
        out = pooled_patch_features(stages, self.config.patch_size, count_include_pad=False)
        return pool_channels(out, self.config.embedding_dim) if out.shape[1] > self.config.embedding_dim else out

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
