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

import heapq
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from adcore.config import Section
from adcore.errors import DataError
from adcore.features import FeatureCache
from adcore.methods import register
from adcore.methods.base import AnomalyModel, FitData, RawPrediction
from adcore.progress import progress


class PatchCoreConfig(Section):
    coreset_ratio: float = Field(0.1, gt=0.0, le=1.0, description="share of training patches kept in memory")
    coreset_min: int = Field(0, ge=0, description="keep at least this many patches (small datasets, low ratios)")
    projection_dim: int = Field(128, gt=0, description="random projection size for coreset selection")
    embedding_dim: int = Field(1024, gt=0, description="channels after adaptive pooling of the concatenated stages")
    patch_size: int = Field(3, ge=1, description="neighbourhood of the local aggregation (paper: 3)")
    reweight_k: int = Field(9, ge=1, description="neighbours used by the image-score reweighting (paper: b = 9)")
    reweight: bool = Field(True, description="apply the Eq. 7 image-score reweighting")
    chunk_size: int = Field(4096, gt=0, description="query rows per nearest-neighbour block")


def local_patch_features(stages: list[torch.Tensor], patch_size: int, embedding_dim: int) -> torch.Tensor:
    """(B, C_i, H_i, W_i) stages -> (B, D, H_0, W_0): 3x3 aggregation, upsample to the first stage, pool channels."""
    pad = patch_size // 2
    size = stages[0].shape[-2:]
    maps = []
    for feat in stages:
        feat = F.avg_pool2d(feat, patch_size, stride=1, padding=pad, count_include_pad=False)
        if feat.shape[-2:] != size:
            feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        maps.append(feat)
    out = torch.cat(maps, dim=1)
    if out.shape[1] > embedding_dim:
        b, c, h, w = out.shape
        out = out.permute(0, 2, 3, 1).reshape(-1, 1, c)
        out = F.adaptive_avg_pool1d(out, embedding_dim).reshape(b, h, w, embedding_dim).permute(0, 3, 1, 2)
    return out


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0,
                   show_progress: bool = False, leaf_size: int = 256) -> torch.Tensor:
    """Indices of the greedy k-center coreset (paper Alg. 1) of ``features``, on a random projection.

    Exact greedy selection, made fast by lazy evaluation: points are grouped into compact leaves of a random
    projection tree; each leaf keeps an upper bound of its largest distance to the coreset, and new centres are
    applied to a leaf only when its bound is the largest (a small matrix product over all centres it has not seen),
    skipping centres that the triangle inequality proves too far to matter. The next centre is the argmax of an
    up-to-date leaf whose bound tops every other leaf's, which is exactly the plain algorithm's choice.
    """
    n = features.shape[0]
    n_select = max(1, min(int(n_select), n))
    gen = torch.Generator().manual_seed(seed)
    x = features.detach().float().cpu()
    if projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj
    start = int(torch.randint(n, (1,), generator=gen))
    if n_select == n:
        return torch.cat([torch.tensor([start]), torch.tensor([i for i in range(n) if i != start])])
    sel = _lazy_k_center(x.numpy().astype(np.float32, copy=False), n_select, start, leaf_size, seed, show_progress)
    return torch.from_numpy(sel)


def _tree_leaves(x: np.ndarray, leaf: int, seed: int) -> list[np.ndarray]:
    """Random projection tree: split at the median along the axis between two far points until leaves are small."""
    rng = np.random.default_rng(seed)
    leaves, stack = [], [np.arange(x.shape[0])]
    while stack:
        idx = stack.pop()
        if idx.shape[0] <= leaf:
            leaves.append(idx)
            continue
        pts = x[idx]
        a = pts[rng.integers(len(idx))]
        far1 = pts[np.argmax(((pts - a) ** 2).sum(1))]
        far2 = pts[np.argmax(((pts - far1) ** 2).sum(1))]
        k = max(leaf, (len(idx) // 2 // leaf) * leaf)  # left part a multiple of leaf: leaves stay full
        part = np.argpartition(pts @ (far2 - far1), k - 1)
        stack.extend([idx[part[k:]], idx[part[:k]]])
    return leaves


def _lazy_k_center(x: np.ndarray, n_select: int, start: int, leaf: int, seed: int, show_progress: bool) -> np.ndarray:
    leaves = _tree_leaves(x, leaf, seed)
    nb = len(leaves)
    members = np.empty((nb, leaf), dtype=np.int64)
    for b, ids in enumerate(leaves):
        members[b, : len(ids)] = ids
        members[b, len(ids):] = ids[0]  # pad with copies of a member: same distances, never a new choice
    xb = x[members]
    sq = np.einsum("bld,bld->bl", xb, xb)
    centre = xb.mean(1)
    radius = np.sqrt(((xb - centre[:, None]) ** 2).sum(-1).max(1))
    min_d = np.full((nb, leaf), np.inf, dtype=np.float32)  # squared distance to the nearest selected point
    bound = np.full(nb, np.inf, dtype=np.float32)  # max of min_d per leaf (exact once the leaf is up to date)
    applied = np.zeros(nb, dtype=np.int64)  # leaf b has seen sel[:applied[b]]
    sel = np.empty(n_select, dtype=np.int64)
    sel_sq = np.empty(n_select, dtype=np.float32)
    sel[0], sel_sq[0] = start, x[start] @ x[start]
    heap = [(-np.inf, b) for b in range(nb)]
    for i in progress(range(1, n_select), desc="coreset", enabled=show_progress):
        while True:
            b = heap[0][1]
            if applied[b] == i:
                break
            heapq.heappop(heap)
            centres, c_sq = x[sel[applied[b]:i]], sel_sq[applied[b]:i]
            if np.isfinite(bound[b]):
                # |p - c| >= |centre_b - c| - radius_b: centres farther than that cannot lower any distance here.
                gap = np.sqrt(((centres - centre[b]) ** 2).sum(1)) - radius[b]
                near = gap < np.sqrt(bound[b]) * (1 + 1e-5) + 1e-6
                centres, c_sq = centres[near], c_sq[near]
            if len(centres):
                d2 = (sq[b][:, None] - 2.0 * (xb[b] @ centres.T) + c_sq[None, :]).min(1)
                np.minimum(min_d[b], np.maximum(d2, 0.0), out=min_d[b])
                bound[b] = min_d[b].max()
            applied[b] = i
            heapq.heappush(heap, (-float(bound[b]), b))
        b = heap[0][1]
        sel[i] = members[b, int(np.argmax(min_d[b]))]
        sel_sq[i] = x[sel[i]] @ x[sel[i]]
    return sel


def nearest_neighbours(queries: torch.Tensor, memory: torch.Tensor, k: int = 1, chunk: int = 4096,
                       memory_sq: torch.Tensor | None = None,
                       max_block: int = 1 << 23) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances and indices of the k nearest memory rows for each query row (exact, blocked).

    |q - m|^2 = |q|^2 - 2 q.m + |m|^2: one fused addmm gives |m|^2 - 2 q.m per block (the search only needs
    that, since |q|^2 is the same for every memory row), then min (k = 1) or topk, and |q|^2 is added to the k
    winners only. Blocks hold at most ``max_block`` floats (32 MiB) whatever ``chunk`` says.
    ``memory_sq``: |m|^2 when the caller already has it.
    """
    mem_sq = (memory * memory).sum(1) if memory_sq is None else memory_sq
    rows = max(1, min(int(chunk), max_block // max(1, memory.shape[0])))
    dists, idxs = [], []
    for start in range(0, queries.shape[0], rows):
        q = queries[start:start + rows]
        d2 = torch.addmm(mem_sq, q, memory.T, beta=1, alpha=-2)
        if k == 1:
            d, i = d2.min(dim=1, keepdim=True)
        else:
            d, i = torch.topk(d2, k, dim=1, largest=False)
        d += (q * q).sum(1, keepdim=True)
        dists.append(d.clamp_min_(0).sqrt_())
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


@register
class PatchCore(AnomalyModel):
    """PatchCore: a memory bank of locally aware patch features, coreset-subsampled; scores are NN distances."""

    name = "patchcore"
    Config = PatchCoreConfig
    feature_strides = (8, 16)
    profiles = {
        "paper": {"backbone": {"name": "wide_resnet50_2", "weights": "hub"},
                  "data": {"image_size": 256, "crop_size": 224},
                  "method": {"coreset_ratio": 0.1, "embedding_dim": 1024}},
        # cpu: a 1% coreset (the paper reports 1% next to 10%) keeps inference near the backbone's cost and fitting
        # within minutes on 2 cores; measured on pcb it cost no image AUROC (docs/RESULTS.md). At least 2000
        # patches, so that small categories (the demo data) keep enough memory.
        "cpu": {"backbone": {"name": "tf_efficientnet_lite0", "weights": "offline"},
                "data": {"image_size": 256},
                "method": {"coreset_ratio": 0.01, "coreset_min": 2000, "embedding_dim": 1024}},
    }

    def __init__(self, config, *, load_weights: bool = True) -> None:
        super().__init__(config, load_weights=load_weights)
        self.memory: torch.Tensor | None = None
        self.feature_shape: tuple[int, int] | None = None

    def embed(self, stages: list[torch.Tensor]) -> torch.Tensor:
        return local_patch_features(stages, self.cfg.patch_size, self.cfg.embedding_dim)

    def fit(self, data: FitData) -> None:
        if not data.train:
            raise DataError(f"{data.category_name or 'category'}: no training images")
        cache = data.cache or FeatureCache(None)
        feats = cache.features(self.backbone, data.train, data.transform, batch_size=self.config.data.batch_size,
                               num_workers=self.config.data.num_workers, show_progress=data.progress)
        patches = []
        for _, stages in feats.batches(self.config.data.batch_size, device=self.device):
            emb = self.embed(stages)
            self.feature_shape = tuple(emb.shape[-2:])
            patches.append(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).cpu())
        bank = torch.cat(patches)
        n_select = min(bank.shape[0], max(1, self.cfg.coreset_min, int(round(self.cfg.coreset_ratio * bank.shape[0]))))
        if n_select < bank.shape[0]:
            idx = greedy_coreset(bank.to(self.device), n_select, self.cfg.projection_dim,
                                 seed=self.config.train.seed, show_progress=data.progress)
            bank = bank[idx.cpu()]
        self.memory = bank.to(self.device).contiguous()
        self.fit_info.update({"n_patches": int(sum(p.shape[0] for p in patches)), "memory_size": int(bank.shape[0])})

    def predict_raw(self, images: torch.Tensor) -> RawPrediction:
        if self.memory is None:
            raise RuntimeError("PatchCore.predict before fit")
        emb = self.embed(self.backbone(images))
        b, d, h, w = emb.shape
        queries = emb.permute(0, 2, 3, 1).reshape(-1, d)
        memory_sq = (self.memory * self.memory).sum(1)
        dist, idx = nearest_neighbours(queries, self.memory, 1, self.cfg.chunk_size, memory_sq)
        patch_scores = dist[:, 0].reshape(b, h * w)
        maps = patch_scores.reshape(b, h, w)
        if not self.cfg.reweight or self.memory.shape[0] <= self.cfg.reweight_k:
            return RawPrediction(maps=maps)
        # Eq. 7: s = (1 - exp|m_test - m*| / sum_b exp|m_test - m_b|) * s*, over m*'s b nearest memory items.
        worst = patch_scores.argmax(dim=1)
        rows = torch.arange(b, device=images.device)
        query = queries.reshape(b, h * w, d)[rows, worst]
        nn_item = self.memory[idx[:, 0].reshape(b, h * w)[rows, worst]]
        _, support = nearest_neighbours(nn_item, self.memory, self.cfg.reweight_k, memory_sq=memory_sq)
        d_support = torch.cdist(query.unsqueeze(1), self.memory[support]).squeeze(1)
        weight = 1 - torch.softmax(d_support, dim=1)[:, 0]
        # The paper's image score lives on the patch grid: weight * the largest patch distance.
        return RawPrediction(maps=maps, scores=weight * patch_scores.max(dim=1).values)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.memory is None:
            raise RuntimeError("PatchCore.save before fit")
        return {"memory": self.memory}

    def build_info(self) -> dict[str, Any]:
        return {"feature_shape": list(self.feature_shape or ())}

    def load_state(self, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.memory = tensors["memory"].to(self.device)
        self.feature_shape = tuple(info.get("feature_shape") or ()) or None
