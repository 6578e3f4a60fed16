"""Train one method on one category with a profile: seeded, on the GPU when present, resumable per epoch.

A checkpoint is written after every epoch (default ``<output>.ckpt``); with ``resume`` a pre-empted job continues
after the last completed epoch and ends with the same model as an uninterrupted run (the base class reseeds each
epoch from (seed, epoch)). The model directory is written before anything is sent to MLflow, so a tracking server
that is down costs the log, never the model.

With ``checkpoint_uri`` (``s3://bucket/prefix``) the checkpoints are also mirrored to the object store
(components.checkpoints): a retried or pre-empted pod, whose local folder is gone, restores the last one and resumes;
the copy is deleted once the model is saved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.tracking import tracked_training

log = logging.getLogger(__name__)


@tracked_training  # the run is open for the whole training and ends FINISHED or FAILED (SIGTERM too)
def train(method: str, data_root: str, category: str, output_dir: str, *, profile: str = "", params: str = "",
          overrides: list[str] | None = None, seed: int = -1, device: str = "", cache_dir: str = "",
          checkpoint_dir: str = "", checkpoint_uri: str = "", resume: bool = False, stop_after_epochs: int = 0,
          track: bool = True, run_id: str = "", experiment: str = "", tracking_uri: str = "",
          progress: bool = False) -> dict[str, Any]:
    """Train and save ``output_dir`` (an adcore model directory); log the run to MLflow when ``track``.

    seed: -1 keeps the configured ``train.seed``. device: "" keeps ``train.device`` ("auto": CUDA when available).
    stop_after_epochs: > 0 stops after that many epochs in this call (to test resuming); the model is still saved.
    checkpoint_uri: mirror checkpoints there and resume from the one found there (see the module docstring).
    Returns model_dir, checkpoint_dir, run_id, seconds, device, epochs, resumed_from_epoch (-1: from scratch) and
    the model's content hash.
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
    resumed_from = -1
    if checkpoint_uri:
        from components.checkpoints import restore_checkpoint

        restored = restore_checkpoint(checkpoint_uri, ckpt)
        resume, resumed_from = resume or restored is not None, -1 if restored is None else restored
    options = TrainOptions(cache_dir=Path(cache_dir) if cache_dir else None, checkpoint_dir=Path(ckpt),
                           resume=resume, progress=progress, stop_after_epochs=stop_after_epochs or None)
    if checkpoint_uri:
        from components.checkpoints import CheckpointMirror, clear_checkpoints

        with CheckpointMirror(checkpoint_uri, ckpt):
            result = train_model(settings, data_root, category, output_dir, options, overwrite=True)
        if not stop_after_epochs:  # finished: the next run of these settings starts afresh
            clear_checkpoints(checkpoint_uri)
    else:
        result = train_model(settings, data_root, category, output_dir, options, overwrite=True)  # the step owns it
    out = {"model_dir": str(result.model_dir), "checkpoint_dir": ckpt, "resumed_from_epoch": resumed_from,
           "run_id": "", "seconds": round(result.seconds, 3), "device": result.device, "epochs": len(result.history),
           "model_sha256": model_fingerprint(result.model_dir)}
    if track:
        from components.tracking import log_training

        out["run_id"] = log_training(result, category=category, method=method, data_root=data_root, run_id=run_id,
                                     experiment=experiment, uri=tracking_uri)
    return out
