"""List and download an S3 prefix (AWS or any S3-compatible store such as MinIO).

Settings come from the environment as for any AWS tool: ``AWS_ENDPOINT_URL`` (MinIO and other S3-compatible
stores), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or any other boto3 credential source) and
``AWS_DEFAULT_REGION``. Every S3 failure becomes one line naming the object and the setting to check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from adcore.errors import ConfigError, DataError
from components.fetch.paths import safe_relpath
from components.fetch.sources import DOWNLOAD_THREADS, RemoteFile

_CHUNK = 1 << 20


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
                    max_pool_connections=DOWNLOAD_THREADS * 2)
    return session.client("s3", endpoint_url=endpoint, config=config), endpoint or "AWS S3"


def _s3_error(exc: Exception, where: str, endpoint: str) -> ConfigError | DataError:
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


def list_s3(uri: str) -> list[RemoteFile]:
    """Every object under ``s3://bucket/prefix``; version = ETag, md5 = the ETag where it is one."""
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
