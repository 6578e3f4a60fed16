"""The whole inference of a trained model as one ``nn.Module``, traced with ``torch.export`` for the exporters.

``InferenceGraph(images) -> (anomaly_maps, scores)`` is :meth:`adcore.methods.base.AnomalyModel.predict` without
the Python around it: the method's ``predict_raw`` (backbone and head: memory-bank distances as matrix products,
networks), upsampling and blur to the input size (:func:`adcore.postprocess.anomaly_maps_to_input`), the image score
and, with ``normalize``, the score normaliser. Nothing is re-implemented here, so an export follows the method.

The batch size is fixed at trace time: PatchCore and CFA search the memory bank in blocks whose count depends on the
number of patches, and ``torch.export`` specialises such loops to the traced batch (docs/EXPORT.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adcore.errors import ConfigError
from adcore.export.decompositions import ONNX_DECOMPOSITIONS
from adcore.postprocess import ScoreNormalizer, anomaly_maps_to_input

INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_maps", "scores")


class InferenceGraph(nn.Module):
    """images (B, 3, S, S), normalised as the model's transform does -> maps (B, S, S) and scores (B,)."""

    def __init__(self, model: Any, normalize: bool = False) -> None:
        super().__init__()
        self.model = model  # an AnomalyModel (not an nn.Module); its two modules are registered below
        self.backbone = model.backbone
        self.network = model.check_is_fitted()
        self.normalizer: ScoreNormalizer | None = None
        if normalize:
            if not model.normalizer:
                raise ConfigError(f"--normalize: the {model.name} model has no fitted normaliser (it was trained "
                                  "without validation images); export without --normalize")
            self.normalizer = ScoreNormalizer.from_dict(model.normalizer)
            if self.normalizer.pixel_threshold is None:
                raise ConfigError(f"--normalize: the {model.name} model's normaliser has no pixel statistics")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.model.predict_raw(images)
        maps = anomaly_maps_to_input(raw.maps.float(), (images.shape[-2], images.shape[-1]),
                                     self.model.output_blur_sigma())
        scores = raw.scores.float() if raw.scores is not None else self.model.image_score(maps)
        if self.normalizer is not None:
            maps, scores = self.normalizer.normalize_maps(maps), self.normalizer.normalize_scores(scores)
        return maps, scores


def example_images(model: Any, batch_size: int) -> torch.Tensor:
    """Seeded normalised-range images of the model's input size: what the graph is traced with."""
    size = model.settings.data.input_size
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))


def trace(model: Any, batch_size: int = 1, normalize: bool = False) -> torch.export.ExportedProgram:
    """The exported program of the model's inference graph (CPU, eval mode), ready for ONNX translation."""
    if model.device.type != "cpu":
        raise ConfigError(f"export: load the model on the CPU (it is on {model.device})")
    graph = InferenceGraph(model, normalize).eval()
    example = example_images(model, batch_size)
    _reset_postprocess_memo()
    with torch.no_grad():
        graph(example)  # fills the resize/blur memo with plain tensors, captured as constants below
        program = torch.export.export(graph, (example,), strict=False)
    return program.run_decompositions(ONNX_DECOMPOSITIONS)


def _reset_postprocess_memo() -> None:
    """anomaly_maps_to_input memoises its resize/blur matrices; matrices made under ``predict``'s inference_mode
    cannot be captured by torch.export (inference tensors), so the trace starts from an empty memo."""
    from adcore import postprocess

    postprocess._OPERATORS.clear()
