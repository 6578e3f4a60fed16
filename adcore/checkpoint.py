"""Per-epoch training checkpoints (safetensors + JSON) so that a pre-empted job resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from adcore.errors import ModelFormatError
from adcore.io import atomic_write_json, flatten_state, load_tensors, save_tensors, unflatten_state

STATE_FILE = "checkpoint.safetensors"
META_FILE = "checkpoint.json"


def save_checkpoint(directory: Path, state: dict[str, Any], *, epoch: int, history: list[dict[str, float]],
                    fingerprint: str = "") -> None:
    """Write module and optimizer states after ``epoch``. The JSON is written last: it marks the checkpoint valid."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure: dict[str, Any] = {}
    for name, obj in state.items():
        t, s = flatten_state(name, obj.state_dict())
        tensors.update(t)
        structure[name] = s
    tensor_file = f"epoch{epoch:05d}-{STATE_FILE}"
    save_tensors(directory / tensor_file, tensors)
    atomic_write_json(directory / META_FILE, {"epoch": epoch, "history": history, "structure": structure,
                                              "tensor_file": tensor_file, "fingerprint": fingerprint})
    for old in directory.glob(f"epoch*-{STATE_FILE}"):
        if old.name != tensor_file:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: Path, state: dict[str, Any], *, fingerprint: str = "") -> dict[str, Any] | None:
    """Restore ``state`` in place from the last checkpoint; None when there is none.

    ``fingerprint`` identifies the run (settings and data): a checkpoint of another run is an error, not a start.
    """
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{meta_path}: corrupt checkpoint metadata ({exc})") from None
    saved = meta.get("fingerprint", "")
    if fingerprint and saved and saved != fingerprint:
        raise ModelFormatError(f"{meta_path}: checkpoint of a run with other settings or data (fingerprint {saved}, "
                               f"this run {fingerprint}); use another checkpoint folder or delete this one to start "
                               "afresh")
    tensors = load_tensors(Path(directory) / meta["tensor_file"])
    for name, obj in state.items():
        if name not in meta["structure"]:
            raise ModelFormatError(f"{meta_path}: checkpoint has no state for {name!r}")
        obj.load_state_dict(unflatten_state(meta["structure"][name], tensors))
    return meta
