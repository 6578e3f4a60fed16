"""Which names may be written into the output folder, and which of its files belong to the dataset.

Object keys and archive members come from outside; one that is absolute or climbs out with ``..`` would write
anywhere, so every name is checked before anything is written.
"""

from __future__ import annotations

import re
from pathlib import Path

from adcore.errors import DataError

MANIFEST_FILE = "manifest.json"


def safe_relpath(name: str, origin: str, *, allow_empty: bool = False) -> str:
    """``name`` as a clean relative POSIX path, or DataError when it is absolute or climbs out with ``..``."""
    problem = None
    if allow_empty and all(p in ("", ".") for p in name.split("/")) and name and not name.startswith("/"):
        return ""
    if not name:
        problem = "empty name"
    elif "\x00" in name:
        problem = "NUL byte in the name"
    elif name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        problem = "absolute path"
    elif "\\" in name:
        problem = "backslash in the name"
    else:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            problem = "'..' in the path"
        elif not parts:
            problem = "empty name"
    if problem:
        raise DataError(f"{origin}: refusing {name!r}: {problem} would write outside the output folder")
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def resolve_inside(root: Path, rel: str) -> Path:
    """``root / rel`` resolved; DataError when a symbolic link already in ``root`` would lead the write outside."""
    dest = (root / rel).resolve()
    if not dest.is_relative_to(root.resolve()):
        raise DataError(f"{rel!r}: resolves to {dest}, outside {root}; refused")
    return dest


def is_dataset_file(rel: str) -> bool:
    """Hidden files (fetch state, temporary files) and the manifest are bookkeeping, not data."""
    return not any(p.startswith(".") for p in rel.split("/")) and rel != MANIFEST_FILE
