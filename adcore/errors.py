"""Exceptions with messages meant for the person running the command.

Every error names the file (or setting) it is about and says what is wrong, so the CLI can print it as one line.
"""


class AdcoreError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(AdcoreError, ValueError):
    """A setting is unknown or has a bad value."""


class DataError(AdcoreError, ValueError):
    """A dataset, image or mask is missing, unreadable or inconsistent."""


class WeightSourceError(AdcoreError, RuntimeError):
    """Pretrained weights could not be obtained from the requested source."""


class ModelFormatError(AdcoreError, ValueError):
    """A model directory is missing, corrupt or written by an incompatible version."""


class NotFittedError(AdcoreError, RuntimeError):
    """A model was asked to predict or save before it was fitted (or loaded)."""
