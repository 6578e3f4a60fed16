"""The MLflow pyfunc flavour of an adcore model, logged as "model from code" (this file), so nothing is pickled.

The logged model holds the adcore model directory (JSON + safetensors) as the artifact ``model_dir`` and the
``adcore`` package itself as code (``code_paths``), with pinned requirements: ``mlflow models serve``, KServe's
MLflow runtime or ``mlflow.pyfunc.load_model`` need nothing of this checkout. This file imports only mlflow, numpy,
torch and adcore.

Input, a batch of images in either form (JSON: ``{"inputs": [...]}``):

- encoded images: PNG / JPEG / BMP bytes, or their base64 text (what JSON carries), one per image;
- pixel arrays: uint8 (B, H, W, 3), (H, W, 3) for one image or (B, H, W) grey; from JSON, integers 0..255.

Every image is resized by the model's own transform. Output ``{"scores": (B,), "threshold": (B,),
"defective": (B,), "normalized_scores": (B,), "maps": (B, S, S)}``: raw image scores, the threshold used (the one
the model's normaliser implies unless the call overrides it, in raw score units), the decision, normalised scores
(0.5 = the model's threshold) and maps (S the model's input size; normalised with ``normalize=True``).

Parameters: ``threshold`` (override), ``normalize`` (maps in [0, 1]), ``return_maps`` (False: no maps, a
response a hundred times smaller), ``backbone_only`` (decode, resize and run the backbone only: the floor of the
load test, served the same way).

Bad input (wrong shape or dtype, an undecodable image, an empty batch, too many images or bytes) raises an
MlflowException with INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400 and a one-line
message; the server goes on serving. MLflow's scoring server reads a request body whole and sets no size limit,
so the limits here (``ADCORE_SERVING_MAX_IMAGES``, default 64, and ``ADCORE_SERVING_MAX_MB``, default 16 MB of
image data) are checked on the parsed input; a proxy in front should cap the body as well (docs/SERVING.md).

The device is ``$ADCORE_DEVICE`` when set, else CUDA when available, else the CPU.
"""

from __future__ import annotations

import os
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

MAX_IMAGES_ENV, MAX_MB_ENV = "ADCORE_SERVING_MAX_IMAGES", "ADCORE_SERVING_MAX_MB"
DEFAULT_MAX_IMAGES, DEFAULT_MAX_MB = 64, 16.0
#: Set by mlflow's scoring server in the process that serves the model.
_SERVING_ENV = "__pyfunc_model_path__"


def serving_signature():
    """Input: one object tensor (encoded images or pixel arrays, checked here, not by MLflow); the parameters."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), "scores"),
                        TensorSpec(np.dtype(np.float64), (-1,), "threshold"),
                        TensorSpec(np.dtype(bool), (-1,), "defective"),
                        TensorSpec(np.dtype(np.float32), (-1,), "normalized_scores"),
                        TensorSpec(np.dtype(np.float32), (-1, -1, -1), "maps")]),
        params=ParamSchema([ParamSpec("threshold", "double", None), ParamSpec("normalize", "boolean", False),
                            ParamSpec("return_maps", "boolean", True), ParamSpec("backbone_only", "boolean", False)]),
    )


def _limit(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value > 0:
        raise _bad_request(f"{name}: expected a positive number, got {raw!r}")
    return value


def _bad_request(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _size(item: Any) -> int:
    return len(item) if isinstance(item, (bytes, str)) else int(np.size(item))


def _short_element(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def request_images(model_input: Any) -> list[np.ndarray]:
    """The images of one request as HxWx3 uint8 arrays; an MlflowException (HTTP 400) naming the problem."""
    import pandas as pd

    from adcore.errors import AdcoreError
    from adcore.predict import as_image_array, decode_image

    if isinstance(model_input, pd.DataFrame):
        raise _bad_request("model input: a DataFrame; send {\"inputs\": [...]} with base64 PNG/JPEG images or "
                           "uint8 arrays")
    if isinstance(model_input, (bytes, str)):
        model_input = [model_input]
    arr = model_input if isinstance(model_input, np.ndarray) else np.asarray(model_input, dtype=object)
    max_images, max_bytes = int(_limit(MAX_IMAGES_ENV, DEFAULT_MAX_IMAGES)), _limit(MAX_MB_ENV, DEFAULT_MAX_MB) * 1e6
    if arr.dtype != object and arr.ndim in (2, 3) and (arr.ndim == 2 or arr.shape[-1] == 3):
        arr = arr[None]  # one image (H, W, 3) or (H, W)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise _bad_request("model input: empty batch; send at least one image")
    if arr.shape[0] > max_images:
        raise _bad_request(f"model input: {arr.shape[0]} images in one request, more than {max_images} "
                           f"({MAX_IMAGES_ENV}); split the batch")
    # encoded images count their bytes; pixel values one byte each
    size = sum(map(_size, arr)) if arr.dtype == object and arr.ndim == 1 else arr.size
    if size > max_bytes:
        raise _bad_request(f"model input: {size / 1e6:.1f} MB of image data in one request, more than "
                           f"{max_bytes / 1e6:g} MB ({MAX_MB_ENV}); send fewer or smaller images")
    images = []
    for i in range(arr.shape[0]):
        item, what = arr[i], f"model input: image {i}"
        try:
            if isinstance(item, (bytes, str, np.bytes_, np.str_)):
                images.append(decode_image(item, what))
            else:
                images.append(as_image_array(item, what))
        except AdcoreError as exc:
            raise _bad_request(str(exc)) from None
    return images


class AnomalyModelPyfunc(PythonModel):
    # Inputs are checked here against the documented forms; MLflow's type-hint validation does not apply.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from adcore.methods import load_model
        from adcore.predict import model_threshold

        device = os.environ.get("ADCORE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(context.artifacts["model_dir"], device=device)
        self.transform = self.model.make_transform()
        self.batch_size = self.model.settings.data.batch_size
        self.threshold = model_threshold(self.model.normalizer)
        if os.environ.get(_SERVING_ENV):
            # The scoring server puts str(input) into the message of a 400; keep a long base64 image from being
            # echoed whole (only in the serving process: printing elsewhere is left alone).
            np.set_printoptions(formatter={"object": _short_element})

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import torch

        from adcore.errors import AdcoreError
        from adcore.postprocess import ScoreNormalizer
        from adcore.predict import check_threshold

        params = params or {}
        try:
            threshold = check_threshold(params.get("threshold"), "threshold parameter")
        except AdcoreError as exc:
            raise _bad_request(str(exc)) from None
        threshold = self.threshold if threshold is None else threshold
        images = request_images(model_input)
        batches = [torch.stack([self.transform(im) for im in images[i:i + self.batch_size]])
                   for i in range(0, len(images), self.batch_size)]
        if params.get("backbone_only"):
            with torch.inference_mode():
                means = [self.model.backbone_features(b)[-1].float().abs().flatten(1).mean(1) for b in batches]
            return {"feature_mean": torch.cat(means).cpu().numpy().astype(np.float32)}
        preds = [self.model.predict(b) for b in batches]
        scores = torch.cat([p.scores for p in preds]).numpy().astype(np.float32)
        out: dict[str, np.ndarray] = {"scores": scores}
        if threshold is not None:
            out["threshold"] = np.full(len(scores), threshold, dtype=np.float64)
            out["defective"] = scores > threshold
        normalizer = ScoreNormalizer.from_dict(self.model.normalizer) if self.model.normalizer else None
        if normalizer is not None:
            out["normalized_scores"] = np.asarray(normalizer.normalize_scores(scores), dtype=np.float32)
        if params.get("return_maps", True):
            maps = torch.cat([p.maps for p in preds])
            if params.get("normalize"):
                if normalizer is None:
                    raise _bad_request("normalize parameter: the model has no fitted normaliser")
                maps = normalizer.normalize_maps(maps)
            out["maps"] = maps.numpy().astype(np.float32)
        return out


mlflow.models.set_model(AnomalyModelPyfunc())
