"""Model directories: ``model.json`` (metadata, config) + ``model.safetensors`` (tensors). Never pickles.

Every write is atomic: files are written to a temporary sibling and renamed into place, and a model directory is
built beside its destination and swapped in whole, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adcore import MODEL_FORMAT_VERSION, __version__
from adcore.errors import ModelFormatError

META_FILE = "model.json"
TENSOR_FILE = "model.safetensors"


# Read once at import (os.umask can only be read by setting it, which is not thread-safe) and restored at once.
# mkstemp / mkdtemp make 0600 / 0700 entries; what we write gets the permissions open() / mkdir() would give.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            old.rmdir()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomic safetensors write; tensors are made contiguous and moved to the CPU."""
    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(clean, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: tensor file missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable safetensors file ({exc})") from None


def write_model_dir(path: str | Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a model directory atomically. ``meta`` gains format and package versions."""
    path = Path(path)
    full_meta = {"format_version": MODEL_FORMAT_VERSION, "adcore_version": __version__, **meta}
    with atomic_directory(path) as tmp:
        save_tensors(tmp / TENSOR_FILE, tensors)
        atomic_write_json(tmp / META_FILE, full_meta)
    return path


def read_model_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise ModelFormatError(f"{path}: not a model directory (expected {META_FILE} and {TENSOR_FILE} inside)")
    if not meta_path.is_file():
        raise ModelFormatError(f"{meta_path}: missing; {path} is not an adcore model directory")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{meta_path}: corrupt JSON ({exc})") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise ModelFormatError(f"{meta_path}: no format_version; not written by adcore")
    version = meta["format_version"]
    if version != MODEL_FORMAT_VERSION:
        raise ModelFormatError(
            f"{path}: model format version {version} (written by adcore {meta.get('adcore_version', '?')}) "
            f"cannot be read by adcore {__version__}, which reads format version {MODEL_FORMAT_VERSION}; "
            "retrain the model or load it with the adcore version that wrote it"
        )
    return meta


def read_model_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    meta = read_model_meta(path)
    return meta, load_tensors(Path(path) / TENSOR_FILE)


def flatten_state(prefix: str, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a (nested) state dict, e.g. an optimizer's, into tensors and JSON-able values."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, key: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[key] = node
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {"__dict__": [[_key_to_json(k), walk(v, f"{key}.{k}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(node)]
        return node

    return tensors, walk(state, prefix)


def unflatten_state(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(structure, dict) and "__tensor__" in structure:
        return tensors[structure["__tensor__"]]
    if isinstance(structure, dict) and "__dict__" in structure:
        return {_key_from_json(k): unflatten_state(v, tensors) for k, v in structure["__dict__"]}
    if isinstance(structure, list):
        return [unflatten_state(v, tensors) for v in structure]
    return structure


def _key_to_json(key: Any) -> Any:
    return {"int": key} if isinstance(key, int) else key


def _key_from_json(key: Any) -> Any:
    return key["int"] if isinstance(key, dict) else key
