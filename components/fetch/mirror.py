"""``fetch_dataset``: mirror a source into the output folder, re-fetching only what changed, then validate it.

A re-run downloads only files whose source version changed and removes files that disappeared from the source.
Nothing is written into the dataset until everything is in: every download and every archive member goes to the
hidden staging folder ``<output>/.adcore-fetch-staging`` first, is checked (size, and md5 where the source states
it; archives: member names, links and size limits) and only when all are in is each renamed into place. A refused
archive or a failed download therefore leaves the dataset as it was, and a killed fetch leaves only the staging
folder, which the next fetch empties when it starts. The incremental state (the hidden state file) is checked as
well: a path in it that would lead outside the output folder stops the fetch before anything is written or deleted.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from adcore.io import atomic_write_json
from components.fetch.archives import (
    DEFAULT_MAX_ARCHIVE_BYTES,
    DEFAULT_MAX_ARCHIVE_RATIO,
    ArchiveLimits,
    archive_members,
    stream_member,
)
from components.fetch.paths import MANIFEST_FILE, resolve_inside
from components.fetch.sources import DOWNLOAD_THREADS, RemoteFile, list_source, select_categories, source_kind
from components.fetch.state import STAGING_DIR, build_manifest, file_record, is_unchanged, read_state, write_state
from components.fetch.validate import validate_dataset


def fresh_staging(output: Path) -> Path:
    """The staging folder, emptied of whatever an interrupted fetch left there."""
    staging = output / STAGING_DIR
    if staging.is_symlink() or staging.is_file():
        staging.unlink()
    elif staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


@dataclass
class _Mirror:
    """One fetch into ``output``: the records it keeps (the next run's state) and what it downloaded."""

    output: Path
    staging: Path
    old_files: dict[str, dict]
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    files: dict[str, dict] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    # rel -> (staged file, version, sha256, origin): downloaded and checked, renamed into place by ``commit``
    pending: dict[str, tuple[Path, str, str, str]] = field(default_factory=dict)
    downloaded: int = 0
    unchanged: int = 0

    def _staged(self) -> Path:
        return self.staging / uuid.uuid4().hex

    def plain_files(self, items: list[RemoteFile]) -> None:
        """Download the changed files into staging, several at a time; every name is checked before any download."""
        for it in items:
            resolve_inside(self.output, it.rel)
        with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
            for it, record, staged in pool.map(self._fetch_one, items):
                if staged is None:
                    self.files[it.rel], self.origins[it.rel] = record, it.origin
                    self.unchanged += 1
                else:
                    self.pending[it.rel] = (staged, it.version, record["sha256"], it.origin)
                    self.downloaded += 1

    def _fetch_one(self, it: RemoteFile) -> tuple[RemoteFile, dict, Path | None]:
        record = self.old_files.get(it.rel)
        if record is not None and is_unchanged(self.output, record, it.version):
            return it, record, None
        staged = self._staged()
        return it, {"sha256": it.download_verified(staged)}, staged

    def archive(self, it: RemoteFile, previous: dict | None) -> dict:
        """Stage the members of an archive (extracted where it lies), unless it and every member it gave are
        unchanged; returns its state."""
        base = str(PurePosixPath(it.rel).parent)
        base = "" if base == "." else base
        old = self.old_files
        if previous and previous.get("version") == it.version and all(
                is_unchanged(self.output, old.get(m), old.get(m, {}).get("version")) for m in previous["members"]):
            for m in previous["members"]:
                self.files[m], self.origins[m] = old[m], f"{it.origin} (member {m})"
            self.unchanged += 1
            return previous
        path = self._staged()
        it.download_verified(path)
        staged: dict[str, tuple[Path, str]] = {}
        with ExitStack() as stack:
            members = archive_members(path, it.origin, stack)
            self.limits.check(members, path, it.origin)
            targets = [(f"{base}/{rel}" if base else rel, size, opener) for rel, size, opener in members]
            for rel, _, _ in targets:
                resolve_inside(self.output, rel)
            for rel, size, opener in targets:
                dest = self._staged()
                staged[rel] = dest, stream_member(opener, dest, size, f"{it.origin}: member {rel!r}")
        path.unlink()
        for rel, (dest, sha) in staged.items():
            self.pending[rel] = (dest, f"archive:{it.version}", sha, f"{it.origin} (member {rel})")
        self.downloaded += 1
        return {"version": it.version, "members": list(staged)}

    def commit(self) -> None:
        """Rename every staged file into place (each rename is atomic) and record it."""
        for rel, (staged, version, sha, origin) in self.pending.items():
            resolve_inside(self.output, rel)
            (self.output / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, self.output / rel)
            self.files[rel] = file_record(self.output, rel, version, sha, origin)
            self.origins[rel] = origin
        self.pending.clear()


def fetch_dataset(source: str, output: str, *, repo: str = "", rev: str = "", categories: list[str] | None = None,
                  manifest: str = "", validate: bool = True, max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
                  max_archive_ratio: float = DEFAULT_MAX_ARCHIVE_RATIO) -> dict[str, Any]:
    """Mirror ``source`` into ``output`` (MVTec layout), validate it and write the manifest.

    source: ``s3://bucket/prefix``, a path inside the git repository ``repo`` (DVC-tracked, at revision ``rev``),
    or a local folder. Archives (.tar, .tar.gz, .tgz, .zip) found in the source are extracted where they lie.
    categories: the only categories fetched and validated (default: all of the source, every folder with
    train/good validated); files of other categories are neither downloaded nor kept.
    manifest: where to write the manifest JSON (default ``<output>/manifest.json``).
    max_archive_bytes / max_archive_ratio: what one archive may unpack to, in all and relative to its own size
    (see ``components.fetch.archives``); an archive over either is refused before anything is written.
    Returns counts of downloaded, unchanged and removed files, and the manifest path.
    """
    t0 = time.perf_counter()
    limits = ArchiveLimits(max_archive_bytes, max_archive_ratio)
    output_path = Path(output).expanduser().absolute()
    kind = source_kind(source, repo)
    items = select_categories(list_source(source, repo, rev), categories, source)
    output_path.mkdir(parents=True, exist_ok=True)
    state = read_state(output_path)  # refuses a state naming paths outside the output folder, before any write
    staging = fresh_staging(output_path)
    try:
        mirror = _Mirror(output_path, staging, state.get("files", {}), limits)
        mirror.plain_files([it for it in items if not it.is_archive])
        old_archives: dict[str, dict] = state.get("archives", {})
        archives = {it.rel: mirror.archive(it, old_archives.get(it.rel)) for it in items if it.is_archive}
        mirror.commit()  # everything is downloaded and checked: only now is the dataset changed

        removed = 0
        for rel in set(mirror.old_files) - set(mirror.files):  # gone from the source since the last fetch
            resolve_inside(output_path, rel)  # checked by read_state already; never delete outside the output
            (output_path / rel).unlink(missing_ok=True)
            removed += 1
        write_state(output_path, source=source, repo=repo, rev=rev, files=mirror.files, archives=archives)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    manifest_path = Path(manifest).expanduser().absolute() if manifest else output_path / MANIFEST_FILE
    info = build_manifest(output_path, mirror.files, source=source, repo=repo, rev=rev, kind=kind)
    if validate:
        info["categories"] = validate_dataset(output_path, categories, mirror.origins)
    atomic_write_json(manifest_path, info)
    return {
        "output": str(output_path), "manifest": str(manifest_path), "categories": sorted(info.get("categories", {})),
        "downloaded": mirror.downloaded, "unchanged": mirror.unchanged, "removed": removed,
        "files": len(info["files"]), "bytes": info["total_bytes"], "dataset_sha256": info["dataset_sha256"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
