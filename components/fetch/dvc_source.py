"""List and download a DVC-tracked path of a git repository at a revision (the data itself from its DVC remote)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from adcore.errors import ConfigError, DataError
from components.fetch.paths import safe_relpath
from components.fetch.sources import RemoteFile
from components.secrets import mask_secrets


def list_dvc(repo: str, path: str, rev: str) -> list[RemoteFile]:
    """Every file under ``path`` in ``repo`` at ``rev``; version = the DVC md5 (size and revision without one)."""
    try:
        from dvc.api import DVCFileSystem
    except ImportError:
        raise ConfigError("fetching from a DVC repository needs the 'dvc' and 'dvc-s3' packages") from None
    shown = mask_secrets(repo)  # messages, origins (state file, manifest) never carry the repository's credentials
    where = f"{shown}:{path}@{rev or 'HEAD'}"
    try:
        fs = DVCFileSystem(repo, rev=rev or None)
        _ = fs.repo  # opens (or clones) the repository at ``rev`` now, so a bad URL or revision fails here
        path = path.strip("/") or "/"
        if not fs.exists(path):
            raise DataError(f"{where}: path not found in the repository at that revision")
        infos = {path: fs.info(path)} if fs.isfile(path) else fs.find(path, detail=True)
    except DataError:
        raise
    except Exception as exc:  # dvc and scmrepo raise many types (SCMError, RevError, CloneError, ...)
        raise DataError(mask_secrets(f"{where}: cannot open the DVC repository or revision "
                                     f"({type(exc).__name__}: {exc})")) from None
    files = []
    base = PurePosixPath(path)
    for name, info in sorted(infos.items()):
        if info.get("type") != "file":
            continue
        name = name.lstrip("/")
        rel = PurePosixPath(name).name if name == path else str(PurePosixPath(name).relative_to(base))
        rel = safe_relpath(rel, where)
        dvc_info = info.get("dvc_info") or {}
        md5 = dvc_info.get("md5") or info.get("md5")
        md5 = md5 if md5 and re.fullmatch(r"[0-9a-f]{32}", md5) else None
        version = f"md5:{md5}" if md5 else f"size:{info.get('size')}:{rev}"

        def download(dest: Path, name: str = name) -> None:
            try:
                fs.get_file(name, str(dest))
            except Exception as exc:
                raise DataError(mask_secrets(f"{shown}:{name}@{rev or 'HEAD'}: download failed "
                                             f"({type(exc).__name__}: {exc}); check the DVC remote and its "
                                             "credentials")) from None

        size = info.get("size")
        files.append(RemoteFile(rel, int(size) if size is not None else None, version,
                                f"{shown}:{name}@{rev or 'HEAD'}", download, md5))
    if not files:
        raise DataError(f"{where}: no files at this path")
    return files
