"""The method interface: a small estimator protocol every method implements, and the shared machinery.

A method subclasses :class:`AnomalyModel` and is registered with ``@register``::

    @register
    class PatchCore(AnomalyModel):
        name = "patchcore"
        Config = PatchCoreConfig                 # pydantic section, extra keys forbidden
        profiles = {"cpu": {...}, "paper": {...}}  # see adcore.config.resolve
        feature_strides = (8, 16)                # backbone stages it needs

        def fit(self, data: FitData) -> None: ...
        def predict_raw(self, images) -> RawPrediction: ...   # low-resolution maps (+ optional image scores)
        def state_tensors(self) -> dict[str, Tensor]: ...      # everything learned, besides the backbone
        def build_info(self) -> dict: ...                      # JSON needed to rebuild the architecture
        def load_state(self, info, tensors) -> None: ...       # rebuild from build_info + state_tensors

The base class owns the frozen pretrained backbone, post-processing (upsample, blur, image score), score
normalisation fitted on validation data, saving to and loading from a model directory, and an epoch loop with
per-epoch checkpoints for resumable training.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from adcore.backbones import FeatureExtractor, build_backbone
from adcore.config import RunConfig
from adcore.errors import ConfigError, ModelFormatError

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class FitData:
    """Everything a method may learn from. The test split is never part of it."""

    train: list  # list[adcore.data.Sample] (normal images)
    val: list  # normal images held out for validation (epoch choice, normalisation)
    transform: Any  # adcore.data.ImageTransform matching the backbone's normalisation
    cache: Any = None  # adcore.features.FeatureCache or None (no caching)
    seen_anomalies: list = field(default_factory=list)  # PRN: anomalous samples with masks moved out of test
    category_name: str = ""
    on_epoch: EpochCallback | None = None  # called with (epoch, {loss name: value}) after each epoch
    checkpoint_dir: Path | None = None  # where per-epoch checkpoints go (None: no checkpoints)
    resume: bool = False  # continue from the last checkpoint in checkpoint_dir
    progress: bool = True  # show progress bars
    stop_after_epochs: int | None = None  # stop early after this many epochs in this call (tests of resume)


@dataclass
class RawPrediction:
    maps: torch.Tensor  # (B, h, w) anomaly maps at the method's own resolution
    scores: torch.Tensor | None = None  # (B,) image scores when the method defines them on the raw map


@dataclass
class Prediction:
    maps: torch.Tensor  # (B, H, W) at the input resolution, blurred; CPU float32
    scores: torch.Tensor  # (B,) CPU float32


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available on this machine")
    return device


def seed_everything(seed: int, epoch: int = 0) -> np.random.Generator:
    """Seed torch (CPU and CUDA) from (seed, epoch) and return a numpy Generator with the same seed.

    Reseeding at every epoch start makes a resumed run draw the same random numbers as an uninterrupted one.
    """
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    torch.manual_seed(mixed)
    return np.random.default_rng([seed, epoch])


class AnomalyModel(ABC):
    """Base of every method. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    feature_strides: ClassVar[tuple[int, ...]] = (8, 16)
    #: "max" (default) or "topk_mean:<k>": how the image score is read from the final map when predict_raw gives none
    image_score: ClassVar[str] = "max"
    #: sigma of the Gaussian blur is taken from config.postprocess unless a method fixes it here
    blur_sigma: ClassVar[float | None] = None

    def __init__(self, config: RunConfig, *, load_weights: bool = True) -> None:
        if config.method_name != self.name:
            raise ConfigError(f"method_name: config is for {config.method_name!r}, not {self.name!r}")
        self.config = config
        self.cfg = config.method_config()
        self.device = resolve_device(config.train.device)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        with torch.random.fork_rng(devices=[]):  # random-init backbones (tests, students) depend on the seed only
            torch.manual_seed(config.train.seed)
            self.backbone: FeatureExtractor = build_backbone(
                config.backbone, self.feature_strides, load_weights=load_weights
            ).to(self.device)
        self.normalizer: dict[str, float] | None = None
        self.fit_info: dict[str, Any] = {}

    # ---- what a method implements -------------------------------------------------------------------------------
    @abstractmethod
    def fit(self, data: FitData) -> None:
        """Learn from normal training images (and seen anomalies where the method uses them)."""

    @abstractmethod
    def predict_raw(self, images: torch.Tensor) -> RawPrediction:
        """Anomaly maps for a batch of normalised images (B, 3, H, W) already on ``self.device``."""

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors (not the backbone, which the base class saves)."""

    def build_info(self) -> dict[str, Any]:
        """JSON-able facts needed to rebuild the architecture before loading tensors (shapes, sizes)."""
        return {}

    @abstractmethod
    def load_state(self, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Rebuild from :meth:`build_info` and :meth:`state_tensors` output."""

    # ---- inference ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: torch.Tensor, *, normalize: bool = False) -> Prediction:
        """Anomaly maps at the input resolution (upsampled once, blurred once) and image scores."""
        from adcore.postprocess import anomaly_maps_to_input, image_score_max, image_score_topk_mean

        images = images.to(self.device, non_blocking=True)
        raw = self.predict_raw(images)
        sigma = self.blur_sigma if self.blur_sigma is not None else self.config.postprocess.blur_sigma
        maps = anomaly_maps_to_input(raw.maps.float(), tuple(images.shape[-2:]), sigma)
        if raw.scores is not None:
            scores = raw.scores.float()
        elif self.image_score.startswith("topk_mean"):
            scores = image_score_topk_mean(maps, int(self.image_score.split(":")[1]))
        else:
            scores = image_score_max(maps)
        maps, scores = maps.cpu(), scores.cpu()
        if normalize:
            if self.normalizer is None:
                raise ModelFormatError(f"{self.name}: normalize=True but the model has no fitted normaliser")
            from adcore.postprocess import ScoreNormalizer

            norm = ScoreNormalizer.from_dict(self.normalizer)
            maps, scores = norm.normalize_maps(maps), norm.normalize_scores(scores)
        return Prediction(maps=maps, scores=scores)

    def backbone_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen backbone features (no gradients), in ``feature_strides`` order."""
        with torch.no_grad():
            return self.backbone(images.to(self.device))

    # ---- training helpers ---------------------------------------------------------------------------------------
    def run_epochs(
        self,
        data: FitData,
        epochs: int,
        train_epoch: Callable[[int, np.random.Generator], dict[str, float]],
        state: dict[str, nn.Module | torch.optim.Optimizer | Any],
    ) -> list[dict[str, float]]:
        """Run ``train_epoch(epoch, rng)`` for each epoch with reseeding, callbacks and per-epoch checkpoints.

        ``state`` names the modules and optimizers (anything with state_dict/load_state_dict) that a checkpoint
        must hold. With ``data.resume`` the loop continues after the last completed epoch in ``checkpoint_dir``.
        """
        from adcore.checkpoint import load_checkpoint, save_checkpoint
        from adcore.progress import progress

        history: list[dict[str, float]] = []
        start = 0
        fingerprint = self._run_fingerprint(data)
        if data.resume and data.checkpoint_dir is not None:
            restored = load_checkpoint(data.checkpoint_dir, state, fingerprint=fingerprint)
            if restored is not None:
                start, history = restored["epoch"] + 1, restored["history"]
        done_now = 0
        bar = progress(range(start, epochs), desc=f"{self.name} epochs", enabled=data.progress, initial=start,
                       total=epochs)
        for epoch in bar:
            if data.stop_after_epochs is not None and done_now >= data.stop_after_epochs:
                break
            rng = seed_everything(self.config.train.seed, epoch)
            t0 = time.perf_counter()
            losses = train_epoch(epoch, rng)
            losses = {k: float(v) for k, v in losses.items()}
            losses["epoch_seconds"] = time.perf_counter() - t0
            history.append(losses)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items() if k != "epoch_seconds"})
            if data.on_epoch is not None:
                data.on_epoch(epoch, losses)
            if data.checkpoint_dir is not None:
                save_checkpoint(data.checkpoint_dir, state, epoch=epoch, history=history, fingerprint=fingerprint)
            done_now += 1
        self.fit_info["history"] = history
        self.fit_info["epochs_completed"] = start + done_now
        return history

    def _run_fingerprint(self, data: FitData) -> str:
        """Settings and training images of this run (not where it runs): a resumed run must be the same run."""
        import hashlib
        import json

        config = self.config.to_dict()
        config["train"] = {k: v for k, v in config["train"].items() if k not in ("device", "threads")}
        config["data"] = {k: v for k, v in config["data"].items() if k != "num_workers"}
        spec = {"config": config, "train": [Path(s.path).name for s in data.train],
                "seen": [Path(s.path).name for s in data.seen_anomalies]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def calibrate(self, loader: Iterable[dict[str, Any]]) -> None:
        """Fit the score normaliser on validation images (normal only). Never sees the test split."""
        from adcore.postprocess import ScoreNormalizer

        scores, pixels = [], []
        for batch in loader:
            pred = self.predict(batch["image"])
            scores.append(pred.scores)
            pixels.append(pred.maps.flatten()[:: max(1, pred.maps[0].numel() // 4096)])
        if not scores:
            return
        self.normalizer = ScoreNormalizer().fit(
            torch.cat(scores).numpy(), torch.cat(pixels).numpy(), quantile=self.config.postprocess.normalization_quantile
        ).to_dict()

    # ---- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write the model directory atomically: JSON metadata + safetensors (backbone included)."""
        from adcore.io import write_model_dir

        tensors = {f"method.{k}": v for k, v in self.state_tensors().items()}
        tensors.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        meta = {
            "method": self.name,
            "config": self.config.to_dict(),
            "build_info": self.build_info(),
            "normalizer": self.normalizer,
            "backbone": {
                "name": self.backbone.name,
                "strides": list(self.backbone.strides),
                "weights_source": self.config.backbone.weights,
                "weights_sha256": self.backbone.weights_sha256,
                "mean": list(self.backbone.mean),
                "std": list(self.backbone.std),
            },
            "fit_info": self.fit_info,
            **(extra_meta or {}),
        }
        return write_model_dir(path, meta, tensors)

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], device: str | None = None):
        config = RunConfig.model_validate(meta["config"])
        if device is None and config.train.device.startswith("cuda") and not torch.cuda.is_available():
            # train.device is where training ran; a model trained with train.device=cuda must still load where
            # there is no GPU (the CPU evaluation and registry pods, serving): infer on the CPU there.
            device = "cpu"
        if device is not None:
            config.train.device = device
        model = cls(config, load_weights=False)
        backbone_state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
        try:
            model.backbone.load_state_dict(backbone_state)
        except RuntimeError as exc:
            raise ModelFormatError(f"backbone tensors do not fit {model.backbone.name}: {exc}") from None
        model.backbone.to(model.device)
        info = meta["backbone"]
        model.backbone.mean, model.backbone.std = tuple(info["mean"]), tuple(info["std"])
        model.backbone.weights_sha256 = info["weights_sha256"]
        model.normalizer = meta.get("normalizer")
        model.fit_info = meta.get("fit_info") or {}
        own = {k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")}
        model.load_state(meta.get("build_info") or {}, own)
        return model

    # ---- helpers for load_state --------------------------------------------------------------------------------
    def check_build_info(self, info: dict[str, Any]) -> None:
        """Refuse a saved architecture that differs from what this configuration builds."""
        expected = self.build_info()
        if info and info != expected:
            raise ModelFormatError(f"{self.name}: saved build_info {info} does not match the configuration {expected}")

    def load_module(self, module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
        """Load the ``<prefix>.*`` tensors into ``module``; move it to the device in eval mode."""
        state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelFormatError(f"{self.name}: {prefix} tensors do not fit the architecture: {exc}") from None
        return module.to(self.device).eval()

    # ---- conveniences ------------------------------------------------------------------------------------------
    def make_transform(self):
        """The image transform that matches this model's input size and backbone normalisation."""
        from adcore.data.transforms import ImageTransform

        return ImageTransform.from_config(self.config.data, self.backbone.mean, self.backbone.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backbone={self.backbone.name}, device={self.device})"
