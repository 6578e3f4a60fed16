"""Extract .tar/.tar.gz/.tgz/.zip archives found in the source, where they lie.

Every member is checked before any is extracted (only regular files at safe relative paths: no links, devices or
names that climb out), and each is written atomically, so a hostile or truncated archive writes nothing outside
the output folder and never leaves a half-written image.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from adcore.errors import DataError
from adcore.io import atomic_write_stream
from components.fetch.paths import resolve_inside, safe_relpath


def archive_members(path: Path, origin: str, stack: ExitStack) -> list[tuple[str, Callable[[], Any]]]:
    """Check every member before extracting any: only regular files at safe relative paths.

    Returns (relative path, opener of a binary stream) per regular file; ``stack`` keeps the archive open.
    """
    members: list[tuple[str, Callable[[], Any]]] = []
    if zipfile.is_zipfile(path):
        zf = stack.enter_context(zipfile.ZipFile(path))
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DataError(f"{origin}: unsafe archive: member {info.filename!r} is a symbolic link; refused")
            rel = safe_relpath(info.filename, f"{origin}: unsafe archive member", allow_empty=info.is_dir())
            if not info.is_dir():
                members.append((rel, partial(zf.open, info)))
        return members
    try:
        tf = stack.enter_context(tarfile.open(path, "r:*"))
    except tarfile.TarError as exc:
        raise DataError(f"{origin}: not a readable tar or zip archive ({exc})") from None
    for member in tf.getmembers():
        rel = safe_relpath(member.name, f"{origin}: unsafe archive member", allow_empty=member.isdir())
        if member.isdir():
            continue
        if member.issym() or member.islnk():
            raise DataError(f"{origin}: unsafe archive: member {member.name!r} is a link to "
                            f"{member.linkname!r}; links are refused")
        if not member.isfile():
            raise DataError(f"{origin}: unsafe archive: member {member.name!r} is not a regular file; refused")
        members.append((rel, partial(tf.extractfile, member)))
    return members


def extract_members(members: list[tuple[str, Callable[[], Any]]], base: str, output: Path) -> dict[str, str]:
    """Write checked members under ``output/base``, each atomically. Returns {path under output: sha256}."""
    targets = [(f"{base}/{rel}" if base else rel, opener) for rel, opener in members]
    for rel, _ in targets:
        resolve_inside(output, rel)
    written: dict[str, str] = {}
    for rel, opener in targets:
        with opener() as stream:
            written[rel] = atomic_write_stream(output / rel, stream)
    return written
