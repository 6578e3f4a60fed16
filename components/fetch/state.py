"""What the last fetch wrote (the hidden state file) and what the output folder holds (the manifest).

The state lets a re-run skip every file whose source version, size and mtime are unchanged; the manifest lists every
dataset file with its size and sha256, and one sha256 over all of them that identifies the dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from adcore.errors import DataError
from adcore.io import atomic_write_json, file_digests
from components.fetch.paths import is_dataset_file, resolve_inside, safe_relpath
from components.secrets import mask_secrets

STATE_FILE = ".adcore-fetch.json"
STAGING_DIR = ".adcore-fetch-staging"  # every temporary file of a fetch; emptied when the next fetch starts


def read_state(output: Path) -> dict[str, Any]:
    """The last fetch's state; empty when there is none or it is unreadable (then everything is fetched again).

    The state names files the fetch will overwrite or delete, so it is not trusted: every path in it must be a safe
    relative path that resolves inside ``output``, or the fetch stops (DataError naming the state file and the
    entry) before anything is written or deleted.
    """
    path = output / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict):
        return {}
    files, archives = state.setdefault("files", {}), state.setdefault("archives", {})
    if not isinstance(files, dict) or not isinstance(archives, dict):
        raise DataError(f"{path}: 'files' and 'archives' must be objects; the fetch state was edited or corrupted, "
                        "delete it to fetch everything again")
    for key, record in files.items():
        _check_entry(output, path, key, "files")
        if not isinstance(record, dict) or record.get("rel") != key or not isinstance(record.get("size"), int) \
                or not isinstance(record.get("mtime_ns"), int) or not isinstance(record.get("sha256"), str):
            raise DataError(f"{path}: entry files[{key!r}] is malformed (needs rel equal to its key, size, mtime_ns "
                            "and sha256); the fetch state was edited or corrupted, delete it to fetch everything again")
    for key, record in archives.items():
        _check_entry(output, path, key, "archives")
        members = record.get("members") if isinstance(record, dict) else None
        if not isinstance(members, list):
            raise DataError(f"{path}: entry archives[{key!r}] is malformed (needs a members list); the fetch state "
                            "was edited or corrupted, delete it to fetch everything again")
        for member in members:
            _check_entry(output, path, member, f"archives[{key!r}].members")
    return state


def _check_entry(output: Path, state_path: Path, rel: Any, where: str) -> None:
    """An entry of the state file must name a file inside ``output``, never anything that lies elsewhere."""
    if not isinstance(rel, str):
        problem = f"{rel!r} is not a path"
    else:
        try:
            clean = safe_relpath(rel, "state")
            resolve_inside(output, rel)
            problem = "" if clean == rel else f"{rel!r} is not a clean relative path (expected {clean!r})"
            if not problem and clean.split("/")[0] in (STATE_FILE, STAGING_DIR):
                problem = f"{rel!r} is the fetch's own bookkeeping, not a dataset file"
        except DataError as exc:
            problem = str(exc).removeprefix("state: ").removesuffix("; refused")
    if problem:
        raise DataError(f"{state_path}: entry in {where}: {problem}; refused, nothing was written or deleted (the "
                        "fetch state was edited or corrupted: delete it to fetch everything again)")


def write_state(output: Path, *, source: str, repo: str, rev: str, files: dict[str, dict],
                archives: dict[str, dict]) -> None:
    """Write the state; the source and repository URLs without their credentials (see components.secrets)."""
    atomic_write_json(output / STATE_FILE, {"source": mask_secrets(source), "repo": mask_secrets(repo), "rev": rev,
                                            "files": files, "archives": archives})


def is_unchanged(output: Path, record: dict | None, version: str | None) -> bool:
    """The file the record describes is still on disk as written, and the source still has that version."""
    if not record or record.get("version") != version:
        return False
    path = output / record["rel"]
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == record["size"] and st.st_mtime_ns == record["mtime_ns"]


def file_record(output: Path, rel: str, version: str, sha: str, origin: str) -> dict[str, Any]:
    """State entry of a file just written: size and mtime let the next run trust ``sha`` without re-reading."""
    st = (output / rel).stat()
    return {"rel": rel, "version": version, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
            "origin": origin}


def build_manifest(root: Path, known: dict[str, dict], **source: str) -> dict[str, Any]:
    """Every file under ``root`` (hidden files and the manifest excepted) with its size and sha256."""
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or not is_dataset_file(rel):
            continue
        record = known.get(rel)
        st = path.stat()
        if record and record["size"] == st.st_size and record["mtime_ns"] == st.st_mtime_ns:
            sha = record["sha256"]
        else:
            sha = file_digests(path, "sha256")["sha256"]
        entries.append({"path": rel, "size": st.st_size, "sha256": sha})
    digest = hashlib.sha256("".join(f"{e['path']}\0{e['sha256']}\n" for e in entries).encode()).hexdigest()
    source = {key: mask_secrets(value) for key, value in source.items()}
    return {"source": source, "files": entries, "total_files": len(entries),
            "total_bytes": sum(e["size"] for e in entries), "dataset_sha256": digest}
