"""The MLflow pyfunc flavour of an adcore model, logged as "model from code" (this file), so nothing is pickled.

The logged model holds the adcore model directory (JSON + safetensors) as the artifact ``model_dir``; loading it
rebuilds the model with ``adcore.methods.load_model``. Input: a batch of images as a uint8 array (B, H, W, 3)
(or one image (H, W, 3)); every image is resized by the model's own transform. Output: ``{"scores": (B,),
"maps": (B, S, S)}`` float32, S the model's input size. Parameter ``normalize`` (default False) maps scores and
maps with the normaliser fitted on validation images, so that 0.5 is the decision threshold.

The device is ``$ADCORE_DEVICE`` when set, else CUDA when available, else the CPU. The serving environment needs
the ``adcore`` package installed (the training image has it).
"""

from __future__ import annotations

import os

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class AnomalyModelPyfunc(PythonModel):
    # Inputs are checked against the explicit tensor signature; MLflow's type-hint validation does not apply.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from adcore.methods import load_model

        device = os.environ.get("ADCORE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(context.artifacts["model_dir"], device=device)
        self.transform = self.model.make_transform()
        self.batch_size = self.model.settings.data.batch_size

    def predict(self, context, model_input, params=None):
        import torch

        from adcore.errors import DataError

        images = np.asarray(model_input)
        if images.ndim == 3 and images.shape[-1] == 3:
            images = images[None]
        if images.ndim == 3:  # a batch of grayscale images
            images = np.repeat(images[..., None], 3, axis=-1)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"model input: expected uint8 images (B, H, W, 3), got shape {images.shape}")
        if images.dtype != np.uint8:
            raise DataError(f"model input: expected dtype uint8 (0..255), got {images.dtype}")
        normalize = bool((params or {}).get("normalize", False))
        scores, maps = [], []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(np.ascontiguousarray(im)) for im in images[start:start +
                                                                                           self.batch_size]])
            pred = self.model.predict(batch, normalize=normalize)
            scores.append(pred.scores.numpy())
            maps.append(pred.maps.numpy())
        return {"scores": np.concatenate(scores).astype(np.float32), "maps": np.concatenate(maps).astype(np.float32)}


mlflow.models.set_model(AnomalyModelPyfunc())
