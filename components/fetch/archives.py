"""Extract .tar/.tar.gz/.tgz/.zip archives found in the source, where they lie.

Every member is checked before any is extracted (only regular files at safe relative paths: no links, devices or
names that climb out), the sizes the archive declares are checked against limits (``ArchiveLimits``: the total it
unpacks to, and that total over the archive's own size, so a decompression bomb is refused before it fills the
disk), and each member is streamed into the fetch's staging folder, counting bytes against its declared size. A
hostile or truncated archive therefore writes nothing outside the output folder and nothing into the dataset.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from adcore.errors import ConfigError, DataError
from components.fetch.paths import safe_relpath

#: Defaults of ``fetch_dataset(max_archive_bytes=..., max_archive_ratio=...)`` / ``--max-archive-bytes`` /
#: ``--max-archive-ratio``: generous for image datasets (MVTec AD unpacks to about 5 GB, images and masks compress
#: less than 10x) and far below what a bomb reaches (a few hundred KB of zeros deflate from hundreds of MB).
DEFAULT_MAX_ARCHIVE_BYTES = 20 * 1024**3
DEFAULT_MAX_ARCHIVE_RATIO = 200.0
#: The ratio is not checked below this total: a small archive cannot fill a disk, and text/mask archives compress.
RATIO_FLOOR_BYTES = 16 * 1024**2
_CHUNK = 1 << 20

#: (relative path, size the archive declares, opener of a binary stream)
Member = tuple[str, int, Callable[[], Any]]


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may unpack to: ``max_bytes`` in all, at most ``max_ratio`` times its own size."""

    max_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
    max_ratio: float = DEFAULT_MAX_ARCHIVE_RATIO

    def __post_init__(self) -> None:
        if not isinstance(self.max_bytes, int) or isinstance(self.max_bytes, bool) or self.max_bytes <= 0:
            raise ConfigError(f"max_archive_bytes: must be a positive number of bytes (got {self.max_bytes!r})")
        if not isinstance(self.max_ratio, (int, float)) or isinstance(self.max_ratio, bool) or \
                not self.max_ratio > 0 or self.max_ratio == float("inf"):
            raise ConfigError(f"max_archive_ratio: must be a positive finite number (got {self.max_ratio!r})")

    def check(self, members: list[Member], path: Path, origin: str) -> None:
        """DataError naming the archive when its declared sizes exceed a limit; nothing has been written yet."""
        total = sum(size for _, size, _ in members)
        packed = max(path.stat().st_size, 1)
        if total > self.max_bytes:
            raise DataError(f"{origin}: archive unpacks to {total} bytes, over the limit of {self.max_bytes} bytes "
                            "(max_archive_bytes, --max-archive-bytes); refused, nothing was written")
        if total > RATIO_FLOOR_BYTES and total > self.max_ratio * packed:
            raise DataError(f"{origin}: archive of {packed} bytes unpacks to {total} bytes ({total / packed:.0f}x, "
                            f"over the limit of {self.max_ratio:g}x: a decompression bomb?); refused, nothing was "
                            "written (raise max_archive_ratio, --max-archive-ratio, if it is genuine)")


_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, EOFError, OSError)


def archive_members(path: Path, origin: str, stack: ExitStack) -> list[Member]:
    """Check every member before extracting any: only regular files at safe relative paths.

    Returns (relative path, declared size, opener of a binary stream) per regular file; ``stack`` keeps the archive
    open.
    """
    members: list[Member] = []
    if zipfile.is_zipfile(path):
        try:
            zf = stack.enter_context(zipfile.ZipFile(path))
        except _READ_ERRORS as exc:
            raise DataError(f"{origin}: not a readable zip archive ({exc})") from None
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DataError(f"{origin}: unsafe archive: member {info.filename!r} is a symbolic link; refused")
            rel = safe_relpath(info.filename, f"{origin}: unsafe archive member", allow_empty=info.is_dir())
            if not info.is_dir():
                members.append((rel, info.file_size, partial(zf.open, info)))
        return members
    try:
        tf = stack.enter_context(tarfile.open(path, "r:*"))
        infos = tf.getmembers()
    except _READ_ERRORS as exc:
        raise DataError(f"{origin}: not a readable tar or zip archive ({exc})") from None
    for member in infos:
        rel = safe_relpath(member.name, f"{origin}: unsafe archive member", allow_empty=member.isdir())
        if member.isdir():
            continue
        if member.issym() or member.islnk():
            raise DataError(f"{origin}: unsafe archive: member {member.name!r} is a link to "
                            f"{member.linkname!r}; links are refused")
        if not member.isfile():
            raise DataError(f"{origin}: unsafe archive: member {member.name!r} is not a regular file; refused")
        members.append((rel, member.size, partial(tf.extractfile, member)))
    return members


def stream_member(opener: Callable[[], Any], dest: Path, declared: int, where: str) -> str:
    """Copy one member to the new file ``dest`` (in the staging folder), never more than the ``declared`` size the
    limits were checked against; returns its sha256. DataError naming the member when it is unreadable or longer."""
    digest = hashlib.sha256()
    written = 0
    try:
        with opener() as source, open(dest, "xb") as fh:
            while block := source.read(_CHUNK):
                written += len(block)
                if written > declared:
                    raise DataError(f"{where}: holds more than the {declared} bytes the archive declares for it; "
                                    "refused as a decompression bomb, nothing was written")
                digest.update(block)
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
    except _READ_ERRORS as exc:
        raise DataError(f"{where}: cannot be extracted ({type(exc).__name__}: {exc}); nothing was written") \
            from None
    return digest.hexdigest()
