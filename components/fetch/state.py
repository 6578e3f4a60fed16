"""What the last fetch wrote (the hidden state file) and what the output folder holds (the manifest).

The state lets a re-run skip every file whose source version, size and mtime are unchanged; the manifest lists every
dataset file with its size and sha256, and one sha256 over all of them that identifies the dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from adcore.io import atomic_write_json, file_digests
from components.fetch.paths import is_dataset_file

STATE_FILE = ".adcore-fetch.json"


def read_state(output: Path) -> dict[str, Any]:
    """The last fetch's state; empty when there is none or it is unreadable (then everything is fetched again)."""
    try:
        state = json.loads((output / STATE_FILE).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def write_state(output: Path, *, source: str, repo: str, rev: str, files: dict[str, dict],
                archives: dict[str, dict]) -> None:
    atomic_write_json(output / STATE_FILE, {"source": source, "repo": repo, "rev": rev, "files": files,
                                            "archives": archives})


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
    return {"source": source, "files": entries, "total_files": len(entries),
            "total_bytes": sum(e["size"] for e in entries), "dataset_sha256": digest}
