"""CFA (Lee, Lee, Song 2022, "CFA: Coupled-hypersphere-based Feature Adaptation for Target-Oriented Anomaly
Localization") as an ``adcore`` method: frozen backbone -> patch descriptor phi -> frozen memory bank C.

Training adapts phi only (plus the radius r): each adapted patch feature is pulled into the hyperspheres of its K
nearest memory items (Eq. 1) and pushed out of those of the next J (Eq. 2). Scoring is Eq. 5 on the Euclidean
distances to the K nearest.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from adcore.config import Section
from adcore.errors import ConfigError, DataError, ModelFormatError
from adcore.methods.base import AnomalyModel, FitData, RawPrediction, TrainOptions
from adcore.methods.cfa.anomaly_map import align_and_average, patch_scores
from adcore.methods.cfa.loss import cfa_loss
from adcore.methods.cfa.memory import build_memory_bank
from adcore.methods.cfa.network import CFANetwork, CFAView
from adcore.methods.registry import register

#: The scoring rule a model file was fitted with (build_info["score"]): Eq. 5 on Euclidean distances, reference init.
SCORE_RULE = "eq5-euclidean"


class CFAConfig(Section):
    gamma_c: int = Field(1, ge=1, description="memory bank = H*W / gamma_c centres (K-means when > 1); paper 1-8")
    gamma_d: int = Field(1, ge=1, description="descriptor output channels D' = D / gamma_d; paper 1-8")
    k: int = Field(3, ge=1, description="K nearest memory items attracted (Eq. 1) and scored (Eq. 5)")
    j: int = Field(3, ge=0, description="J hard negatives: the (K+1)..(K+J)-th nearest items, repelled (Eq. 2)")
    epochs: int = Field(30, ge=0, description="fixed number of training epochs (never chosen on test)")
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate (amsgrad, no scheduler)")
    weight_decay: float = Field(5e-4, ge=0.0)
    batch_size: int = Field(4, gt=0, description="training batch size (images)")
    alpha: float = Field(0.1, ge=0.0, description="margin of the repulsion term (Eq. 2)")
    r_init: float = Field(1e-5, ge=0.0, description="initial hypersphere radius r (learnable)")
    loss_scale: float = Field(1000.0, gt=0.0, description="1/nu: the loss is multiplied by this (reference: 1000)")
    variant: Literal["cfa", "cfa++"] = Field(
        "cfa", description="'cfa++': ensemble of a resized-only and a resized+cropped model (needs data.crop_size)")
    ablation: Literal["none", "att", "att+rep"] = Field(
        "att+rep", description="Table 5 rows: 'none' = no adaptation, 'att' = L_att only, 'att+rep' = full CFA")
    score_chunk: int = Field(8192, gt=0, description="patches per nearest-neighbour block at inference")


@register
class CFA(AnomalyModel[CFANetwork]):
    """CFA / CFA++ with the Table 5 ablation switches.

    Paper profile: WideResNet-50-2 with torchvision's ImageNet weights (``wide_resnet50_2.tv_in1k``, as the reference
    code), C2-C4 (strides 4, 8, 16), resize 256 + centre crop 224, batch 4, 30 epochs, AdamW lr 1e-3 wd 5e-4
    amsgrad, gamma_c = gamma_d = 1, K = J = 3, r0 = 1e-5, alpha = 0.1, 1/nu = 1000; the descriptor initialised as
    the reference code's (network.py).

    Generalised beyond the paper:
    - any timm backbone with strides 4, 8, 16 (one map per stride; the paper splits EfficientNet's stages into
      several maps per scale, this uses the first stage reaching each stride). The cpu profile uses the offline
      EfficientNet-Lite0 (D = 24 + 40 + 112 = 176), images resized to 160 and cropped to 144 and 5 epochs, so a
      category trains in minutes on two CPU cores.
    - gamma_c, gamma_d are any integers >= 1 (the paper tests 1, 2, 4, 8).
    - the hard negatives are the (K+1)..(K+J)-th nearest items for any K, J (the reference code is right only
      for K == J).
    - CFA++ ("ensemble of the results when using cropped images and using only resized samples", Sec. 4.2): the
      model's input frame is the resized-only image (``make_transform`` drops the crop). The cropped view is the
      same centre crop taken from that input, so its map covers the centre of the resized map exactly: it is
      resampled onto that region of the resized view's feature grid (a pure copy for 256/224 at stride 4: 56x56
      cells at offset 4) and the two maps are averaged there; outside the crop only the resized view scores.
      The two views are trained separately, so their raw maps live on different scales: each view's map is
      standardised with the mean and standard deviation of its raw maps on the validation images
      (``FitData.val``, normal; the training images when there are none) before averaging. The paper does not say
      how it ensembles; its figures min-max scale on the test set, which this never does.
    - ablation 'none' (Table 5, first row): no training; the memory bank and the scores come from the untrained
      descriptor over the pre-trained features, as at the start of CFA training.
    Distances: squared Euclidean in the loss (compared with r^2, as the reference code), Euclidean in the score
    (Eq. 5, as the paper and the reference code).
    """

    name = "cfa"
    Config = CFAConfig
    feature_strides = (4, 8, 16)
    smoke_overrides = ("data.crop_size=56", "method.cfa.epochs=2")
    profiles = {
        "paper": {"data": {"crop_size": 224},
                  "method": {"epochs": 30, "batch_size": 4, "gamma_c": 1, "gamma_d": 1, "k": 3, "j": 3}},
        "cpu": {"data": {"image_size": 160, "crop_size": 144},
                "method": {"epochs": 5, "batch_size": 4, "gamma_c": 1, "gamma_d": 1, "k": 3, "j": 3}},
    }

    def __init__(self, settings, *, load_weights: bool = True) -> None:
        super().__init__(settings, load_weights=load_weights)
        if self.config.variant == "cfa++" and not self._crop_size():
            raise ConfigError("method.cfa.variant: 'cfa++' ensembles resized and cropped views, so data.crop_size "
                              "must be set and smaller than data.image_size")

    # ---- views ------------------------------------------------------------------------------------------------
    def _crop_size(self) -> int | None:
        c = self.settings.data.crop_size
        return c if c is not None and c < self.settings.data.image_size else None

    def _cfa_pp_crop_size(self) -> int:
        """cfa++'s centre-crop size: always set for cfa++ (``__init__`` checks it)."""
        crop = self._crop_size()
        if crop is None:
            raise ConfigError("method.cfa.variant: 'cfa++' needs data.crop_size smaller than data.image_size")
        return crop

    def view_names(self) -> list[str]:
        return ["resized", "cropped"] if self.config.variant == "cfa++" else ["main"]

    def make_transform(self):
        """CFA: the configured resize (+ crop). CFA++: resize only; the cropped view is cut from that frame."""
        if self.config.variant == "cfa++":
            from adcore.data.transforms import ImageTransform

            return ImageTransform(self.settings.data.image_size, None, self.backbone.mean, self.backbone.std)
        return super().make_transform()

    def _view_transform(self, name: str, given):
        if name in ("main", "resized"):
            return given
        from adcore.data.transforms import ImageTransform

        return ImageTransform(self.settings.data.image_size, self._crop_size(), given.mean, given.std)

    def _view_input(self, name: str, images: torch.Tensor) -> torch.Tensor:
        if name != "cropped":
            return images
        size, crop = images.shape[-1], self._cfa_pp_crop_size()
        if images.shape[-2] != self.settings.data.image_size or size != self.settings.data.image_size:
            raise DataError(f"cfa++: expected inputs of {self.settings.data.image_size} px (the resized-only frame of "
                            f"make_transform()), got {tuple(images.shape[-2:])}")
        top = int(round((size - crop) / 2.0))  # the same centre crop as ImageTransform
        return images[..., top:top + crop, top:top + crop]

    def build_network(self, info: dict[str, Any]) -> CFANetwork:
        if info.get("score") != SCORE_RULE:
            raise ModelFormatError("cfa: the model file was written before CFA scored Euclidean distances (Eq. 5) and "
                                   "initialised its descriptor as the reference code; retrain it")
        names = info.get("views") or []
        if names != self.view_names():
            raise ModelFormatError(f"cfa: model file has views {names}, variant {self.config.variant!r} needs "
                                   f"{self.view_names()}")
        return CFANetwork(names, int(info["in_channels"]), self.config.gamma_d, self.config.r_init,
                          info.get("memory_size_per_view"))

    # ---- training -----------------------------------------------------------------------------------------------
    def training_features(self, data: FitData, options: TrainOptions) -> dict[str, Any]:
        """One set of cached features per view (CFA++: the resized frame and its centre crop)."""
        if self.config.variant == "cfa++" and getattr(data.transform, "crop_size", None) is not None:
            raise ConfigError("cfa++: FitData.transform must be the resized-only frame of model.make_transform() "
                              f"(got crop_size={data.transform.crop_size})")
        return {name: self.read_features(data.train, self._view_transform(name, data.transform), options)
                for name in self.view_names()}

    def fit_network(self, features: dict[str, Any], data: FitData, options: TrainOptions) -> None:
        cfg = self.config
        # The descriptors' initialisation, hence the bank, is drawn from the RNG as fit seeded it.
        network = self.new_network({"views": self.view_names(), "in_channels": int(sum(self.backbone.channels)),
                                    "score": SCORE_RULE}, reseed=False)
        feature_shapes = {}

        def descriptor_outputs(view: CFAView, feats: Any) -> Iterator[torch.Tensor]:
            return (view.descriptor(s) for _, s in feats.batches(cfg.batch_size, device=self.device))

        for name, view in network.named_views():
            view.bank = build_memory_bank(
                partial(descriptor_outputs, view, features[name]), cfg.gamma_c, seed=self.settings.train.seed,
            ).to(self.device)
            feature_shapes[name] = list(features[name].get([0])[0].shape[-2:])
        self.build_info.update(self.memory_info(), out_channels=network.named_views()[0][1].descriptor
                               .out_channels, feature_shapes=feature_shapes)
        self.fit_info.update(self.memory_info())
        self.fit_info["n_train"] = len(data.train)
        if cfg.ablation == "none" or cfg.epochs == 0:
            self.fit_info.update({"history": [], "epochs_completed": 0})
            self._fit_view_scales(network, features, data, options)
            return

        use_rep = cfg.ablation == "att+rep"
        state: dict[str, Any] = {"network": network}
        optimizers = {}
        for name, view in network.named_views():
            params = list(view.descriptor.parameters()) + list(view.radius.parameters())
            optimizers[name] = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=True)
            state[f"{name}.optimizer"] = optimizers[name]

        def train_epoch(epoch: int, rng: np.random.Generator) -> dict[str, float]:
            sums: dict[str, float] = {}
            for name, view in network.named_views():
                view.descriptor.train()
                totals = np.zeros(3)
                n = rep_steps = 0
                for _, stages in features[name].batches(cfg.batch_size, shuffle=True, rng=rng, device=self.device):
                    phi = view.descriptor(stages)
                    phi = phi.permute(0, 2, 3, 1).reshape(-1, phi.shape[1])
                    out = cfa_loss(phi, view.bank, view.radius.r, k=cfg.k, j=cfg.j, alpha=cfg.alpha,
                                   scale=cfg.loss_scale, use_rep=use_rep)
                    optimizers[name].zero_grad(set_to_none=True)
                    out["loss"].backward()
                    optimizers[name].step()
                    totals += [out["loss"].item(), out["att"].item(), out["rep"].item()]
                    n += 1
                    rep_steps += int(out["rep"].item() > 0)
                view.descriptor.eval()
                prefix = "" if name == "main" else f"{name}_"
                sums.update({f"{prefix}loss": totals[0] / n, f"{prefix}att": totals[1] / n,
                             f"{prefix}rep": totals[2] / n, f"{prefix}rep_steps": rep_steps,
                             f"{prefix}r": float(view.radius.r.detach().abs())})
            return sums

        self.run_epochs(data, options, cfg.epochs, train_epoch, state)
        self._fit_view_scales(network, features, data, options)

    def _fit_view_scales(self, network: CFANetwork, features: dict[str, Any], data: FitData,
                         options: TrainOptions) -> None:
        """CFA++: each view's raw-map mean and standard deviation on the validation images (the training images
        when there are none), kept in the network so that a saved model scores the same."""
        views = network.named_views()
        if not all(view.scaled for _, view in views):
            return
        source = "val" if data.val else "train"
        stats = {}
        for name, view in views:
            feats = (self.read_features(data.val, self._view_transform(name, data.transform), options)
                     if data.val else features[name])
            with torch.no_grad():
                maps = torch.cat([self._stage_map(view, stages)
                                  for _, stages in feats.batches(self.config.batch_size, device=self.device)])
            view.fit_scale(maps)
            stats[name] = {"mean": float(view.map_mean), "std": float(view.map_std)}
        self.fit_info["view_scale"] = {"source": source, "n_images": len(data.val or data.train), **stats}

    def memory_info(self) -> dict[str, Any]:
        views = self.check_is_fitted().named_views()
        sizes = {name: int(v.bank.shape[0]) for name, v in views}
        dims = {name: int(v.bank.shape[1]) for name, v in views}
        return {"memory_size": int(sum(sizes.values())), "memory_size_per_view": sizes, "memory_dim": dims}

    # ---- inference ----------------------------------------------------------------------------------------------
    def _stage_map(self, view: CFAView, stages: list[torch.Tensor]) -> torch.Tensor:
        """Raw Eq. 5 anomaly map (B, h, w) of one view from its backbone stage maps."""
        phi = view.descriptor(stages)
        b, d, h, w = phi.shape
        flat = phi.permute(0, 2, 3, 1).reshape(-1, d)
        scores = torch.cat([patch_scores(chunk, view.bank, self.config.k)
                            for chunk in flat.split(self.config.score_chunk)])
        return scores.reshape(b, h, w)

    def _view_map(self, view: CFAView, name: str, images: torch.Tensor) -> torch.Tensor:
        """Anomaly map (B, h, w) of one view; CFA++ views standardised with their validation statistics."""
        raw = self._stage_map(view, self.backbone_features(self._view_input(name, images)))
        return view.standardize(raw)

    def predict_raw(self, images: torch.Tensor) -> RawPrediction:
        network = self.check_is_fitted()
        with torch.no_grad():
            if self.config.variant == "cfa":
                return RawPrediction(maps=self._view_map(network.view("main"), "main", images))
            full = self._view_map(network.view("resized"), "resized", images)
            crop = self._view_map(network.view("cropped"), "cropped", images)
        return RawPrediction(maps=align_and_average(full, crop, images.shape[-1], self._cfa_pp_crop_size()))
