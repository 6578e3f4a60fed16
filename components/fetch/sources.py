"""What a source holds, without downloading it: one ``RemoteFile`` per file, whatever the kind of source.

The same listing drives the fetch and the pipeline's source fingerprint (``pipelines.steps.source_fingerprint``),
so a fingerprint changes exactly when a fetch would download something.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from adcore.errors import DataError
from adcore.io import file_digests
from components.fetch.paths import is_dataset_file

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
DOWNLOAD_THREADS = 8


@dataclass
class RemoteFile:
    """One file (or archive) of the source."""

    rel: str  # path relative to the dataset root (for an archive: where its name would be)
    size: int | None  # None when the source does not say (DVC directory entries); the md5 is checked instead
    version: str  # changes whenever the content changes (ETag, md5, size+mtime)
    origin: str  # where it came from, for messages (s3://bucket/key, repo:path@rev, a local path)
    download: Callable[[Path], None]  # write the content to this (temporary) path
    md5: str | None = None  # expected md5 hex digest when the source states one

    @property
    def is_archive(self) -> bool:
        return self.rel.lower().endswith(ARCHIVE_SUFFIXES)

    def download_verified(self, path: Path) -> str:
        """Download to ``path`` (a temporary file) and check size and md5 against the listing; returns the sha256.

        A short or corrupted transfer raises, so the caller never renames the temporary file into place.
        """
        self.download(path)
        size = path.stat().st_size
        if self.size is not None and size != self.size:
            raise DataError(f"{self.origin}: downloaded {size} bytes but the source lists {self.size}; "
                            "the transfer was incomplete, nothing was written")
        digests = file_digests(path, "md5", "sha256")
        if self.md5 and digests["md5"] != self.md5:
            raise DataError(f"{self.origin}: md5 {digests['md5']} of the downloaded bytes differs from the source's "
                            f"{self.md5}; the transfer was corrupted, nothing was written")
        return digests["sha256"]


def source_kind(source: str, repo: str = "") -> str:
    """``s3`` for an S3 URI, ``dvc`` for a path in a git repository, else ``local``."""
    if source.startswith("s3://"):
        return "s3"
    return "dvc" if repo else "local"


def list_source(source: str, repo: str = "", rev: str = "") -> list[RemoteFile]:
    """Every file of ``source``: an S3 URI (``s3://bucket/prefix``), a DVC-tracked path in the git repository
    ``repo`` at revision ``rev``, or a local folder. DataError when the source is missing or empty."""
    kind = source_kind(source, repo)
    if kind == "s3":
        from components.fetch.s3_source import list_s3

        return list_s3(source)
    if kind == "dvc":
        from components.fetch.dvc_source import list_dvc

        return list_dvc(repo, source, rev)
    return list_local(source)


def select_categories(items: list[RemoteFile], categories: list[str] | None, source: str) -> list[RemoteFile]:
    """Only the files of ``categories`` (``<category>/...``, or a ``<category>.tar``-style archive beside them);
    all files when ``categories`` is empty. DataError naming the source when a category has no file."""
    if not categories:
        return items
    wanted = set(categories)

    def category_of(rel: str) -> str:
        top = rel.split("/", 1)[0]
        if "/" not in rel:
            for suffix in ARCHIVE_SUFFIXES:
                if top.lower().endswith(suffix):
                    return top[: -len(suffix)]
        return top

    kept = [it for it in items if category_of(it.rel) in wanted]
    missing = sorted(wanted - {category_of(it.rel) for it in kept})
    if missing:
        raise DataError(f"{source}: no files for categories {', '.join(missing)} (expected <category>/train/good/... "
                        "or <category>.tar[.gz] at the top of the source)")
    return kept


def list_local(source: str) -> list[RemoteFile]:
    """A local folder (or one file); version = size and mtime, as cheap to check as a listing."""
    root = Path(source.removeprefix("file://")).expanduser()
    if not root.exists():
        raise DataError(f"{root}: source folder not found")

    def entry(path: Path, rel: str) -> RemoteFile:
        st = path.stat()
        return RemoteFile(rel, st.st_size, f"local:{st.st_size}:{st.st_mtime_ns}", str(path),
                          partial(shutil.copyfile, path))

    if root.is_file():
        return [entry(root, root.name)]
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and is_dataset_file(rel):
            files.append(entry(path, rel))
    if not files:
        raise DataError(f"{root}: source folder is empty")
    return files
