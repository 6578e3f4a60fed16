"""The one record of the software and machine behind a result (model.json, bench.json, MLflow params).

One function so that a model, a bench report and a tracked run describe the same machine with the same keys and
can be compared. Package versions are read from the installed metadata, without importing the packages.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

#: Always recorded: what shapes the numbers of a model (``"not installed"`` when absent).
CORE_PACKAGES = ("torch", "timm", "numpy")
#: Recorded only when installed: the tools around a run (serving, tracking, pipelines, data versioning).
OPTIONAL_PACKAGES = ("torchvision", "scikit-learn", "pydantic", "safetensors", "pillow", "mlflow", "boto3", "kfp",
                     "dvc")


def environment_record(device: str = "") -> dict[str, str | int]:
    """Versions of adcore, Python and the packages that shape a result, the OS and CPU, torch threads, the GPU.

    ``device`` (e.g. ``"cuda:0"``, ``"cpu"``) is the device the run used; it is recorded when given.
    """
    import torch

    from adcore import __version__

    record: dict[str, str | int] = {
        "adcore": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 0,
    }
    for package in CORE_PACKAGES:
        record[package] = _version(package) or "not installed"
    record["torch"] = torch.__version__  # the running torch, also when several are on the path
    record["torch_threads"] = torch.get_num_threads()
    record["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    for package in OPTIONAL_PACKAGES:
        version = _version(package)
        if version:
            record[package] = version
    if device:
        record["device"] = device
    return record


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""
