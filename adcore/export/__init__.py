"""Export a trained model to ONNX or OpenVINO IR: the whole inference graph in one file, run without torch.

- :mod:`adcore.export.graph`: the inference graph as one ``nn.Module`` (backbone, method head, upsample, blur,
  image score, optionally the score normaliser) traced with ``torch.export`` at a fixed batch size;
- :mod:`adcore.export.decompositions`: the two ATen ops without an ONNX translation (channel-only adaptive average
  pooling, ``cdist``) rewritten as gathers and sums before translation;
- :mod:`adcore.export.writer`: ``export_model`` - the ONNX file (``torch.onnx``), the OpenVINO IR converted from it
  (``openvino.Core.read_model``), ``export.json`` with the preprocessing and threshold, written as one atomic folder;
- :mod:`adcore.export.runners`: load an export folder and score images with onnxruntime or OpenVINO;
- :mod:`adcore.export.check`: compare an export with ``adcore predict`` on images (the equality table).
"""

from adcore.export.runners import ExportedModel, load_exported
from adcore.export.writer import EXPORT_FILE, FORMATS, export_formats, export_model

__all__ = ["EXPORT_FILE", "FORMATS", "ExportedModel", "export_formats", "export_model", "load_exported"]
