"""Resolving a run's settings for a method: the layers over the sections of :mod:`adcore.config`.

Each layer overrides the one before:

1. the defaults of the settings sections and of the method's ``Config``,
2. the profile (``cpu`` or ``paper``): ``adcore.config.PROFILES[profile]`` for the shared sections, then the
   method's own ``profiles[profile]``, which holds only what differs (e.g. PRN's ResNet-18, CFA's crop),
3. ``params.yaml`` (sections ``data``, ``backbone``, ``train``, ``postprocess``, ``evaluation`` and ``method.<name>``),
4. command-line overrides ``--set method.cfa.epochs=5``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adcore.config import (
    PROFILES,
    SHARED_SECTIONS,
    Profile,
    RunConfig,
    apply_overrides,
    deep_merge,
    load_params,
    validate_section,
)
from adcore.errors import ConfigError
from adcore.methods.registry import get_method, method_names


def resolve_settings(
    method_name: str,
    profile: Profile | str | None = None,
    params: dict[str, Any] | str | Path | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """The resolved settings of one run of ``method_name`` (see the module docstring for the layers)."""
    source = "params" if isinstance(params, dict) else str(params)
    if not isinstance(params, dict):
        params = load_params(params)
    _check_top_level(params, source)
    method_cls = get_method(method_name)
    profile = profile or params.get("profile") or "cpu"
    if profile not in PROFILES:
        raise ConfigError(f"profile: {profile!r} is not one of {sorted(PROFILES)}")

    tree: dict[str, Any] = {"profile": profile, "method_name": method_name}
    tree = deep_merge(tree, PROFILES[profile])
    method_profile = copy.deepcopy(method_cls.profiles.get(profile, {}))
    tree = deep_merge(tree, {k: v for k, v in method_profile.items() if k in SHARED_SECTIONS})
    tree["method"] = method_profile.get("method", {})

    tree = deep_merge(tree, {k: v for k, v in params.items() if k in SHARED_SECTIONS})
    method_sections = params.get("method") or {}
    if not isinstance(method_sections, dict):
        raise ConfigError("method: expected a mapping of method name -> settings")
    _check_known(method_sections)
    own_section = method_sections.get(method_name) or {}
    if not isinstance(own_section, dict):
        raise ConfigError(f"method.{method_name}: expected a mapping of settings, got {own_section!r}")
    tree["method"] = deep_merge(tree["method"], own_section)

    if overrides:
        wrapped = apply_overrides({**tree, "method": {method_name: tree["method"]}}, list(overrides))
        for key in ("profile", "method_name"):  # these choose the layers above: --profile / --method, not --set
            if wrapped.get(key) != tree.get(key):
                raise ConfigError(f"{key}: cannot be overridden with --set; use --{key.split('_')[0]}")
        if not isinstance(wrapped.get("method"), dict):
            raise ConfigError("method: expected method.<name>.<setting>=VALUE, e.g. method.cfa.epochs=5")
        _check_known(wrapped["method"])
        tree = {k: v for k, v in wrapped.items() if k != "method"}
        tree["method"] = wrapped["method"][method_name]
        if not isinstance(tree["method"], dict):
            raise ConfigError(f"method.{method_name}: expected a mapping of settings, got {tree['method']!r}")
    return settings_from_dict(tree)


def settings_from_dict(tree: dict[str, Any]) -> RunConfig:
    """A RunConfig from its dict form (``RunConfig.to_dict()``, a saved model's ``config``), method section typed."""
    name = tree.get("method_name")
    if not isinstance(name, str):
        raise ConfigError("method_name: missing or not a string")
    method_section = tree.get("method") or {}
    if not isinstance(method_section, dict):
        raise ConfigError(f"method.{name}: expected a mapping of settings, got {method_section!r}")
    # The method section first, so a bad key there fails with its full dotted name before any work starts.
    method = validate_section(get_method(name).Config, method_section, prefix=f"method.{name}")
    return validate_section(RunConfig, {**tree, "method": method}, prefix="")


#: Top-level keys of params.yaml: adcore's own, then those only dvc.yaml and the pipelines read (see params.yaml).
ADCORE_KEYS = ("profile", *SHARED_SECTIONS, "method")
PIPELINE_KEYS = ("categories", "methods", "demo", "fetch", "features", "mlflow", "register")


def _check_top_level(params: dict[str, Any], source: str) -> None:
    """A misspelled section (``dta:``) is an error naming the key, not settings silently left at their defaults."""
    for key in params:
        if key not in ADCORE_KEYS and key not in PIPELINE_KEYS:
            raise ConfigError(f"{key}: unknown section in {source}; known sections: "
                              f"{', '.join(ADCORE_KEYS)} (and {', '.join(PIPELINE_KEYS)} for dvc.yaml)")
    for key in SHARED_SECTIONS:
        if key in params and params[key] is not None and not isinstance(params[key], dict):
            raise ConfigError(f"{key}: expected a mapping of settings in {source}, got {params[key]!r}")


def _check_known(sections: dict[str, Any]) -> None:
    for name in sections:
        if name not in method_names():
            raise ConfigError(f"method.{name}: unknown method; known: {', '.join(method_names())}")
