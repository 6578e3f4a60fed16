"""File IO: atomic writes, content hashes, and model directories (``model.json`` + ``model.safetensors``).

Every write is atomic: files are written to a temporary sibling and renamed into place, and a model directory is
built beside its destination and swapped in whole, so a crash never leaves a half-written file or model behind.
Model directories never pickle.

Concurrency: a directory swap is one ``renameat2(RENAME_EXCHANGE)`` on Linux (the destination never disappears;
concurrent writers never fail, the last one wins), and a reader opens the model directory once and reads both files
through that directory's descriptor, so it sees one whole version, never one version's model.json with another's
tensors. A model write never replaces a folder that is not an adcore model directory.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file, save_file

from adcore import MODEL_FORMAT_VERSION, __version__
from adcore.errors import ConfigError, ModelFormatError

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


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_renameat2: Any = None
if sys.platform.startswith("linux"):
    try:
        _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        _renameat2.restype = ctypes.c_int
    except (AttributeError, OSError):  # glibc < 2.28, musl: the two-rename swap below
        _renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``). False where unsupported;
    FileNotFoundError when one of them is absent."""
    global _renameat2
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system cannot exchange
        _renameat2 = None
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def move_aside(path: Path) -> Path | None:
    """Rename ``path`` to a fresh hidden sibling (``.<name>.*.old``) and return it; None when ``path`` is gone
    (another process moved it first). Deleting the sibling afterwards never races with a new ``path``."""
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    old.rmdir()
    try:
        os.rename(path, old)
    except FileNotFoundError:
        return None
    return old


def _swap_in(tmp: Path, path: Path, before_replace: Callable[[Path], None] | None) -> None:
    """Put the complete directory ``tmp`` at ``path``; whatever was there is removed. Safe with concurrent
    writers of the same ``path`` (the last one wins) and with readers (``path`` is never absent on Linux)."""
    for _ in range(1000):
        if before_replace is not None and os.path.lexists(path):
            before_replace(path)
        try:
            if _exchange(tmp, path):  # tmp now holds the previous version
                _remove(tmp)
                return
        except FileNotFoundError:  # nothing at path yet
            pass
        try:
            os.rename(tmp, path)  # succeeds where path is absent (or an empty folder)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise
        # No exchange on this system: move the current version aside, then rename ours in. Another writer may
        # move or install between the two renames; then retry.
        old = move_aside(path)
        if old is None:
            continue
        _remove(old)
    raise OSError(errno.EBUSY, "could not swap in a new version (too many concurrent writers)", str(path))


@contextmanager
def atomic_directory(path: str | Path, before_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block completes.

    ``before_replace(path)`` runs just before an existing ``path`` is replaced and may raise to keep it."""
    path = Path(os.path.abspath(path))  # "." or "x/.." have no name to build a sibling from
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        _swap_in(tmp, path, before_replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomic safetensors write; tensors are made contiguous and moved to the CPU."""
    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def check_finite(tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """ModelFormatError naming ``where`` and the first floating-point tensor holding NaN or infinity."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelFormatError(f"{where}: tensor {name!r} holds {bad} NaN or infinite value(s) of "
                                   f"{tensor.numel()}; the model is corrupt, retrain it")


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: tensor file missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable safetensors file ({exc})") from None


def model_dir_problem(path: str | Path) -> str | None:
    """Why an existing ``path`` is not an adcore model directory a model write may replace; None when it is one
    (a folder holding only model.json, with a format_version, and model.safetensors)."""
    path = Path(path)
    if not path.is_dir():
        return "exists and is not a folder"
    names = sorted(p.name for p in path.iterdir())
    others = [n for n in names if n not in (META_FILE, TENSOR_FILE)]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"holds files that are not part of a model ({shown})"
    if META_FILE not in names:
        return f"has no {META_FILE}"
    try:
        meta = json.loads((path / META_FILE).read_bytes())
    except (OSError, ValueError):
        return f"its {META_FILE} is not valid JSON"
    if not isinstance(meta, dict) or "format_version" not in meta:
        return f"its {META_FILE} was not written by adcore"
    return None


def check_model_output(path: str | Path, *, overwrite: bool) -> None:
    """ConfigError unless a model may be written to ``path``: absent, an empty folder, or (``overwrite``) an adcore
    model directory. Nothing that is not a model is ever replaced."""
    path = Path(path)
    for _ in range(100):  # a concurrent writer may swap versions while this looks: look again
        before = _identity(path)
        if before is None:
            return
        if path.is_symlink():
            problem: str | None = "is a symbolic link"
        elif path.is_dir() and not any(path.iterdir()):
            problem = "empty"
        else:
            problem = model_dir_problem(path)
        if _identity(path) == before:
            break
    if problem == "empty":
        return
    if problem is not None:
        raise ConfigError(f"{path}: {problem}; a model write would replace it. Choose another output path "
                          f"(it is not an adcore model directory)")
    if not overwrite:
        raise ConfigError(f"{path}: an adcore model directory already exists; pass --overwrite to replace it")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def write_model_dir(path: str | Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a model directory atomically. ``meta`` gains format and package versions. An existing model directory
    at ``path`` is replaced; anything else there (a folder of other files) is refused with a ConfigError."""
    path = Path(path)
    check_model_output(path, overwrite=True)  # before the work, and again just before the swap
    full_meta = {"format_version": MODEL_FORMAT_VERSION, "adcore_version": __version__, **meta}
    with atomic_directory(path, before_replace=lambda p: check_model_output(p, overwrite=True)) as tmp:
        save_tensors(tmp / TENSOR_FILE, tensors)
        atomic_write_json(tmp / META_FILE, full_meta)
    return path


def _read_version(path: Path, names: tuple[str, ...]) -> dict[str, bytes | None]:
    """The bytes of ``names`` in the directory ``path`` (None for an absent one), all from one version of it.

    The directory is opened once and every file through its descriptor: a writer swapping in a new version
    meanwhile cannot give this reader files of two versions. When the version opened is removed before its files
    are opened (a writer cleaning up), the read starts again on the new one."""
    if not path.is_dir():
        raise ModelFormatError(f"{path}: not a model directory (expected {META_FILE} and {TENSOR_FILE} inside)")
    for _ in range(100):
        try:
            dir_fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise ModelFormatError(f"{path}: not a model directory (expected {META_FILE} and {TENSOR_FILE} "
                                   "inside)") from None
        try:
            fds: dict[str, int | None] = {}
            try:
                for name in names:
                    try:
                        fds[name] = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
                    except FileNotFoundError:
                        fds[name] = None
                if any(fd is None for fd in fds.values()) and _replaced(path, dir_fd):
                    continue  # the version opened went away while opening it: read the current one
                out: dict[str, bytes | None] = {}
                for name, fd in fds.items():
                    if fd is None:
                        out[name] = None
                    else:
                        with os.fdopen(fd, "rb", closefd=False) as fh:
                            out[name] = fh.read()
                return out
            finally:
                for fd in fds.values():
                    if fd is not None:
                        os.close(fd)
        finally:
            os.close(dir_fd)
    raise ModelFormatError(f"{path}: the model directory kept changing while it was read; try again")


def _replaced(path: Path, dir_fd: int) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return True
    opened = os.fstat(dir_fd)
    return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)


def _parse_meta(path: Path, raw: bytes | None) -> dict[str, Any]:
    meta_path = path / META_FILE
    if raw is None:
        raise ModelFormatError(f"{meta_path}: missing; {path} is not an adcore model directory")
    try:
        meta = json.loads(raw.decode("utf-8"))
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


def read_model_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return _parse_meta(path, _read_version(path, (META_FILE,))[META_FILE])


def read_model_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``model.json`` and the tensors of one version of the model directory ``path``, tensors checked finite."""
    path = Path(path)
    files = _read_version(path, (META_FILE, TENSOR_FILE))
    meta = _parse_meta(path, files[META_FILE])
    raw = files[TENSOR_FILE]
    tensor_path = path / TENSOR_FILE
    if raw is None:
        raise ModelFormatError(f"{tensor_path}: tensor file missing")
    try:
        tensors = load_safetensors_bytes(raw)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{tensor_path}: not a readable safetensors file ({exc})") from None
    check_finite(tensors, tensor_path)
    return meta, tensors


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
