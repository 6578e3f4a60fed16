"""components.fetch against a real S3 endpoint (moto's server on 127.0.0.1), a DVC repository and local folders."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from adcore.errors import ConfigError, DataError
from components.fetch import fetch_dataset, safe_relpath

BUCKET = "adcore-data"


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    return s3_endpoint


def _client():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")


def upload_folder(client, folder: Path, bucket: str, prefix: str) -> int:
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    n = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
            n += 1
    return n


def test_s3_fetch_manifest_rerun_and_changes(s3_env, demo_root, tmp_path):
    client = _client()
    n = upload_folder(client, demo_root / "tile", BUCKET, "v1/tile")
    out = tmp_path / "data"

    first = fetch_dataset(f"s3://{BUCKET}/v1", str(out))
    assert first["downloaded"] == n and first["unchanged"] == 0 and first["categories"] == ["tile"]
    manifest = json.loads(Path(first["manifest"]).read_text())
    assert manifest["total_files"] == n
    entry = next(e for e in manifest["files"] if e["path"] == "tile/train/good/000.png")
    raw = (demo_root / "tile/train/good/000.png").read_bytes()
    import hashlib

    assert entry["size"] == len(raw) and entry["sha256"] == hashlib.sha256(raw).hexdigest()
    counts = manifest["categories"]["tile"]
    assert counts["train"] == 16 and counts["test_good"] == 6 and counts["splits"]["train/good"] == 16
    assert counts["test_anomalous"] == counts["masks"] > 0

    again = fetch_dataset(f"s3://{BUCKET}/v1", str(out))
    assert again["downloaded"] == 0 and again["unchanged"] == n and again["dataset_sha256"] == first["dataset_sha256"]

    # one image changes, one disappears: only that one is fetched, the other removed
    client.put_object(Bucket=BUCKET, Key="v1/tile/train/good/001.png",
                      Body=(demo_root / "tile/train/good/002.png").read_bytes())
    client.delete_object(Bucket=BUCKET, Key="v1/tile/train/good/003.png")
    third = fetch_dataset(f"s3://{BUCKET}/v1", str(out))
    assert third["downloaded"] == 1 and third["removed"] == 1 and third["unchanged"] == n - 2
    assert (out / "tile/train/good/001.png").read_bytes() == (demo_root / "tile/train/good/002.png").read_bytes()
    assert not (out / "tile/train/good/003.png").exists()
    assert not list(out.rglob("*.tmp"))


def test_s3_faults(s3_env, demo_root, tmp_path, monkeypatch):
    client = _client()
    upload_folder(client, demo_root / "tile", BUCKET, "faults/tile")

    with pytest.raises(DataError, match="bucket 'no-such-bucket' does not exist at http://127.0.0.1:.*NoSuchBucket"):
        fetch_dataset("s3://no-such-bucket/data", str(tmp_path / "a"))

    with pytest.raises(DataError, match="no objects under this prefix"):
        fetch_dataset(f"s3://{BUCKET}/nothing-here", str(tmp_path / "a"))

    # a corrupt image in the bucket: the message names the local file and the S3 object
    client.put_object(Bucket=BUCKET, Key="faults/tile/test/good/000.png", Body=b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"tile/test/good/000.png: unreadable image .*"
                                        rf"\[fetched from s3://{BUCKET}/faults/tile/test/good/000.png\]"):
        fetch_dataset(f"s3://{BUCKET}/faults", str(tmp_path / "b"))

    # keys that would climb out of the output folder are refused before anything is written
    client.put_object(Bucket=BUCKET, Key="evil/tile/../../escape.png", Body=b"x")
    with pytest.raises(DataError, match=r"refusing 'tile/\.\./\.\./escape\.png': '\.\.' in the path"):
        fetch_dataset(f"s3://{BUCKET}/evil", str(tmp_path / "c"))
    client.put_object(Bucket=BUCKET, Key="abs//etc/passwd", Body=b"x")
    with pytest.raises(DataError, match=r"refusing '/etc/passwd': absolute path"):
        fetch_dataset(f"s3://{BUCKET}/abs", str(tmp_path / "d"))
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "c").exists()

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="S3: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        fetch_dataset(f"s3://{BUCKET}/faults", str(tmp_path / "e"))


def _tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def test_archives_safe_and_unsafe(s3_env, demo_root, tmp_path):
    client = _client()
    client.create_bucket(Bucket="adcore-archives")
    files = {f"tile/{p.relative_to(demo_root / 'tile').as_posix()}": p.read_bytes()
             for p in sorted((demo_root / "tile").rglob("*.png"))}
    client.put_object(Bucket="adcore-archives", Key="good/tile.tar.gz", Body=_tar_bytes(files))
    res = fetch_dataset("s3://adcore-archives/good", str(tmp_path / "ok"))
    assert res["categories"] == ["tile"] and res["files"] == len(files)
    assert fetch_dataset("s3://adcore-archives/good", str(tmp_path / "ok"))["downloaded"] == 0

    client.put_object(Bucket="adcore-archives", Key="dotdot/tile.tar.gz",
                      Body=_tar_bytes({"tile/ok.png": b"x", "../../evil.png": b"x"}))
    with pytest.raises(DataError, match=r"s3://adcore-archives/dotdot/tile.tar.gz: unsafe archive member: "
                                        r"refusing '\.\./\.\./evil\.png': '\.\.' in the path"):
        fetch_dataset("s3://adcore-archives/dotdot", str(tmp_path / "x"))
    assert not (tmp_path / "x" / "tile" / "ok.png").exists()  # nothing extracted from a refused archive

    client.put_object(Bucket="adcore-archives", Key="link/tile.tar.gz",
                      Body=_tar_bytes({"tile/ok.png": b"x"}, links={"tile/passwd": "/etc/passwd"}))
    with pytest.raises(DataError, match=r"unsafe archive: member 'tile/passwd' is a link to '/etc/passwd'"):
        fetch_dataset("s3://adcore-archives/link", str(tmp_path / "y"))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("/abs/evil.png", b"x")
    client.put_object(Bucket="adcore-archives", Key="zip/data.zip", Body=buf.getvalue())
    with pytest.raises(DataError, match=r"unsafe archive member: refusing '/abs/evil.png': absolute path"):
        fetch_dataset("s3://adcore-archives/zip", str(tmp_path / "z"))


def test_local_folder_and_safe_relpath(demo_root, tmp_path):
    res = fetch_dataset(str(demo_root), str(tmp_path / "copy"), categories=["widget"])
    assert res["categories"] == ["widget"] and res["downloaded"] == res["files"] > 0
    assert fetch_dataset(str(demo_root), str(tmp_path / "copy"), categories=["widget"])["downloaded"] == 0
    assert safe_relpath("a/./b.png", "x") == "a/b.png"
    for bad in ("../a", "a/../../b", "/etc/x", "C:/x", "a\\..\\b", ""):
        with pytest.raises(DataError, match="refusing"):
            safe_relpath(bad, "x")


def test_list_source_lists_s3_and_local_alike(s3_env, demo_root, tmp_path):
    from components.fetch import list_source

    local = list_source(str(demo_root / "tile"))
    upload_folder(_client(), demo_root / "tile", BUCKET, "listing/tile")
    remote = list_source(f"s3://{BUCKET}/listing")
    assert sorted(f.rel for f in remote) == sorted(f"tile/{f.rel}" for f in local)
    assert all(f.md5 and f.version == f"etag:{f.md5}" for f in remote)  # single-part uploads: the ETag is the md5
    with pytest.raises(DataError, match="source folder not found"):
        list_source(str(tmp_path / "nope"))


def test_a_short_or_corrupt_download_is_never_renamed_into_place(tmp_path):
    from adcore.io import atomic_path
    from components.fetch import RemoteFile

    def write_abc(path: Path) -> None:
        path.write_bytes(b"abc")

    corrupt = RemoteFile("a.png", 3, "v1", "src:a.png", write_abc, md5="0" * 32)
    short = RemoteFile("a.png", 4, "v1", "src:a.png", write_abc)
    for item, message in ((corrupt, r"src:a.png: md5 \w+ of the downloaded bytes differs"),
                          (short, r"src:a.png: downloaded 3 bytes but the source lists 4")):
        with pytest.raises(DataError, match=message), atomic_path(tmp_path / "a.png") as tmp:
            item.download_verified(tmp)
    assert list(tmp_path.iterdir()) == []


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"


def test_dvc_fetch_from_git_repo_with_s3_remote(s3_env, demo_root, tmp_path):
    """A git repo whose DVC remote lives on the same S3 endpoint; fetch two revisions."""
    client = _client()
    client.create_bucket(Bucket="adcore-dvc")
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    from dvc.repo import Repo

    _run(["git", "init", "-q", "-b", "main"], repo, env)
    Repo.init(str(repo))
    dvc_repo = Repo(str(repo))
    with dvc_repo.config.edit() as conf:
        conf["remote"]["s3"] = {"url": "s3://adcore-dvc/store", "endpointurl": s3_env}
        conf["core"]["remote"] = "s3"
    shutil.copytree(demo_root / "tile", repo / "data" / "tile")
    dvc_repo.add(str(repo / "data"))
    dvc_repo.push()
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-q", "-m", "v1"], repo, env)
    _run(["git", "tag", "v1"], repo, env)
    (repo / "data/tile/train/good/000.png").unlink()
    dvc_repo.add(str(repo / "data"))
    dvc_repo.push()
    dvc_repo.close()
    _run(["git", "commit", "-q", "-am", "v2"], repo, env)
    shutil.rmtree(repo / ".dvc" / "cache")  # the fetch must come from the S3 remote, not the local cache

    out = tmp_path / "fetched"
    v1 = fetch_dataset("data", str(out), repo=str(repo), rev="v1")
    manifest = json.loads(Path(v1["manifest"]).read_text())
    assert manifest["categories"]["tile"]["train"] == 16 and v1["downloaded"] == v1["files"]
    v2 = fetch_dataset("data", str(out), repo=str(repo), rev="main")
    assert v2["downloaded"] == 0 and v2["removed"] == 1
    assert json.loads(Path(v2["manifest"]).read_text())["categories"]["tile"]["train"] == 15

    with pytest.raises(DataError, match=r"data@no-such-rev: cannot open the DVC repository or revision"):
        fetch_dataset("data", str(tmp_path / "bad"), repo=str(repo), rev="no-such-rev")


def test_fetch_downloads_only_the_requested_categories(demo_root, tmp_path):
    res = fetch_dataset(str(demo_root), str(tmp_path / "widget-only"), categories=["widget"])
    files = [p.relative_to(tmp_path / "widget-only").as_posix() for p in (tmp_path / "widget-only").rglob("*")
             if p.is_file() and not p.name.startswith(".") and p.name != "manifest.json"]
    assert files and all(f.startswith("widget/") for f in files)
    assert res["downloaded"] == res["files"] == len(files) and res["categories"] == ["widget"]
    manifest = json.loads(Path(res["manifest"]).read_text())
    assert {e["path"].split("/")[0] for e in manifest["files"]} == {"widget"}
    with pytest.raises(DataError, match="no files for categories nosuch"):
        fetch_dataset(str(demo_root), str(tmp_path / "none"), categories=["widget", "nosuch"])
    assert not (tmp_path / "none").exists()  # refused before anything was written
