"""Methods: the registry, settings resolution, and one folder per method (``<name>/method.py``, ``network.py``,
``loss.py``, ``anomaly_map.py``); algorithms shared by several methods live in ``common/``."""

from adcore.methods.registry import create_model, get_method, load_model, method_names, register
from adcore.methods.settings import resolve_settings, settings_from_dict

__all__ = ["create_model", "get_method", "load_model", "method_names", "register", "resolve_settings",
           "settings_from_dict"]
