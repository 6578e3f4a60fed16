"""The method interface: a small estimator protocol every method implements, and the machinery they share.

A method is a folder ``adcore/methods/<name>/`` whose ``method.py`` subclasses :class:`AnomalyModel`::

    @register
    class PatchCore(AnomalyModel[PatchCoreNetwork]):
        name = "patchcore"
        Config = PatchCoreConfig                 # pydantic section, extra keys forbidden
        profiles = {"cpu": {...}, "paper": {...}}  # only what differs from adcore.config.PROFILES
        feature_strides = (8, 16)                # backbone stages it needs

        def build_network(self, info) -> nn.Module: ...      # the network.py module, from JSON build info
        def fit_network(self, features, data, options): ...  # the method's part of fit: sets self.network
        def predict_raw(self, images) -> RawPrediction: ...  # low-resolution maps (+ optional image scores)

Everything a method learns or fits (weights, memory banks, prototypes, radius) lives in ``self.network``, one
``nn.Module`` with buffers and parameters, and everything needed to rebuild its architecture in
``self.build_info`` (JSON). The base class owns the rest, written once: the frozen backbone, the ``fit`` template
(empty-data check, feature cache, seeding), ``NotFittedError`` before fit, post-processing (upsample, blur, image
score), score normalisation fitted on validation data, saving and loading, and the epoch loop with per-epoch
checkpoints for resumable training.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from adcore.backbones import FeatureExtractor, build_backbone
from adcore.config import RunConfig
from adcore.errors import ConfigError, DataError, ModelFormatError, NotFittedError

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class FitData:
    """What a method learns from. The test split is never part of it (PRN's seen anomalies are moved out of it)."""

    train: list  # list[adcore.data.Sample] (normal images)
    val: list  # normal images held out for validation (normalisation, monitoring)
    transform: Any  # adcore.data.ImageTransform matching the backbone's normalisation
    seen_anomalies: list = field(default_factory=list)  # PRN: anomalous samples with masks moved out of test
    category_name: str = ""


@dataclass
class TrainOptions:
    """How a fit runs, apart from what it learns from: caching, checkpoints, resuming, progress."""

    cache_dir: Path | None = None  # feature cache folder; None keeps features in memory only
    checkpoint_dir: Path | None = None  # where per-epoch checkpoints go (None: no checkpoints)
    resume: bool = False  # continue from the last checkpoint in checkpoint_dir
    on_epoch: EpochCallback | None = None  # called with (epoch, {loss name: value}) after each epoch
    progress: bool = True  # show progress bars
    stop_after_epochs: int | None = None  # stop after this many epochs in this call (tests of resume)


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


#: The type of a method's ``self.network`` (what its :meth:`AnomalyModel.build_network` returns).
NetT = TypeVar("NetT", bound=nn.Module)


class AnomalyModel(ABC, Generic[NetT]):
    """Base of every method. Subclasses set the class attributes and implement the abstract methods.

    Parameterised by the method's network class (``class PatchCore(AnomalyModel[PatchCoreNetwork])``), so
    :meth:`check_is_fitted` and :meth:`new_network` return that type.
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    feature_strides: ClassVar[tuple[int, ...]] = (8, 16)
    #: sigma of the Gaussian blur is taken from settings.postprocess unless a method fixes it here
    blur_sigma: ClassVar[float | None] = None
    #: ``--set`` overrides over the cpu profile for the smallest meaningful run (the contract tests, smoke checks)
    smoke_overrides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: RunConfig, *, load_weights: bool = True) -> None:
        if settings.method_name != self.name or not isinstance(settings.method, self.Config):
            raise ConfigError(f"method_name: settings are for {settings.method_name!r}, not {self.name!r}")
        self.settings = settings
        self.config: Any = settings.method  # the method's own typed section
        self.device = resolve_device(settings.train.device)
        if settings.train.threads:
            torch.set_num_threads(settings.train.threads)
        with torch.random.fork_rng(devices=[]):  # random-init backbones (tests, students) depend on the seed only
            torch.manual_seed(settings.train.seed)
            self.backbone: FeatureExtractor = build_backbone(
                settings.backbone, self.backbone_strides(), load_weights=load_weights
            ).to(self.device)
        self.network: NetT | None = None
        self.build_info: dict[str, Any] = {}
        self.normalizer: dict[str, float | None] | None = None
        self.fit_info: dict[str, Any] = {}

    # ---- what a method implements -------------------------------------------------------------------------------
    def backbone_strides(self) -> tuple[int, ...]:
        """The backbone strides this model extracts; a method whose stages are a setting overrides this."""
        return self.feature_strides

    @abstractmethod
    def build_network(self, info: dict[str, Any]) -> NetT:
        """The method's network (untrained) from JSON build info: everything shapes depend on."""

    @abstractmethod
    def fit_network(self, features: Any, data: FitData, options: TrainOptions) -> None:
        """The method's part of :meth:`fit`: learn ``self.network`` (via :meth:`new_network`) from the training
        features (:meth:`training_features`), the data and the options."""

    @abstractmethod
    def predict_raw(self, images: torch.Tensor) -> RawPrediction:
        """Anomaly maps for a batch of normalised images (B, 3, H, W) already on ``self.device``."""

    def output_blur_sigma(self) -> float:
        """Sigma of the Gaussian blur on the input-size map: the class's ``blur_sigma``, else the settings'."""
        return self.blur_sigma if self.blur_sigma is not None else self.settings.postprocess.blur_sigma

    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        """Image scores (B,) from the final maps (B, H, W) when ``predict_raw`` gives none: the maximum."""
        return maps.flatten(1).max(dim=1).values

    def training_features(self, data: FitData, options: TrainOptions) -> Any:
        """What :meth:`fit_network` learns from: the training images' backbone features, from the cache."""
        return self.read_features(data.train, data.transform, options)

    # ---- fitting ------------------------------------------------------------------------------------------------
    def fit(self, data: FitData, options: TrainOptions | None = None) -> AnomalyModel:
        """Check the data, read the feature cache, seed, then run the method's own :meth:`fit_network`."""
        options = options or TrainOptions()
        if not data.train:
            raise DataError(f"{data.category_name or 'category'}/train/good: empty training set, no images to fit "
                            f"{self.name} on")
        features = self.training_features(data, options)
        # Seeded after reading the cache: a cache miss runs a DataLoader, which draws from torch's RNG, and a hit
        # must give the same model as a miss.
        seed_everything(self.settings.train.seed)
        self.network, self.build_info = None, {}
        self.fit_network(features, data, options)
        self.check_is_fitted().eval()
        return self

    def new_network(self, info: dict[str, Any], *, reseed: bool = True) -> NetT:
        """Build, place and keep ``self.network`` from ``info``. ``reseed``: initialise from the run's seed alone
        (the same settings give the same initial weights); otherwise draw from the RNG as ``fit`` seeded it."""
        if reseed:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.settings.train.seed)
                network = self.build_network(info)
        else:
            network = self.build_network(info)
        self.build_info = dict(info)
        self.network = network.to(self.device)
        return self.network

    def check_is_fitted(self) -> NetT:
        """The fitted network; :class:`NotFittedError` when :meth:`fit` has not run and no model was loaded."""
        if self.network is None:
            raise NotFittedError(f"{self.name}: the model is not fitted; call fit(data) or load a saved model "
                                 "with adcore.methods.load_model(path)")
        return self.network

    def read_features(self, samples: list, transform: Any, options: TrainOptions):
        """Frozen backbone features of ``samples`` through ``transform``, cached in ``options.cache_dir``."""
        from adcore.features import FeatureCache

        data = self.settings.data
        return FeatureCache(options.cache_dir).features(self.backbone, samples, transform,
                                                        batch_size=data.batch_size, num_workers=data.num_workers,
                                                        show_progress=options.progress)

    def run_epochs(
        self,
        data: FitData,
        options: TrainOptions,
        epochs: int,
        train_epoch: Callable[[int, np.random.Generator], dict[str, float]],
        state: dict[str, nn.Module | torch.optim.Optimizer | Any],
    ) -> list[dict[str, float]]:
        """Run ``train_epoch(epoch, rng)`` for each epoch with reseeding, callbacks and per-epoch checkpoints.

        ``state`` names the modules and optimizers (anything with state_dict/load_state_dict) that a checkpoint
        must hold. With ``options.resume`` the loop continues after the last completed epoch in the checkpoint dir.
        """
        from adcore.checkpoint import load_checkpoint, save_checkpoint
        from adcore.progress import epoch_bar

        history: list[dict[str, float]] = []
        start = 0
        fingerprint = self._run_fingerprint(data)
        if options.resume and options.checkpoint_dir is not None:
            restored = load_checkpoint(options.checkpoint_dir, state, fingerprint=fingerprint)
            if restored is not None:
                start, history = restored["epoch"] + 1, restored["history"]
        done_now = 0
        with epoch_bar(epochs, start, desc=f"{self.name} epochs", enabled=options.progress) as bar:
            for epoch in range(start, epochs):
                if options.stop_after_epochs is not None and done_now >= options.stop_after_epochs:
                    break
                rng = seed_everything(self.settings.train.seed, epoch)
                t0 = time.perf_counter()
                losses = {k: float(v) for k, v in train_epoch(epoch, rng).items()}
                losses["epoch_seconds"] = time.perf_counter() - t0
                history.append(losses)
                bar.advance({k: v for k, v in losses.items() if k != "epoch_seconds"})
                if options.on_epoch is not None:
                    options.on_epoch(epoch, losses)
                if options.checkpoint_dir is not None:
                    save_checkpoint(options.checkpoint_dir, state, epoch=epoch, history=history,
                                    fingerprint=fingerprint)
                done_now += 1
        self.fit_info["history"] = history
        self.fit_info["epochs_completed"] = start + done_now
        return history

    def _run_fingerprint(self, data: FitData) -> str:
        """Settings and training images of this run (not where it runs): a resumed run must be the same run."""
        config = self.settings.to_dict()
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
            torch.cat(scores).numpy(), torch.cat(pixels).numpy(),
            quantile=self.settings.postprocess.normalization_quantile,
        ).to_dict()

    # ---- inference ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: torch.Tensor, *, normalize: bool = False) -> Prediction:
        """Anomaly maps at the input resolution (upsampled once, blurred once) and image scores."""
        from adcore.postprocess import ScoreNormalizer, anomaly_maps_to_input

        self.check_is_fitted()
        images = images.to(self.device, non_blocking=True)
        raw = self.predict_raw(images)
        sigma = self.output_blur_sigma()
        maps = anomaly_maps_to_input(raw.maps.float(), (images.shape[-2], images.shape[-1]), sigma)
        scores = raw.scores.float() if raw.scores is not None else self.image_score(maps)
        maps, scores = maps.cpu(), scores.cpu()
        if normalize:
            if self.normalizer is None:
                raise ModelFormatError(f"{self.name}: normalize=True but the model has no fitted normaliser")
            norm = ScoreNormalizer.from_dict(self.normalizer)
            maps, scores = norm.normalize_maps(maps), norm.normalize_scores(scores)
        return Prediction(maps=maps, scores=scores)

    def backbone_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen backbone features (no gradients), in stride order."""
        with torch.no_grad():
            return self.backbone(images.to(self.device))

    # ---- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write the model directory atomically: JSON metadata + safetensors (network and backbone)."""
        from adcore.io import write_model_dir

        network = self.check_is_fitted()
        tensors = {f"network.{k}": v for k, v in network.state_dict().items()}
        tensors.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        meta = {
            "method": self.name,
            "config": self.settings.to_dict(),
            "build_info": self.build_info,
            "normalizer": self.normalizer,
            "backbone": {
                "name": self.backbone.name,
                "strides": list(self.backbone.strides),
                "weights_source": self.settings.backbone.weights,
                "weights_sha256": self.backbone.weights_sha256,
                "mean": list(self.backbone.mean),
                "std": list(self.backbone.std),
            },
            "fit_info": self.fit_info,
            **(extra_meta or {}),
        }
        return write_model_dir(path, meta, tensors)

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                   device: str | None = None) -> AnomalyModel:
        """Rebuild a saved model: settings, backbone, then ``build_network(build_info)`` and its state dict."""
        from adcore.io import TENSOR_FILE, check_finite
        from adcore.methods.settings import settings_from_dict

        check_finite(tensors, TENSOR_FILE)  # a NaN memory bank would call every image good
        settings = settings_from_dict(meta["config"])
        if device is None and settings.train.device.startswith("cuda") and not torch.cuda.is_available():
            # train.device is where training ran; a model trained with train.device=cuda must still load where
            # there is no GPU (the CPU evaluation and registry pods, serving): infer on the CPU there.
            device = "cpu"
        if device is not None:
            settings.train.device = device
        model = cls(settings, load_weights=False)
        _load_prefixed(model.backbone, tensors, "backbone", f"{cls.name}: backbone {model.backbone.name}")
        model.backbone.to(model.device)
        info = meta["backbone"]
        model.backbone.mean, model.backbone.std = tuple(info["mean"]), tuple(info["std"])
        model.backbone.weights_sha256 = info["weights_sha256"]
        model.normalizer = meta.get("normalizer")
        model.fit_info = meta.get("fit_info") or {}
        network = model.new_network(meta.get("build_info") or {})
        _load_prefixed(network, tensors, "network", f"{cls.name}: network")
        network.to(model.device).eval()
        return model

    # ---- conveniences ------------------------------------------------------------------------------------------
    def make_transform(self):
        """The image transform that matches this model's input size and backbone normalisation."""
        from adcore.data.transforms import ImageTransform

        return ImageTransform.from_config(self.settings.data, self.backbone.mean, self.backbone.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backbone={self.backbone.name}, device={self.device})"


def _load_prefixed(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, what: str) -> None:
    """Load the ``<prefix>.*`` tensors into ``module``; a mismatch is a ModelFormatError naming the part."""
    state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFormatError(f"{what} tensors do not fit the architecture: {exc}") from None
