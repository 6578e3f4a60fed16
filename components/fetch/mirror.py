"""``fetch_dataset``: mirror a source into the output folder, re-fetching only what changed, then validate it.

A re-run downloads only files whose source version changed and removes files that disappeared from the source.
Every download goes to a temporary file beside its destination, is checked (size, and md5 where the source states
it) and only then renamed into place, so an interrupted fetch never leaves a half-written image.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from adcore.io import atomic_path, atomic_write_json
from components.fetch.archives import archive_members, extract_members
from components.fetch.paths import MANIFEST_FILE, resolve_inside
from components.fetch.sources import DOWNLOAD_THREADS, RemoteFile, list_source, source_kind
from components.fetch.state import build_manifest, file_record, is_unchanged, read_state, write_state
from components.fetch.validate import validate_dataset


@dataclass
class _Mirror:
    """One fetch into ``output``: the records it keeps (the next run's state) and what it downloaded."""

    output: Path
    old_files: dict[str, dict]
    files: dict[str, dict] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    downloaded: int = 0
    unchanged: int = 0

    def plain_files(self, items: list[RemoteFile]) -> None:
        """Download the changed files, several at a time; every name is checked before any is written."""
        for it in items:
            resolve_inside(self.output, it.rel)
        with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
            for it, record, fresh in pool.map(self._fetch_one, items):
                self.files[it.rel] = record
                self.origins[it.rel] = it.origin
                self.downloaded += fresh
                self.unchanged += not fresh

    def _fetch_one(self, it: RemoteFile) -> tuple[RemoteFile, dict, bool]:
        record = self.old_files.get(it.rel)
        if record is not None and is_unchanged(self.output, record, it.version):
            return it, record, False
        with atomic_path(self.output / it.rel) as tmp:
            sha = it.download_verified(tmp)
        return it, file_record(self.output, it.rel, it.version, sha, it.origin), True

    def archive(self, it: RemoteFile, previous: dict | None) -> dict:
        """Extract an archive where it lies, unless it and every member it gave are unchanged; returns its state."""
        base = str(PurePosixPath(it.rel).parent)
        base = "" if base == "." else base
        old = self.old_files
        if previous and previous.get("version") == it.version and all(
                is_unchanged(self.output, old.get(m), old.get(m, {}).get("version")) for m in previous["members"]):
            for m in previous["members"]:
                self.files[m], self.origins[m] = old[m], f"{it.origin} (member {m})"
            self.unchanged += 1
            return previous
        with tempfile.TemporaryDirectory(dir=self.output, prefix=".fetch-") as scratch:
            path = Path(scratch) / PurePosixPath(it.rel).name
            it.download_verified(path)
            with ExitStack() as stack:
                written = extract_members(archive_members(path, it.origin, stack), base, self.output)
        for rel, sha in written.items():
            origin = f"{it.origin} (member {rel})"
            self.files[rel] = file_record(self.output, rel, f"archive:{it.version}", sha, origin)
            self.origins[rel] = origin
        self.downloaded += 1
        return {"version": it.version, "members": list(written)}


def fetch_dataset(source: str, output: str, *, repo: str = "", rev: str = "", categories: list[str] | None = None,
                  manifest: str = "", validate: bool = True) -> dict[str, Any]:
    """Mirror ``source`` into ``output`` (MVTec layout), validate it and write the manifest.

    source: ``s3://bucket/prefix``, a path inside the git repository ``repo`` (DVC-tracked, at revision ``rev``),
    or a local folder. Archives (.tar, .tar.gz, .tgz, .zip) found in the source are extracted where they lie.
    categories: the categories to validate (default: every folder with train/good).
    manifest: where to write the manifest JSON (default ``<output>/manifest.json``).
    Returns counts of downloaded, unchanged and removed files, and the manifest path.
    """
    t0 = time.perf_counter()
    output_path = Path(output).expanduser().absolute()
    kind, items = source_kind(source, repo), list_source(source, repo, rev)
    output_path.mkdir(parents=True, exist_ok=True)
    state = read_state(output_path)
    mirror = _Mirror(output_path, state.get("files", {}))
    mirror.plain_files([it for it in items if not it.is_archive])
    old_archives: dict[str, dict] = state.get("archives", {})
    archives = {it.rel: mirror.archive(it, old_archives.get(it.rel)) for it in items if it.is_archive}

    removed = 0
    for rel in set(mirror.old_files) - set(mirror.files):  # gone from the source since the last fetch
        (output_path / rel).unlink(missing_ok=True)
        removed += 1
    write_state(output_path, source=source, repo=repo, rev=rev, files=mirror.files, archives=archives)

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
