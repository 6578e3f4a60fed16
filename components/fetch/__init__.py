"""Fetch a dataset in MVTec layout from S3, a DVC-tracked path in a git repository, or a local folder.

The output folder mirrors the source: a re-run downloads only objects whose version (S3 ETag, DVC md5, local size
and mtime) changed and removes files that disappeared from the source. Every download goes to a temporary file in
the destination folder, is checked (size, and md5 where the source states it) and only then renamed into place,
so an interrupted fetch never leaves a half-written image. Object keys and archive members that would land
outside the output folder are refused before anything is written. The result is validated with the same checks
training uses (``adcore.data.mvtec.load_category``) and described by a manifest: every file with its size and
sha256, and image counts per split.

One module per job: ``paths`` (which names are safe), ``sources`` / ``s3_source`` / ``dvc_source`` (listing and
downloading), ``archives``, ``state`` (incremental state and manifest), ``validate``, ``mirror`` (the step).

S3 settings come from the environment as for any AWS tool: ``AWS_ENDPOINT_URL`` (MinIO and other S3-compatible
stores), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or any other boto3 credential source) and
``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

from components.fetch.mirror import fetch_dataset
from components.fetch.paths import MANIFEST_FILE, safe_relpath
from components.fetch.sources import ARCHIVE_SUFFIXES, RemoteFile, list_source, select_categories
from components.fetch.state import STATE_FILE, build_manifest
from components.fetch.validate import validate_dataset

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MANIFEST_FILE",
    "STATE_FILE",
    "RemoteFile",
    "build_manifest",
    "fetch_dataset",
    "list_source",
    "safe_relpath",
    "select_categories",
    "validate_dataset",
]
