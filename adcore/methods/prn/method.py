"""PRN (Zhang et al., "Prototypical Residual Network for Anomaly Detection and Localization", CVPR 2023).

A segmentation network on a frozen encoder, supervised by a few real anomalies plus generated ones:

1. Multi-scale prototypes MP (3.1, :mod:`.prototypes`): k-means over whole normal feature maps of stages 1-3,
   K = ``prototype_ratio`` x the normal images per scale, <= 300 iterations, frozen; residual = |F - P*|.
2. MF (3.2, Eq. 2, :mod:`.fusion`) on features and on residuals, concatenated per scale; MSA (3.3, Eq. 3,
   :mod:`.attention`, divisor ``attention_scale``) stacked ``msa_depth`` times; another MF: the skip branches of
   stages 1-3. A U-Net-like decoder (:mod:`.decoder`) starts from the encoder's stage 4 (stride 32) and takes the
   skip outputs in turn.
3. Loss (Eq. 5, :mod:`.loss`): Smooth L1 + lambda focal (lambda 5, alpha 0.5, gamma 4).
4. Training batches: ``batch_normal`` normal images, ``batch_ea`` extended anomalies (EA) from the seen anomalies
   and ``batch_sim`` simulated ones (HEA with textures, HOA from shuffled normal images), generated online
   (:mod:`adcore.synthesis`) from the epoch's numpy Generator, so a resumed run repeats an uninterrupted one.
   Without seen anomalies (``n_seen = 0``) or with EA off, EA slots are filled with simulated anomalies.
   Masks are the intended anomaly regions; textures come from ``texture_dir`` (DTD; required unless
   ``procedural_textures``) and are grey on grayscale categories.
5. The map is the decoder's output as it is (3.5: "M_o ... can be read as the pixel-level localisation"), only
   upsampled to the input size: no Gaussian blur (``blur_sigma = 0``). Image score: the mean of its 100 highest
   pixels.

Data protocol (4.1, A.2): ``n_seen`` anomalies with masks are drawn from the test split with the run seed by
``adcore.training.train_model`` (``adcore.data.mvtec.split_seen_anomalies``), passed as ``FitData.seen_anomalies``
and listed in ``fit_info["seen_anomalies"]``; evaluation excludes them.

Paper profile: ResNet-18 (hub weights) layers 1-3 for the skip branches and layer4 into the decoder, input 256,
Adam lr 1e-4, weight decay 1e-5, batch 64 = 32 normal + 16 EA + 16 simulated, 700 epochs, MSA depth 3 with 2c^j
channels and Eq. 3's literal 1/c^s, full-resolution decoder output, DTD textures (``texture_dir`` must be set).
Generalised for the cpu profile (a category trains in minutes on 2 CPU cores): the offline EfficientNet-Lite0
(stages at strides 4, 8, 16 and 32), input 160, batch 12 = 6 + 3 + 3, an "epoch" of ``steps_per_epoch`` = 25
batches, 4 epochs at lr 1e-3, MSA depth 1 on ``width`` = 24 channels (a 1x1 projection of the concatenation), a
narrower decoder ending at stride 4 (the base class upsamples the map), procedural textures allowed when no
``texture_dir`` is given. The paper's fully connected patch
embedding in MSA is replaced by a per-position (1x1) embedding, see :mod:`.attention`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from adcore.config import Section
from adcore.errors import ConfigError, DataError
from adcore.methods.base import AnomalyModel, FitData, RawPrediction, TrainOptions
from adcore.methods.prn.loss import prn_loss
from adcore.methods.prn.network import PRNNetwork
from adcore.methods.prn.prototypes import fit_prototypes
from adcore.methods.registry import register

log = logging.getLogger(__name__)


class PRNConfig(Section):
    n_seen: int = Field(10, ge=0, description="seen anomalies (with masks) drawn from the test split for training")
    texture_dir: str | None = Field(None, description="folder of texture images for HEA (DTD in the paper)")
    procedural_textures: bool = Field(False, description="allow procedural textures when texture_dir is not set "
                                                         "(cpu profile); false: texture_dir is required (paper)")
    epochs: int = Field(700, gt=0)
    steps_per_epoch: int | None = Field(None, gt=0, description="batches per epoch; None: one pass over the normals")
    batch_normal: int = Field(32, ge=1, description="normal images per batch")
    batch_ea: int = Field(16, ge=0, description="extended anomalies per batch")
    batch_sim: int = Field(16, ge=0, description="simulated anomalies (HEA/HOA) per batch")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    prototype_ratio: float = Field(0.1, gt=0, le=1.0, description="prototypes per scale / normal images (Table 6)")
    kmeans_iters: int = Field(300, ge=1)
    use_mp: bool = Field(True, description="multi-scale prototypes and residuals (Table 4)")
    use_msa: bool = Field(True, description="multi-size self-attention (Table 4)")
    use_mf: bool = Field(True, description="multi-scale fusion (Table 4)")
    use_ea: bool = Field(True, description="extended anomalies (Table 5)")
    use_hea: bool = Field(True, description="heterogenous (texture) anomalies (Table 5)")
    use_hoa: bool = Field(True, description="homologous (shuffled normal) anomalies (Table 5)")
    use_target_area: bool = Field(True, description="random target-area shapes (Table 5 'TA')")
    target_area: Literal["auto", "foreground", "whole"] = Field(
        "auto", description="where anomalies go: estimated object foreground ('auto', whole image for textures) "
                            "or the whole image")
    msa_depth: int = Field(3, ge=0, description="MSA layers per scale (N = 3)")
    attention_scale: Literal["c", "sqrt_c"] = Field(
        "c", description="MSA logits divided by c^s (Eq. 3 as printed) or by sqrt(c^s) (scaled dot product, possibly "
                         "what was meant: 1/c^s starts every head almost uniform)")
    width: int | None = Field(None, gt=0, description="channels per scale in MSA; None: 2c^j as in the paper")
    decoder_channels: list[int] = Field([256, 128, 64, 32, 16], min_length=3)
    output_stride: Literal[1, 2, 4] = Field(1, description="decoder output stride (paper: 1, full resolution)")
    focal_lambda: float = Field(5.0, ge=0)
    focal_alpha: float = Field(0.5, ge=0, le=1)
    focal_gamma: float = Field(4.0, ge=0)

    @model_validator(mode="after")
    def _decoder_fits_output_stride(self) -> "PRNConfig":
        # 3 levels with skips (strides 16, 8, 4), then one more per halving of the stride down to output_stride.
        needed = 3 + {4: 0, 2: 1, 1: 2}[self.output_stride]
        if len(self.decoder_channels) < needed:
            raise ValueError(f"decoder_channels: output_stride={self.output_stride} needs {needed} values, got "
                             f"{self.decoder_channels}")
        return self


@register
class PRN(AnomalyModel[PRNNetwork]):
    name = "prn"
    Config = PRNConfig
    feature_strides = (4, 8, 16, 32)  # stages 1-3: skip branches; stage 4: the decoder's input
    blur_sigma = 0.0  # the decoder's map is used as it comes out (upsampled only), as in the paper
    smoke_overrides = ("method.prn.epochs=2", "method.prn.steps_per_epoch=2", "method.prn.n_seen=0")
    profiles = {
        "paper": {"backbone": {"name": "resnet18.tv_in1k"}, "data": {"batch_size": 64}},
        "cpu": {
            "data": {"image_size": 160, "batch_size": 16},
            "method": {"epochs": 4, "steps_per_epoch": 25, "batch_normal": 6, "batch_ea": 3, "batch_sim": 3,
                       "lr": 1e-3, "msa_depth": 1, "width": 24, "decoder_channels": [64, 32, 16],
                       "output_stride": 4, "procedural_textures": True},
        },
    }

    # ---- building -----------------------------------------------------------------------------------------------
    def build_network(self, info: dict[str, Any]) -> PRNNetwork:
        c = self.config
        return PRNNetwork(info["channels"], info["heights"], info["prototype_shapes"], use_mp=c.use_mp,
                          use_msa=c.use_msa, use_mf=c.use_mf, msa_depth=c.msa_depth, width=c.width,
                          decoder_channels=c.decoder_channels, output_stride=c.output_stride,
                          attention_scale=c.attention_scale)

    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        """Mean of the 100 highest pixels of the final map (paper 3.4)."""
        from adcore.postprocess import image_score_topk_mean

        return image_score_topk_mean(maps, 100)

    def _kinds(self) -> list[str]:
        flags = (("ea", self.config.use_ea), ("hea", self.config.use_hea), ("hoa", self.config.use_hoa))
        return [k for k, on in flags if on]

    # ---- training -----------------------------------------------------------------------------------------------
    def check_textures(self) -> None:
        """ConfigError (one line, naming ``method.prn.texture_dir``) unless HEA has its textures: a folder with
        images, or no folder where ``procedural_textures`` allows the fallback (cpu profile)."""
        from adcore.synthesis.textures import IMAGE_SUFFIXES, texture_images

        c = self.config
        if not c.use_hea:
            return
        if c.texture_dir is None:
            if c.procedural_textures:
                return
            raise ConfigError("method.prn.texture_dir: not set; the paper profile draws HEA textures from DTD "
                              "(set method.prn.texture_dir=/path/to/dtd/images, or method.prn.procedural_textures="
                              "true to accept procedural textures)")
        try:
            texture_images(c.texture_dir)
        except DataError:
            raise ConfigError(f"method.prn.texture_dir: {c.texture_dir} is not a folder with texture images "
                              f"({', '.join(IMAGE_SUFFIXES)})") from None

    def fit(self, data: FitData, options: TrainOptions | None = None) -> AnomalyModel:
        """Check the texture source first: a paper run without DTD fails before the feature pass, not after."""
        self.check_textures()
        return super().fit(data, options)

    def fit_network(self, features, data: FitData, options: TrainOptions) -> None:
        from adcore.synthesis.loading import build_generator, load_images, load_seen

        c = self.config
        feats = features
        n = len(data.train)
        shapes = [tuple(s.shape[1:]) for s in feats.stages]
        info: dict[str, Any] = {"channels": [s[0] for s in shapes], "heights": [s[1] for s in shapes],
                                "prototype_shapes": []}
        protos: list[torch.Tensor] = []
        if c.use_mp:  # prototypes on the skip stages 1-3 only ("j in {1, 2, 3}"), not on stage 4
            rng = np.random.default_rng([self.settings.train.seed, 31])
            protos, iters = fit_prototypes(feats.stages[:-1], c.prototype_ratio, rng, c.kmeans_iters, self.device)
            info["prototype_shapes"] = [list(p.shape) for p in protos]
            self.fit_info["kmeans_iterations"] = iters
        net = self.new_network(info)  # seeded, so a resumed run equals a fresh one
        for j, p in enumerate(protos):
            net.prototypes(j).copy_(p.to(self.device))

        # Images for anomaly generation, with the exact geometry of the model input.
        transform = data.transform
        normals = load_images([s.path for s in data.train], transform)
        seen = load_seen(data.seen_anomalies, transform)
        gen = build_generator(normals, seen, c.texture_dir, target_area=c.target_area, kinds=self._kinds(),
                              use_target_area=c.use_target_area)
        if c.n_seen and not data.seen_anomalies:
            log.warning("prn: n_seen=%d but no seen anomalies were passed; training on generated anomalies only",
                        c.n_seen)
        if not gen.kinds and c.batch_ea + c.batch_sim > 0:
            log.warning("prn: no anomaly kind is enabled or possible; training on normal images only")
        self.fit_info.update({
            "seen_anomalies": [str(s.path) for s in data.seen_anomalies],
            "seen_with_mask": len(gen.seen),
            "anomaly_kinds": list(gen.kinds),
            "foreground": {"kind": gen.foreground.kind, "fraction": round(gen.foreground.fraction, 4),
                           "reason": gen.foreground.reason},
            "textures": gen.textures.describe(),
            "n_prototypes": [p.shape[0] for p in protos],
        })

        mean = torch.tensor(transform.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(transform.std, device=self.device).view(1, 3, 1, 1)
        steps = c.steps_per_epoch or max(1, math.ceil(n / c.batch_normal))
        slots = ["ea"] * c.batch_ea + ["sim"] * c.batch_sim
        opt = torch.optim.Adam(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)

        def train_epoch(epoch: int, rng: np.random.Generator) -> dict[str, float]:
            net.train()
            reps = math.ceil(steps * c.batch_normal / n)
            order = np.concatenate([rng.permutation(n) for _ in range(reps)])
            totals = {"loss": 0.0, "smooth_l1": 0.0, "focal": 0.0}
            for step in range(steps):
                idx = order[step * c.batch_normal:(step + 1) * c.batch_normal]
                batch = feats.get(idx, self.device)
                images, masks = [], []
                for slot in slots:
                    kind = gen.pick_kind(rng, slot)
                    if kind is None:
                        continue
                    a = gen.generate(normals[int(rng.integers(0, n))], kind, rng)
                    images.append(a.image)
                    masks.append(a.mask)
                target = torch.zeros(len(idx) + len(images), 1, *transform_size(transform), device=self.device)
                if images:
                    x = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
                    with torch.no_grad():
                        extra = self.backbone((x - mean) / std)
                    batch = [torch.cat([a, b.float()]) for a, b in zip(batch, extra, strict=True)]
                    target[len(idx):, 0] = torch.from_numpy(np.stack(masks)).to(self.device).float()
                logits = net(batch)
                if target.shape[-2:] != logits.shape[-2:]:
                    # A cell is anomalous if any of its pixels is. Adaptive pooling equals max_pool2d(output_stride)
                    # when the input size is a multiple of the backbone strides, and also fits the other sizes
                    # (the backbone rounds its maps up, so the decoder output is not always input / output_stride).
                    target = F.adaptive_max_pool2d(target, logits.shape[-2:])
                loss, parts = prn_loss(logits, target, c.focal_lambda, c.focal_alpha, c.focal_gamma)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                totals["loss"] += float(loss.detach())
                for k, v in parts.items():
                    totals[k] += v
            return {k: v / steps for k, v in totals.items()}

        self.run_epochs(data, options, c.epochs, train_epoch, {"network": net, "optimizer": opt})

    # ---- inference ----------------------------------------------------------------------------------------------
    def predict_raw(self, images: torch.Tensor) -> RawPrediction:
        logits = self.check_is_fitted()(self.backbone_features(images))
        return RawPrediction(maps=torch.sigmoid(logits)[:, 0])


def transform_size(transform) -> tuple[int, int]:
    return (transform.output_size, transform.output_size)
