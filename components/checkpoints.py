"""Training checkpoints mirrored to the object store, so that a retried or pre-empted pod resumes at its last epoch.

The training loop writes ``checkpoint.json`` and the tensor file it names into a local folder after every epoch
(``adcore.checkpoint``). :class:`CheckpointMirror` watches that folder from a thread and copies each new checkpoint
to ``s3://bucket/prefix/``: the tensor file first, then the JSON, which marks it complete (the same order as on
disk), so a pod killed mid-upload leaves the previous complete checkpoint. :func:`restore_checkpoint` brings the last
complete one back into a fresh pod's folder before training starts; :func:`clear_checkpoints` removes it once the
model is saved. Credentials and endpoint come from the usual ``AWS_*`` variables (components.fetch.s3_source).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from adcore.checkpoint import META_FILE
from adcore.errors import ConfigError, DataError


def _split(uri: str) -> tuple[str, str]:
    match = re.match(r"^s3://([^/]{3,})/(.+?)/?$", uri)
    if not match:
        raise ConfigError(f"checkpoint_uri {uri!r}: expected s3://bucket/prefix")
    return match.group(1), match.group(2) + "/"


def _client():
    from components.fetch.s3_source import _s3_client

    return _s3_client()


def restore_checkpoint(uri: str, local_dir: str | Path) -> int | None:
    """Download the last complete checkpoint under ``uri`` into ``local_dir``; returns its epoch (None: none)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from adcore.io import atomic_path, atomic_write_json
    from components.fetch.s3_source import _s3_error

    bucket, prefix = _split(uri)
    client, endpoint = _client()
    local = Path(local_dir)
    try:
        try:
            meta = json.loads(client.get_object(Bucket=bucket, Key=prefix + META_FILE)["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        tensor_file = str(meta["tensor_file"])
        if "/" in tensor_file or tensor_file.startswith("."):
            raise DataError(f"{uri}{META_FILE}: tensor_file {tensor_file!r} is not a plain file name; refused")
        local.mkdir(parents=True, exist_ok=True)
        with atomic_path(local / tensor_file) as tmp:
            client.download_file(bucket, prefix + tensor_file, str(tmp))
        atomic_write_json(local / META_FILE, meta)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(exc, f"s3://{bucket}/{prefix}", endpoint) from None
    return int(meta["epoch"])


def clear_checkpoints(uri: str) -> int:
    """Delete every object under ``uri``; returns how many."""
    bucket, prefix = _split(uri)
    client, _ = _client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})
    return len(keys)


class CheckpointMirror:
    """``with CheckpointMirror(uri, local_dir):`` uploads every checkpoint written to ``local_dir`` while inside."""

    def __init__(self, uri: str, local_dir: str | Path, *, interval: float = 0.5) -> None:
        self.bucket, self.prefix = _split(uri)
        self.local = Path(local_dir)
        self.interval = interval
        self.uploaded: list[int] = []  # epochs, in order
        self._client, _ = _client()
        self._seen: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-mirror", daemon=True)
        self.error: Exception | None = None

    def __enter__(self) -> CheckpointMirror:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self.sync()  # the last epoch, written just before training returned
            if self.error is not None:
                raise self.error

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except Exception as exc:  # kept for __exit__: training goes on, the step fails at its end
                self.error = exc

    def sync(self) -> bool:
        """Upload the local checkpoint when it is new; True when something was uploaded."""
        meta_path = self.local / META_FILE
        try:
            st = meta_path.stat()
            meta: dict[str, Any] = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return False  # none yet, or being replaced right now: the next poll sees it
        if self._seen == (st.st_mtime_ns, st.st_size):
            return False
        tensor_path = self.local / str(meta["tensor_file"])
        try:
            self._client.upload_file(str(tensor_path), self.bucket, self.prefix + tensor_path.name)
        except FileNotFoundError:
            return False  # superseded by the next epoch while this one was read
        self._client.put_object(Bucket=self.bucket, Key=self.prefix + META_FILE, Body=json.dumps(meta).encode())
        listed = self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix).get("Contents", [])
        stale = [o["Key"] for o in listed if o["Key"] not in (self.prefix + META_FILE, self.prefix + tensor_path.name)]
        if stale:
            self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in stale]})
        self._seen = (st.st_mtime_ns, st.st_size)
        self.uploaded.append(int(meta["epoch"]))
        return True


__all__ = ["CheckpointMirror", "clear_checkpoints", "restore_checkpoint"]
