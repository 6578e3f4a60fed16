"""Train one method on one category with a profile: seeded, on the GPU when present, resumable per epoch.

A checkpoint is written after every epoch (default ``<output>.ckpt``); with ``resume`` a pre-empted job continues
after the last completed epoch and ends with the same model as an uninterrupted run (the base class reseeds each
epoch from (seed, epoch)). The model directory is written before anything is sent to MLflow, so a tracking server
that is down costs the log, never the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def train(method: str, data_root: str, category: str, output_dir: str, *, profile: str = "", params: str = "",
          overrides: list[str] | None = None, seed: int = -1, device: str = "", cache_dir: str = "",
          checkpoint_dir: str = "", resume: bool = False, stop_after_epochs: int = 0, track: bool = True,
          run_id: str = "", experiment: str = "", tracking_uri: str = "", progress: bool = False) -> dict[str, Any]:
    """Train and save ``output_dir`` (an adcore model directory); log the run to MLflow when ``track``.

    seed: -1 keeps the configured ``train.seed``. device: "" keeps ``train.device`` ("auto": CUDA when available).
    stop_after_epochs: > 0 stops after that many epochs in this call (to test resuming); the model is still saved.
    Returns model_dir, checkpoint_dir, run_id, seconds, device, epochs and the model's content hash.
    """
    from adcore.methods import resolve_settings
    from adcore.training import TrainOptions, train_model
    from components.tracking import check_reachable, model_fingerprint
    from components.tracking import tracking_uri as _uri

    extra = list(overrides or [])
    if seed >= 0:
        extra.append(f"train.seed={seed}")
    if device:
        extra.append(f"train.device={device}")
    settings = resolve_settings(method, profile or None, params or None, extra)
    ckpt = checkpoint_dir or f"{Path(output_dir)}.ckpt"
    if track:
        try:
            check_reachable(_uri(tracking_uri))
        except Exception as exc:  # training goes on; the step fails at the end, after the model is saved
            log.warning("%s (training anyway; the model will be saved locally first)", exc)
    options = TrainOptions(cache_dir=Path(cache_dir) if cache_dir else None, checkpoint_dir=Path(ckpt),
                           resume=resume, progress=progress, stop_after_epochs=stop_after_epochs or None)
    result = train_model(settings, data_root, category, output_dir, options, overwrite=True)  # the step owns it
    out = {"model_dir": str(result.model_dir), "checkpoint_dir": ckpt, "run_id": "",
           "seconds": round(result.seconds, 3), "device": result.device, "epochs": len(result.history),
           "model_sha256": model_fingerprint(result.model_dir)}
    if track:
        from components.tracking import log_training

        out["run_id"] = log_training(result, category=category, method=method, data_root=data_root, run_id=run_id,
                                     experiment=experiment, uri=tracking_uri)
    return out
