"""File IO: atomic writes, content hashes, and model directories (``model.json`` + ``model.safetensors``).

Every write is atomic: files are written to a temporary sibling and renamed into place, and a model directory is
built beside its destination and swapped in whole, so a crash never leaves a half-written file or model behind.
Model directories never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

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


_CHUNK = 1 << 20
_HASHES: dict[tuple[str, int, int], str] = {}


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` for a writer that wants a file name (a downloader, a compiler); it
    replaces ``path`` only if the block completes. ``suffix``: for writers that check the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_stream(path: str | Path, source: BinaryIO | Iterable[bytes]) -> str:
    """Copy a binary file object (or an iterable of chunks) to ``path`` atomically without holding it in memory;
    returns the sha256 of what was written, so the caller need not read it back."""
    digest = hashlib.sha256()
    chunks = iter(lambda: source.read(_CHUNK), b"") if hasattr(source, "read") else source
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for block in chunks:
            digest.update(block)
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


def file_digests(path: str | Path, *algorithms: str) -> dict[str, str]:
    """Hex digests of a file in one read, e.g. ``("md5", "sha256")``: md5 checks S3 ETags, sha256 identifies."""
    digests = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms or ("sha256",)}
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            for digest in digests.values():
                digest.update(block)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def file_sha256(path: str | Path) -> str:
    """Content hash, remembered per (path, size, mtime) so a run hashes each image once."""
    stat = os.stat(path)
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _HASHES:
        _HASHES[memo_key] = file_digests(path, "sha256")["sha256"]
    return _HASHES[memo_key]


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
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


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
