"""Score images with an export folder: onnxruntime for ONNX, OpenVINO's CPU plugin for the IR; no torch needed.

``load_exported(folder).predict(images)`` takes normalised float32 images (N, 3, S, S), as
:meth:`ExportedModel.transform` makes them from decoded RGB arrays, and returns maps (N, S, S) and scores (N,).
The graph has a fixed batch size; a batch of another size is cut to it and the last part padded, then trimmed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from adcore.errors import DataError, ModelFormatError
from adcore.export.writer import EXPORT_FILE, FORMATS, require


class ExportedModel:
    """An export folder loaded for inference on the CPU. ``threads``: intra-op threads (None: the runtime's)."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.record = read_export_record(self.folder)
        self.format: str = self.record["format"]
        self.batch_size = int(self.record["batch_size"])
        self.input_shape = tuple(int(v) for v in self.record["input"]["shape"])
        path = self.folder / self.record["file"]
        if not path.is_file():
            raise ModelFormatError(f"{path}: missing (named by {self.folder / EXPORT_FILE})")
        self._run = _onnxruntime_session(path, threads) if self.format == "onnx" else _openvino_model(path, threads)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Maps (N, S, S) and scores (N,) of normalised images (N, 3, S, S) float32."""
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1:] != self.input_shape[1:] or x.dtype != np.float32 or len(x) == 0:
            shape = ", ".join(map(str, self.input_shape[1:]))
            raise DataError(f"{self.folder}: expected float32 images of shape (N, {shape}) with N >= 1, got "
                            f"{x.dtype} {tuple(x.shape)}")
        maps, scores = [], []
        b = self.batch_size
        for start in range(0, len(x), b):
            part = x[start:start + b]
            n = len(part)
            if n < b:  # pad with copies of the last image; their outputs are dropped
                part = np.concatenate([part, np.repeat(part[-1:], b - n, axis=0)])
            m, s = self._run(np.ascontiguousarray(part))
            maps.append(m[:n])
            scores.append(s[:n])
        return np.concatenate(maps), np.concatenate(scores)

    def transform(self):
        """The model's preprocessing (resize, crop, normalisation) as recorded in export.json."""
        from adcore.data.transforms import ImageTransform

        pre = self.record["preprocessing"]
        return ImageTransform(pre["image_size"], pre["crop_size"], pre["mean"], pre["std"])


def load_exported(folder: str | Path, threads: int | None = None) -> ExportedModel:
    return ExportedModel(folder, threads)


def read_export_record(folder: Path) -> dict[str, Any]:
    path = folder / EXPORT_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: missing; {folder} is not an adcore export folder") from None
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or record.get("format") not in FORMATS or "batch_size" not in record:
        raise ModelFormatError(f"{path}: not an adcore export record (format, batch_size)")
    return record


def _onnxruntime_session(path: Path, threads: int | None):
    ort = require("onnxruntime", "onnxruntime", "running an ONNX export")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = session.run(None, {name: x})
        return maps, scores

    return run


def _openvino_model(path: Path, threads: int | None):
    ov = require("openvino", "openvino", "running an OpenVINO export")
    # f32: the CPU plugin otherwise runs in bf16 where the processor has it (maps then differ by percents).
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = request.infer({0: x})
        return np.array(out[compiled.output(0)]), np.array(out[compiled.output(1)])

    return run
