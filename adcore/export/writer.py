"""``export_model``: a model directory -> an export folder (ONNX file or OpenVINO IR, plus ``export.json``).

The folder is built beside its destination and swapped in whole (:func:`adcore.io.atomic_directory`): a crash or a
second exporter never leaves a half-written export. An existing export folder is replaced only with ``overwrite``;
a folder that is not an export (a model directory, data) is never replaced.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adcore.errors import ConfigError, ModelFormatError
from adcore.export.graph import INPUT_NAME, OUTPUT_NAMES, example_images, trace
from adcore.io import TENSOR_FILE, atomic_directory, atomic_write_json, file_sha256

EXPORT_FILE = "export.json"
EXPORT_FORMAT_VERSION = 1
#: format -> the graph file inside the export folder (OpenVINO's weights are ``model.bin`` beside ``model.xml``)
FORMATS = {"onnx": "model.onnx", "openvino": "model.xml"}
#: format -> the packages it needs (import name, pip name)
REQUIREMENTS = {"onnx": (("onnx", "onnx"), ("onnxscript", "onnxscript")),
                "openvino": (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("openvino", "openvino"))}
#: Parts of the inference that are inside the exported graph, in order.
OPTIMIZE = True
GRAPH_PARTS = ("backbone", "method head", "upsample", "blur", "image score")


def require(module: str, package: str, what: str) -> Any:
    """Import ``module`` or raise a one-line ConfigError naming the missing package."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the package {package!r}: pip install 'adcore[export]'") from None


def check_export_output(path: str | Path, *, overwrite: bool) -> None:
    """ConfigError unless an export may be written to ``path``: absent, an empty folder, or (``overwrite``) an
    export folder written by this module."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a folder; an export would replace it. Choose another --output")
    if not any(path.iterdir()):
        return
    if not (path / EXPORT_FILE).is_file():
        raise ConfigError(f"{path}: not an adcore export folder (no {EXPORT_FILE}); an export would replace it. "
                          "Choose another --output")
    if not overwrite:
        raise ConfigError(f"{path}: an export already exists; pass --overwrite to replace it")


def export_model(model_dir: str | Path, fmt: str, output: str | Path, *, normalize: bool = False,
                 batch_size: int = 1, overwrite: bool = False) -> dict[str, Any]:
    """Export ``model_dir`` to ``output`` in ``fmt`` ('onnx' or 'openvino'); returns the export.json record."""
    return export_formats(model_dir, {fmt: output}, normalize=normalize, batch_size=batch_size,
                          overwrite=overwrite)[fmt]


def export_formats(model_dir: str | Path, outputs: Mapping[str, str | Path], *, normalize: bool = False,
                   batch_size: int = 1, overwrite: bool = False) -> dict[str, dict[str, Any]]:
    """Export ``model_dir`` once to several formats, ``{format: output folder}``: one trace and one ONNX
    translation, which the OpenVINO IR is converted from. Returns each format's export.json record."""
    from adcore.methods import load_model

    if not outputs:
        raise ConfigError(f"--format: none given; choose from {', '.join(FORMATS)}")
    for fmt in outputs:
        if fmt not in FORMATS:
            raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
        for module, package in REQUIREMENTS[fmt]:
            require(module, package, f"--format {fmt}")
    if not 1 <= int(batch_size) <= 1024:
        raise ConfigError(f"--batch-size: must be in 1..1024, got {batch_size}")
    for output in outputs.values():
        check_export_output(output, overwrite=overwrite)
    model = load_model(model_dir, device="cpu")
    t0 = time.perf_counter()
    program = trace(model, int(batch_size), normalize)
    records = {}
    first = Path(os.path.abspath(next(iter(outputs.values()))))
    first.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{first.name}.onnx.", dir=first.parent) as scratch:
        onnx_path = Path(scratch) / FORMATS["onnx"]
        write_onnx(program, model, int(batch_size), onnx_path)
        for fmt, output in outputs.items():
            with atomic_directory(output, before_replace=lambda p: check_export_output(p, overwrite=overwrite)) \
                    as tmp:
                if fmt == "openvino":
                    write_openvino(onnx_path, tmp / FORMATS["openvino"])
                else:
                    shutil.copyfile(onnx_path, tmp / FORMATS["onnx"])
                records[fmt] = export_record(model, model_dir, fmt, normalize, int(batch_size),
                                             time.perf_counter() - t0)
                atomic_write_json(tmp / EXPORT_FILE, records[fmt])
    return records


def write_onnx(program: Any, model: Any, batch_size: int, path: Path) -> None:
    """The traced program as one ONNX file (weights inside), checked by ``onnx.checker``."""
    import onnx
    import torch

    with contextlib.redirect_stdout(sys.stderr):  # torch.onnx prints its progress; stdout is the CLI's answer
        torch.onnx.export(program, (example_images(model, batch_size),), str(path), dynamo=True,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), external_data=False,
                          optimize=OPTIMIZE, verbose=False)
    onnx.checker.check_model(str(path), full_check=True)


def write_openvino(onnx_path: Path, xml_path: Path) -> None:
    """OpenVINO IR (``.xml`` + ``.bin``) of the ONNX file, weights kept in float32.

    Read with ``Core.read_model``, not ``openvino.convert_model``: convert_model fuses PRN's attention (scaled by
    1 / C, the paper's Eq. 3) into a ScaledDotProductAttention op, and its maps then differ from torch and
    onnxruntime by 6-9 % of their range (measured on the demo data); read_model keeps the graph as it is."""
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def export_record(model: Any, model_dir: str | Path, fmt: str, normalize: bool, batch_size: int,
                  seconds: float) -> dict[str, Any]:
    """export.json: what the graph takes and returns, the preprocessing a caller must apply, the threshold."""
    from adcore import __version__
    from adcore.environment import _version
    from adcore.predict import model_threshold

    data = model.settings.data
    size = data.input_size
    raw_threshold = model_threshold(model.normalizer)
    tensors = Path(model_dir) / TENSOR_FILE
    if not tensors.is_file():
        raise ModelFormatError(f"{tensors}: missing")
    return {
        "export_format_version": EXPORT_FORMAT_VERSION,
        "format": fmt,
        "file": FORMATS[fmt],
        "method": model.name,
        "graph": [*GRAPH_PARTS, *(["normaliser"] if normalize else [])],
        "whole_graph": True,
        "normalized": normalize,
        "batch_size": batch_size,
        "input": {"name": INPUT_NAME, "shape": [batch_size, 3, size, size], "dtype": "float32", "layout": "NCHW"},
        "outputs": {OUTPUT_NAMES[0]: [batch_size, size, size], OUTPUT_NAMES[1]: [batch_size]},
        "preprocessing": {
            "color": "RGB", "image_size": data.image_size, "crop_size": data.crop_size, "input_size": size,
            "resize": "bilinear, antialiased, to image_size x image_size", "crop": "centre crop to input_size",
            "scale": 1 / 255, "mean": list(model.backbone.mean), "std": list(model.backbone.std),
        },
        # The decision threshold on the scores this graph returns: 0.5 on normalised scores, else the raw
        # validation quantile the normaliser was fitted with (None when the model has no normaliser).
        "threshold": 0.5 if normalize else raw_threshold,
        "raw_image_threshold": raw_threshold,
        "normalizer": model.normalizer,
        "source_model": {"path": str(Path(model_dir).resolve()), "tensors_sha256": file_sha256(tensors)},
        "export_seconds": round(seconds, 2),
        "versions": {"adcore": __version__, **{p: _version(p) or "not installed"
                                                 for p in ("torch", "onnx", "onnxscript", "onnxruntime", "openvino")}},
    }
