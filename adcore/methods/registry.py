"""The method registry. Every package in this folder that registers a method is imported on first use, so adding
a method means adding a folder: nothing else to edit."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

from adcore.errors import ConfigError

if TYPE_CHECKING:
    from adcore.config import RunConfig
    from adcore.methods.base import AnomalyModel

_REGISTRY: dict[str, type[AnomalyModel]] = {}
_DISCOVERED = False
#: Modules of this folder that are infrastructure, not methods.
_NOT_METHODS = {"base", "common", "registry", "settings"}


def register(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: make a method available by its ``name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"method {name!r} registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = __name__.rsplit(".", 1)[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def method_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[AnomalyModel]:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"method {name!r}: unknown; known methods: {', '.join(sorted(_REGISTRY))}") from None


def create_model(settings: RunConfig) -> AnomalyModel:
    """A fresh, unfitted model for resolved settings (:func:`adcore.methods.resolve_settings`)."""
    return get_method(settings.method_name)(settings)


def load_model(path, device: str | None = None) -> AnomalyModel:
    """Load a model directory written by ``AnomalyModel.save``. Never unpickles."""
    from pydantic import ValidationError

    from adcore.errors import ModelFormatError
    from adcore.io import META_FILE, TENSOR_FILE, read_model_dir
    from adcore.methods.settings import settings_from_dict

    meta, tensors = read_model_dir(path)
    meta_path = Path(path) / META_FILE
    _refuse_hub_backbone(meta, meta_path)
    try:
        if isinstance(meta.get("config"), dict):  # settings first, so a bad one names model.json (bounds, types)
            settings_from_dict(meta["config"])
    except ConfigError as exc:
        raise ModelFormatError(f"{meta_path}: {exc}") from None
    try:
        return get_method(meta["method"]).from_saved(meta, tensors, device=device)
    except (KeyError, TypeError, ValidationError) as exc:  # valid JSON but not what adcore wrote
        raise ModelFormatError(f"{Path(path) / META_FILE}: incomplete or inconsistent model "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    except ModelFormatError as exc:  # e.g. tensors of the wrong shape: one line, naming the model
        message = " ".join(str(exc).split())
        where = Path(path) / TENSOR_FILE if "tensors" in message else Path(path)
        raise ModelFormatError(message if str(path) in message else f"{where}: {message}") from None


def _refuse_hub_backbone(meta: dict, meta_path: Path) -> None:
    """A model file names its backbone architecture only: a name that points at a hub repository or a folder
    (``hf-hub:org/repo``, ``local-dir:...``, anything with ``:`` or ``/``) would make timm fetch or read code and
    configuration from elsewhere when the model is loaded. Refused: loading a model never goes to the network."""
    from adcore.errors import ModelFormatError

    config = meta.get("config")
    sections = [("config.backbone.name", config.get("backbone") if isinstance(config, dict) else None),
                ("backbone.name", meta.get("backbone"))]
    for key, section in sections:
        name = section.get("name") if isinstance(section, dict) else None
        if isinstance(name, str) and any(ch in name for ch in ":/\\"):
            raise ModelFormatError(f"{meta_path}: {key} {name!r} points at a hub repository or a path; a model "
                                   "file may only name a timm architecture (e.g. 'wide_resnet50_2'), loading a "
                                   "model never downloads anything")

