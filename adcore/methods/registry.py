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
    from adcore.io import META_FILE, read_model_dir

    meta, tensors = read_model_dir(path)
    try:
        return get_method(meta["method"]).from_saved(meta, tensors, device=device)
    except (KeyError, TypeError, ValidationError) as exc:  # valid JSON but not what adcore wrote
        raise ModelFormatError(f"{Path(path) / META_FILE}: incomplete or inconsistent model "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
