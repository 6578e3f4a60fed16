"""N-Net: bidirectional constrained distillation (Li, Li, Xing, Tang 2025), registered as ``nnet``.

Pipeline (paper Fig. 2): a frozen pretrained teacher T gives F_1..F_3 (strides 4, 8, 16).
- Forward branch T-S1: a randomly initialised copy S1 of the teacher's architecture gives SF_i; the feature
  projection modules give P_i = FPM_T(F_i) and SP_i = FPM_S(SF_i) (fpm.py); S1 learns SP_i -> P_i (L_KD) and, in the
  first ``align_epochs`` epochs, SF_i -> P_i (L_align).
- Reverse branch T-S2: F_3 is recalled from the normal-feature store (nfs.py) as F'_3; FPM_T maps F_1, F_2, F'_3 to
  adapted features that the fusion-compression module (ffc.py) turns into F_C; the reverse student S2 (decoder.py)
  decodes F_C into D_1..D_3, trained towards F_i (L_RKD).
- Inference: Eq. 8 on the six cosine-distance maps (anomaly_map.py), Gaussian blur (sigma 4) either after the base
  class's upsampling to the input size or on the combined map (``blur``), the maximum as the image score. Inference
  runs a copy of the network with its BatchNorms folded (fold.py) and only the scored branches.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from adcore.backbones import FeatureExtractor
from adcore.config import Section
from adcore.errors import ConfigError
from adcore.methods.base import AnomalyModel, FitData, RawPrediction, TrainOptions
from adcore.methods.nnet.anomaly_map import Pairing, score_map, stage_maps
from adcore.methods.nnet.fold import fold_batchnorms
from adcore.methods.nnet.loss import LossType, align_beta, align_loss, distill_loss, total_loss
from adcore.methods.nnet.network import NNetNetwork
from adcore.methods.nnet.nfs import entropy_loss
from adcore.methods.registry import register
from adcore.postprocess import gaussian_blur

Branch = Literal["both", "reverse", "forward"]


class NNetConfig(Section):
    branch: Branch = Field("both", description="branches trained: 'both' (N-Net), 'reverse' (reverse distillation "
                                               "only; with fpm, nfs and ffc off this is RD4AD), 'forward'")
    score_maps: Branch | None = Field(None, description="branch maps entering Eq. 8 at inference (Table 7): 'both' "
                                                        "(M1..M6), 'reverse' (M1..M3), 'forward' (M4..M6); None: "
                                                        "every trained branch")
    forward_map: Literal["projected", "raw"] = Field(
        "projected", description="forward maps M4..M6 from P_i vs SP_i (projected, with L_KD) or P_i vs the raw SF_i "
                                 "(raw: Table 6's L_align-only row, where FPM_S is not trained)")
    loss: LossType = Field("cosine", description="distance in L_RKD, L_KD and L_align (Fig. 9): cosine (paper, "
                                                 "RD4AD), l1 or l2; the anomaly maps stay cosine (Eq. 2)")
    pairing: Pairing = Field("cross", description="Eq. 8 pairs: 'cross' = (M1+M6)(M2+M5)(M3+M4) as printed, "
                                                  "'same' = same-scale (M1+M4)(M2+M5)(M3+M6)")
    blur: Literal["input", "map"] = Field("input", description="Gaussian blur (postprocess.blur_sigma) on the "
                                                               "input-size map ('input', RD4AD) or on the combined "
                                                               "map_size map before upsampling ('map', the paper's "
                                                               "text)")
    fpm: bool = Field(True, description="feature projection module (Table 4); off: P_i = F_i, SP_i = SF_i")
    fpm_recall: Literal["split_bn", "separate", "shared"] = Field(
        "split_bn", description="projection of the recalled F'_3: teacher FPM with a BatchNorm per input kind "
                                "(split_bn), an FPM of its own (separate), or one BatchNorm for F_3 and F'_3 "
                                "(shared, round 1)")
    nfs: bool = Field(True, description="normal-feature store on F_3 (Table 5); off: F'_3 = F_3")
    nfs_addressing: Literal["cosine", "softmax"] = Field("cosine", description="NFS weights: cosine similarities "
                                                                               "(paper) or their softmax (MemAE)")
    nfs_init: Literal["features", "uniform"] = Field("features", description="NFS items: sampled training F_3 "
                                                                             "vectors (seeded) or MemAE's uniform")
    ffc: bool = Field(True, description="fusion-compression module (Table 5); off: RD4AD's plain bottleneck")
    fpm_reduction: int = Field(32, gt=0, description="r, channel reduction inside FPM (not given by the paper)")
    nfs_items: int = Field(50, gt=1, description="N, memory items of the NFS (not given by the paper)")
    nfs_shrink: float = Field(1.0, ge=0.0, description="hard-shrinkage threshold in units of 1/N (MemAE: 1 to 3)")
    ffc_blocks: int = Field(4, gt=0, description="L, residual blocks compressing F_E into F_C (paper: 4)")
    bottleneck_channels: int | None = Field(None, gt=0, description="channels of F_C; None: 2 x the deepest "
                                                                     "teacher stage (WRN50: 2048, as RD4AD)")
    decoder_blocks: list[int] = Field([6, 4, 3], description="S2 blocks per stage, stride 4, 8, 16 (RD4AD's "
                                                             "de-WRN50: 6, 4, 3)")
    alpha: float = Field(1.2, ge=0.0, description="weight of L_KD (Eq. 7); 0 turns L_KD off (Table 6)")
    delta: float = Field(0.002, ge=0.0, description="weight of L_query (Eq. 7)")
    align_epochs: int = Field(20, ge=0, description="beta = 1 for the first align_epochs epochs, then 0 (Eq. 3); "
                                                    "0 turns L_align off (Table 6)")
    epochs: int = Field(200, gt=0, description="fixed number of epochs; never chosen on test data")
    lr: float = Field(0.05, gt=0.0, description="Adam learning rate (paper: 0.05; the cpu profile: RD4AD's 0.005)")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas (paper: 0.5, 0.999)")
    map_size: int = Field(64, gt=0, description="stage maps are upsampled to this size (paper: 64), at most the "
                                                "stride-4 map size for small inputs")

    @model_validator(mode="after")
    def _score_maps_were_trained(self) -> "NNetConfig":
        if self.score_maps is not None and self.branch != "both" and self.score_maps != self.branch:
            raise ValueError(f"score_maps: {self.score_maps!r} needs maps of a branch that branch={self.branch!r} "
                             "does not train")
        return self


@register
class NNet(AnomalyModel[NNetNetwork]):
    """N-Net, bidirectional constrained distillation.

    Profiles: ``paper`` follows section 4.1 (WRN50-2 teacher from the timm hub, layer1..layer3; random WRN50-2
    forward student; input 256, batch 16, Adam lr 0.05 betas (0.5, 0.999), 200 epochs, L = 4, alpha 1.2,
    delta 0.002, beta = 1 for 20 epochs; S2 = RD4AD's de-WRN50 with 6/4/3 blocks, F_C 2048 x 8 x 8) and section 3.4
    for the blur: "本文使用高斯滤波器平滑处理异常评分图 Score_p" (the Gaussian smooths Score_p, the 64 x 64 map of Eq.
    8), so ``blur="map"``; RD4AD, which the paper cites for sigma 4, blurs the input-size map (``blur="input"``,
    the default and the cpu profile's).
    ``cpu`` generalises the backbone (EfficientNet-Lite0 offline weights, stride 4/8/16 maps with 24/40/112
    channels, a random Lite0 as forward student), the input (128 px: the stage maps are 32 x 32 and the combined
    map is 32 x 32 instead of 64), the decoder depth (1 block per stage) and the schedule (8 epochs, beta = 1 for
    the first 2, the paper's 10 %), so that one category trains in minutes on two CPU cores. Its learning rate is
    0.005, RD4AD's published default (Deng and Li 2022), the reverse-distillation baseline N-Net extends, used for
    the smaller, shorter cpu schedule instead of the paper's 0.05 (measurements: docs/RESULTS.md).
    Not printed in the paper and taken from the works it builds on: FPM reduction r = 32 (coordinate attention),
    the NFS threshold 1/N and N = 50 (MemAE), the decoder layout (RD4AD); the NFS initialisation (nfs.py).

    Data flow in training: the frozen teacher's features come from the feature cache (computed once per category);
    the forward student needs the images every epoch, so the transformed training images are decoded once and kept
    in memory (fp16) next to the cached features. The reverse-only baseline needs no images.
    Gradients of L_KD reach both FPMs: the paper relies on the reverse student to keep FPM_T from a trivial
    solution. L_align does not reach FPM_T (loss.py). The projection of the recalled F'_3: network.py.
    """

    name = "nnet"
    Config = NNetConfig
    _inference_cache: tuple[tuple[int, str, int], NNetNetwork, NNetNetwork] | None = None
    feature_strides = (4, 8, 16)
    smoke_overrides = ("method.nnet.epochs=2", "method.nnet.align_epochs=1", "method.nnet.nfs_items=8",
                       "data.batch_size=4")
    profiles = {
        "paper": {
            "data": {"batch_size": 16},
            "method": {"epochs": 200, "lr": 0.05, "align_epochs": 20, "decoder_blocks": [6, 4, 3],
                       "ffc_blocks": 4, "blur": "map"},
        },
        "cpu": {
            "data": {"image_size": 128},
            "method": {"epochs": 8, "lr": 0.005, "align_epochs": 2, "decoder_blocks": [1, 1, 1], "ffc_blocks": 4},
        },
    }

    def output_blur_sigma(self) -> float:
        """With ``blur="map"`` predict_raw blurs the combined map itself: the input-size map is not blurred again."""
        return 0.0 if self.config.blur == "map" else super().output_blur_sigma()

    def build_network(self, info: dict[str, Any]) -> NNetNetwork:
        return NNetNetwork(self.backbone.name, list(info["channels"]), list(info["strides"]), self.config)

    # ---- training ------------------------------------------------------------------------------------------------
    def fit_network(self, features, data: FitData, options: TrainOptions) -> None:
        cfg = self.config
        net = self.new_network({"channels": list(self.backbone.channels), "strides": list(self.backbone.strides)})
        if hasattr(net, "nfs") and cfg.nfs_init == "features":  # before the optimizer sees the memory
            net.init_memory(features.stages[-1], self.settings.train.seed)
        batch_size = self.settings.data.batch_size
        images = self._load_images(data) if net.forward_branch else None
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        drop_last = len(features) > batch_size  # BatchNorm needs more than one sample per batch

        def train_epoch(epoch: int, rng: np.random.Generator) -> dict[str, float]:
            net.train()
            beta = align_beta(epoch, cfg.align_epochs)
            sums: dict[str, float] = {}
            seen = 0
            for idx, feats in features.batches(batch_size, shuffle=True, rng=rng, device=self.device,
                                               drop_last=drop_last):
                x = images[torch.from_numpy(idx)].to(self.device).float() if images is not None else None
                out = net(feats, x)
                parts = self._losses(out, beta)
                loss = parts.pop("loss")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if not torch.isfinite(loss):
                    raise ConfigError(f"nnet: training diverged at epoch {epoch} (loss {float(loss)}); "
                                      f"lower method.nnet.lr (now {cfg.lr})")
                b = len(idx)
                parts["loss"] = loss.detach()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * b
                seen += b
            losses = {k: v / max(seen, 1) for k, v in sums.items()}
            losses["beta"] = beta
            return losses

        self.run_epochs(data, options, cfg.epochs, train_epoch, {"network": net, "optimizer": optimizer})

    def _losses(self, out: dict[str, Any], beta: float) -> dict[str, torch.Tensor]:
        cfg, zero = self.config, out["F"][0].new_zeros(())
        kind = cfg.loss
        rkd = distill_loss(out["F"], out["D"], kind) if "D" in out else zero  # Eq. 4
        kd = distill_loss(out["P"], out["SP"], kind) if "SP" in out and cfg.alpha > 0 else zero  # Eq. 1
        align = align_loss(out["SF"], out["P"], kind) if "SF" in out and beta > 0 else zero  # Eq. 3
        query = entropy_loss(out["weights"]) if out.get("weights") is not None else zero  # Eq. 5
        loss = total_loss(rkd, kd, align, query, alpha=cfg.alpha, beta=beta, delta=cfg.delta)  # Eq. 7
        return {"loss": loss, "rkd": rkd.detach(), "kd": kd.detach(), "align": align.detach(),
                "query": query.detach()}

    def inference_network(self, feats: list[torch.Tensor], images: torch.Tensor, branches: str) -> NNetNetwork:
        """The fitted network with its BatchNorms folded into the convolutions and the forward student in
        channels_last (fold.py), the same maps within 1e-5 at about half the student's cost. Built on the first
        call from one probe image and rebuilt when the network, its device or any of its weights change (every
        in-place update, an optimizer step or load_state_dict, bumps a tensor's version counter)."""
        network = self.check_is_fitted()
        if torch.compiler.is_exporting() or torch.compiler.is_compiling():
            return network  # the fold probes real tensors; a traced graph (adcore export) keeps the plain network
        tensors = [*network.parameters(), *network.buffers()]
        key = (id(network), str(tensors[0].device), sum(t._version for t in tensors))
        cached = self._inference_cache
        if cached is not None and cached[0] == key and cached[1] is network:
            return cached[2]
        probe_feats, probe = [f[:1] for f in feats], images[:1]
        fast = fold_batchnorms(network, lambda net: net(probe_feats, probe, branches))
        student = getattr(fast, "student", None)
        if isinstance(student, FeatureExtractor):  # frozen from here on: NHWC input and weights, as the teacher's
            student.trainable = False
            student.body.to(memory_format=torch.channels_last)
        fast.requires_grad_(False)
        self._inference_cache = (key, network, fast)
        return fast

    @staticmethod
    def _load_images(data: FitData) -> torch.Tensor:
        from adcore.data.dataset import make_loader

        loader = make_loader(list(data.train), data.transform, batch_size=16)
        return torch.cat([batch["image"].half() for batch in loader])

    # ---- inference -----------------------------------------------------------------------------------------------
    def predict_raw(self, images: torch.Tensor) -> RawPrediction:
        maps = self.combined_map(images)
        if self.config.blur == "map":  # Score_p smoothed at map_size; Score_l is its maximum (section 3.4)
            maps = gaussian_blur(maps, self.settings.postprocess.blur_sigma)
            return RawPrediction(maps=maps, scores=maps.flatten(1).max(dim=1).values)
        return RawPrediction(maps=maps)  # the base class upsamples, then blurs

    def combined_map(self, images: torch.Tensor) -> torch.Tensor:
        """Score_p of Eq. 8 (B, map_size, map_size) over the branches ``score_maps`` names, before any blur.

        Runs the inference copy of the network (``inference_network``) and only the branches that are scored.
        """
        cfg = self.config
        which = cfg.score_maps or cfg.branch
        with torch.no_grad():
            feats = self.backbone_features(images)
            out = self.inference_network(feats, images, which)(feats, images, which)
        h, w = feats[0].shape[-2:]
        size = (min(cfg.map_size, h), min(cfg.map_size, w))
        reverse = stage_maps(out["F"], out["D"], size) if which != "forward" else None  # M1..M3
        forward = None
        if which != "reverse":  # M4..M6
            forward = stage_maps(out["P"], out["SF"] if cfg.forward_map == "raw" else out["SP"], size)
        return score_map(reverse, forward, which, cfg.pairing)  # Eq. 8
