"""Fetch a dataset in MVTec layout from S3, a DVC-tracked path in a git repository, or a local folder.

The output folder mirrors the source: a re-run downloads only objects whose version (S3 ETag, DVC md5, local size
and mtime) changed and removes files that disappeared from the source. Every download goes to a temporary file in
the destination folder, is checked (size, and md5 where the source states it) and only then renamed into place,
so an interrupted fetch never leaves a half-written image. Object keys and archive members that would land
outside the output folder are refused before anything is written. The result is validated with the same checks
training uses (``adcore.data.mvtec.load_category``) and described by a manifest: every file with its size and
sha256, and image counts per split.

S3 settings come from the environment as for any AWS tool: ``AWS_ENDPOINT_URL`` (MinIO and other S3-compatible
stores), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or any other boto3 credential source) and
``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from adcore.errors import ConfigError, DataError
from adcore.io import atomic_write_json

STATE_FILE = ".adcore-fetch.json"
MANIFEST_FILE = "manifest.json"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
_CHUNK = 1 << 20
_DOWNLOAD_THREADS = 8


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


# --------------------------------------------------------------------------------------------- path safety


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


def _inside(root: Path, rel: str) -> Path:
    dest = (root / rel).resolve()
    if not dest.is_relative_to(root.resolve()):
        raise DataError(f"{rel!r}: resolves to {dest}, outside {root}; refused")
    return dest


# --------------------------------------------------------------------------------------------- sources


def _s3_client():
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    session = boto3.session.Session(region_name=region)
    if session.get_credentials() is None:
        raise ConfigError(
            "S3: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for "
            "MinIO or another S3-compatible store), or configure another boto3 credential source"
        )
    config = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=10, read_timeout=120,
                    max_pool_connections=_DOWNLOAD_THREADS * 2)
    return session.client("s3", endpoint_url=endpoint, config=config), endpoint or "AWS S3"


def _s3_error(exc: Exception, where: str, endpoint: str) -> DataError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return ConfigError(f"{where}: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, EndpointConnectionError):
        return DataError(f"{where}: cannot connect to the S3 endpoint {endpoint} ({exc}); check AWS_ENDPOINT_URL")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            bucket = where[5:].split("/", 1)[0]
            return DataError(f"{where}: bucket {bucket!r} does not exist at {endpoint} (NoSuchBucket); check the "
                             f"bucket name and AWS_ENDPOINT_URL")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken"):
            return DataError(f"{where}: access denied by {endpoint} ({code}); check AWS_ACCESS_KEY_ID and "
                             f"AWS_SECRET_ACCESS_KEY")
        if code in ("NoSuchKey", "404"):
            return DataError(f"{where}: object not found at {endpoint} ({code})")
        if code in ("PreconditionFailed", "412"):
            return DataError(f"{where}: object changed while it was being fetched ({code}); run the fetch again")
        return DataError(f"{where}: S3 error {code} from {endpoint}: {exc}")
    return DataError(f"{where}: S3 request to {endpoint} failed: {type(exc).__name__}: {exc}")


def _list_s3(uri: str) -> list[RemoteFile]:
    from botocore.exceptions import BotoCoreError, ClientError

    match = re.match(r"^s3://([^/]+)/?(.*)$", uri)
    if not match or len(match.group(1)) < 3:
        raise ConfigError(f"{uri}: not an S3 URI; expected s3://bucket/prefix")
    bucket, prefix = match.group(1), match.group(2)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    client, endpoint = _s3_client()
    files: list[RemoteFile] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/") and obj["Size"] == 0:
                    continue  # "folder" marker objects
                origin = f"s3://{bucket}/{key}"
                rel = safe_relpath(key[len(prefix):], f"s3://{bucket}/{prefix}")
                etag = obj["ETag"].strip('"')
                md5 = etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None  # multipart ETags are not an md5
                files.append(RemoteFile(rel, obj["Size"], f"etag:{etag}", origin,
                                        _s3_downloader(client, bucket, key, etag, endpoint), md5))
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(exc, f"s3://{bucket}/{prefix}".rstrip("/"), endpoint) from None
    if not files:
        raise DataError(f"s3://{bucket}/{prefix}".rstrip("/") + f": no objects under this prefix at {endpoint}")
    return files


def _s3_downloader(client, bucket: str, key: str, etag: str, endpoint: str) -> Callable[[Path], None]:
    def download(path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            # IfMatch: the bytes must be the version that was listed, or the check against its size/md5 is moot.
            body = client.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')["Body"]
            with open(path, "wb") as fh:
                for chunk in body.iter_chunks(_CHUNK):
                    fh.write(chunk)
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, f"s3://{bucket}/{key}", endpoint) from None

    return download


def _list_dvc(repo: str, path: str, rev: str) -> list[RemoteFile]:
    try:
        from dvc.api import DVCFileSystem
    except ImportError:
        raise ConfigError("fetching from a DVC repository needs the 'dvc' and 'dvc-s3' packages") from None
    where = f"{repo}:{path}@{rev or 'HEAD'}"
    try:
        fs = DVCFileSystem(repo, rev=rev or None)
        fs.repo  # opens (or clones) the repository at ``rev`` now, so a bad URL or revision fails here
        path = path.strip("/") or "/"
        if not fs.exists(path):
            raise DataError(f"{where}: path not found in the repository at that revision")
        infos = {path: fs.info(path)} if fs.isfile(path) else fs.find(path, detail=True)
    except DataError:
        raise
    except Exception as exc:  # dvc and scmrepo raise many types (SCMError, RevError, CloneError, ...)
        raise DataError(f"{where}: cannot open the DVC repository or revision ({type(exc).__name__}: {exc})") from None
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
                raise DataError(f"{repo}:{name}@{rev or 'HEAD'}: download failed ({type(exc).__name__}: {exc}); "
                                "check the DVC remote and its credentials") from None

        size = info.get("size")
        files.append(RemoteFile(rel, int(size) if size is not None else None, version, f"{repo}:{name}@{rev or 'HEAD'}",
                                download, md5))
    if not files:
        raise DataError(f"{where}: no files at this path")
    return files


def _list_local(source: str) -> list[RemoteFile]:
    root = Path(source.removeprefix("file://")).expanduser()
    if not root.exists():
        raise DataError(f"{root}: source folder not found")

    def entry(path: Path, rel: str) -> RemoteFile:
        st = path.stat()
        return RemoteFile(rel, st.st_size, f"local:{st.st_size}:{st.st_mtime_ns}", str(path),
                          lambda dest, path=path: shutil.copyfile(path, dest))

    if root.is_file():
        return [entry(root, root.name)]
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(p.startswith(".") for p in rel.split("/")) and rel != MANIFEST_FILE:
            files.append(entry(path, rel))
    if not files:
        raise DataError(f"{root}: source folder is empty")
    return files


# --------------------------------------------------------------------------------------------- download + verify


def _hash_file(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def _download_verified(item: RemoteFile, folder: Path) -> tuple[Path, str]:
    """Download to a temporary file in ``folder``, check size and md5; returns (temp path, sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fetch-", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        item.download(tmp_path)
        size = tmp_path.stat().st_size
        if item.size is not None and size != item.size:
            raise DataError(f"{item.origin}: downloaded {size} bytes but the source lists {item.size}; "
                            "the transfer was incomplete, nothing was written")
        md5, sha = _hash_file(tmp_path)
        if item.md5 and md5 != item.md5:
            raise DataError(f"{item.origin}: md5 {md5} of the downloaded bytes differs from the source's {item.md5}; "
                            "the transfer was corrupted, nothing was written")
        return tmp_path, sha
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _archive_members(path: Path, origin: str, stack: ExitStack) -> list[tuple[str, Callable[[], Any]]]:
    """Check every member before extracting any: only regular files at safe relative paths.

    Returns (relative path, opener of a binary stream) per regular file.
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
                members.append((rel, lambda info=info: zf.open(info)))
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
        members.append((rel, lambda member=member: tf.extractfile(member)))
    return members


def _atomic_write_stream(stream, dest: Path) -> str:
    """Copy a binary stream to ``dest`` through a temporary sibling; returns the sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".fetch-", suffix=".tmp")
    sha = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as fh:
            while block := stream.read(_CHUNK):
                sha.update(block)
                fh.write(block)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha.hexdigest()


def _extract_archive(members, base: str, output: Path, item: RemoteFile, files: dict, origins: dict) -> list[str]:
    """Write checked members under ``output/base``, each atomically; record them. Returns their paths."""
    targets = [(f"{base}/{rel}" if base else rel, opener) for rel, opener in members]
    for rel, _ in targets:
        _inside(output, rel)
    for rel, opener in targets:
        with opener() as stream:
            sha = _atomic_write_stream(stream, output / rel)
        files[rel] = _record(output, rel, f"archive:{item.version}", sha, f"{item.origin} (member {rel})")
        origins[rel] = f"{item.origin} (member {rel})"
    return [rel for rel, _ in targets]


# --------------------------------------------------------------------------------------------- the step


def _read_state(output: Path) -> dict[str, Any]:
    import json

    try:
        state = json.loads((output / STATE_FILE).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _unchanged(output: Path, record: dict | None, version: str) -> bool:
    if not record or record.get("version") != version:
        return False
    path = output / record["rel"]
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == record["size"] and st.st_mtime_ns == record["mtime_ns"]


def _record(output: Path, rel: str, version: str, sha: str, origin: str) -> dict[str, Any]:
    st = (output / rel).stat()
    return {"rel": rel, "version": version, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
            "origin": origin}


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
    if source.startswith("s3://"):
        kind, items = "s3", _list_s3(source)
    elif repo:
        kind, items = "dvc", _list_dvc(repo, source, rev)
    else:
        kind, items = "local", _list_local(source)
    output_path.mkdir(parents=True, exist_ok=True)
    state = _read_state(output_path)
    old_files: dict[str, dict] = state.get("files", {})
    old_archives: dict[str, dict] = state.get("archives", {})
    files: dict[str, dict] = {}
    archives: dict[str, dict] = {}
    origins: dict[str, str] = {}
    downloaded = unchanged = 0

    plain = [it for it in items if not it.is_archive]
    for it in plain:
        _inside(output_path, it.rel)

    def fetch_one(it: RemoteFile) -> tuple[RemoteFile, dict, bool]:
        record = old_files.get(it.rel)
        if _unchanged(output_path, record, it.version):
            return it, record, False
        dest = output_path / it.rel
        tmp, sha = _download_verified(it, dest.parent)
        os.replace(tmp, dest)
        return it, _record(output_path, it.rel, it.version, sha, it.origin), True

    with ThreadPoolExecutor(max_workers=_DOWNLOAD_THREADS) as pool:
        for it, record, fresh in pool.map(fetch_one, plain):
            files[it.rel] = record
            origins[it.rel] = it.origin
            downloaded += fresh
            unchanged += not fresh

    for it in (it for it in items if it.is_archive):
        prev = old_archives.get(it.rel)
        base = str(PurePosixPath(it.rel).parent)
        base = "" if base == "." else base
        if prev and prev.get("version") == it.version and all(
                _unchanged(output_path, old_files.get(m), old_files.get(m, {}).get("version")) for m in prev["members"]):
            archives[it.rel] = prev
            for m in prev["members"]:
                files[m], origins[m] = old_files[m], f"{it.origin} (member {m})"
            unchanged += 1
            continue
        tmp, _ = _download_verified(it, output_path / ".fetch-tmp")
        try:
            with ExitStack() as stack:
                names = _extract_archive(_archive_members(tmp, it.origin, stack), base, output_path, it, files,
                                         origins)
        finally:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(output_path / ".fetch-tmp", ignore_errors=True)
        archives[it.rel] = {"version": it.version, "members": names}
        downloaded += 1

    removed = 0
    for rel in set(old_files) - set(files):  # gone from the source since the last fetch
        (output_path / rel).unlink(missing_ok=True)
        removed += 1
    atomic_write_json(output_path / STATE_FILE, {"source": source, "repo": repo, "rev": rev, "files": files,
                                                 "archives": archives})

    manifest_path = Path(manifest).expanduser().absolute() if manifest else output_path / MANIFEST_FILE
    info = build_manifest(output_path, files, source=source, repo=repo, rev=rev, kind=kind)
    if validate:
        info["categories"] = validate_dataset(output_path, categories, origins)
    atomic_write_json(manifest_path, info)
    return {
        "output": str(output_path), "manifest": str(manifest_path), "categories": sorted(info.get("categories", {})),
        "downloaded": downloaded, "unchanged": unchanged, "removed": removed, "files": len(info["files"]),
        "bytes": info["total_bytes"], "dataset_sha256": info["dataset_sha256"],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def build_manifest(root: Path, known: dict[str, dict], **source: str) -> dict[str, Any]:
    """Every file under ``root`` (hidden files and the manifest excepted) with its size and sha256."""
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or any(p.startswith(".") for p in rel.split("/")) or rel == MANIFEST_FILE:
            continue
        record = known.get(rel)
        st = path.stat()
        if record and record["size"] == st.st_size and record["mtime_ns"] == st.st_mtime_ns:
            sha = record["sha256"]
        else:
            sha = _hash_file(path)[1]
        entries.append({"path": rel, "size": st.st_size, "sha256": sha})
    digest = hashlib.sha256("".join(f"{e['path']}\0{e['sha256']}\n" for e in entries).encode()).hexdigest()
    return {"source": source, "files": entries, "total_files": len(entries),
            "total_bytes": sum(e["size"] for e in entries), "dataset_sha256": digest}


def validate_dataset(root: Path, categories: list[str] | None, origins: dict[str, str] | None = None) -> dict:
    """Run the foundation's checks on each category; returns image counts per split.

    A DataError names the local file; ``origins`` adds where it came from (the S3 key or repository path).
    """
    from adcore.data.mvtec import list_categories, load_category

    names = list(categories) if categories else list_categories(root)
    if not names:
        raise DataError(f"{root}: no category folders with train/good after the fetch (expected MVTec layout "
                        "<category>/train/good, <category>/test/<defect>)")
    counts: dict[str, Any] = {}
    for name in names:
        try:
            cat = load_category(root, name, check_images=True)
        except DataError as exc:
            msg = str(exc)
            for rel, origin in (origins or {}).items():
                if msg.startswith(str(root / rel)):
                    msg = f"{msg} [fetched from {origin}]"
                    break
            raise DataError(msg) from None
        per_split: dict[str, int] = {"train/good": len(cat.train)}
        for s in cat.test:
            per_split[f"test/{s.defect}"] = per_split.get(f"test/{s.defect}", 0) + 1
        counts[name] = {
            "splits": per_split,
            "train": len(cat.train),
            "test": len(cat.test),
            "test_good": sum(s.label == 0 for s in cat.test),
            "test_anomalous": sum(s.label == 1 for s in cat.test),
            "masks": sum(s.mask_path is not None for s in cat.test),
            "defects": cat.defects,
        }
    return counts


def split_fingerprint(data_root: str | Path, category: str, exclude: Iterable[str] = ()) -> str:
    """Fingerprint of the evaluated test split (images and masks, by content, less ``exclude``, e.g. PRN's seen
    anomalies): metrics are comparable only when equal."""
    from adcore.data.mvtec import load_category
    from adcore.evaluation import exclude_seen
    from adcore.features import file_sha256

    root = Path(data_root)
    cat = load_category(root, category, check_images=False)
    digest = hashlib.sha256()
    for s in exclude_seen(cat.test, exclude):
        digest.update(f"{Path(s.path).relative_to(root / category).as_posix()}\0{s.label}\0"
                      f"{file_sha256(s.path)}\0{file_sha256(s.mask_path) if s.mask_path else ''}\n".encode())
    return digest.hexdigest()
