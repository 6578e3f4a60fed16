"""Hostile input to the nightly steps: nothing lost, nothing leaked, nothing trusted blindly.

Each refusal is checked three ways: the exit code (``python -m components`` exits 2) or exception type, a one-line
message naming the file or setting, and an unchanged disk (a snapshot of every path, size and content hash under
the test's folder before and after).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from adcore.errors import DataError
from components.cli import main
from components.fetch import STATE_FILE, fetch_dataset
from components.secrets import mask_secrets
from components.tracking import TrackingError, check_reachable, model_fingerprint

TOKEN = "tok3n-Sup3rSecret"


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root`` (symbolic links not followed): size and sha256 of files, -1 for folders/links."""
    out: dict[str, tuple[int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or path.is_dir():
                out[rel] = (-1, os.readlink(path) if path.is_symlink() else "")
            else:
                out[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def fetched(tiny_category, tmp_path):
    """A local source (one tiny category) fetched once into ``out``; ``outside`` holds a file the fetch must keep."""
    src = tmp_path / "src"
    tiny_category("part", root=src)
    out = tmp_path / "out"
    fetch_dataset(str(src), str(out))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_text("keep me")
    return src, out


# --------------------------------------------------------------------------------------------- fetch: state file


def _edit_state(out: Path, tmp_path: Path, case: str) -> str:
    """Add a hostile entry to the state file; returns the entry as the message must name it."""
    state = json.loads((out / STATE_FILE).read_text())
    record = next(iter(state["files"].values()))
    if case == "dotdot":
        rel = "../outside/victim.txt"
    elif case == "absolute":
        rel = str(tmp_path / "outside" / "victim.txt")
    elif case == "symlink":
        (out / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
        rel = "link/victim.txt"
    else:  # an archive member
        rel = "../outside/victim.txt"
        state["archives"]["part/old.tar.gz"] = {"version": "gone", "members": [rel]}
        (out / STATE_FILE).write_text(json.dumps(state))
        return rel
    state["files"][rel] = {**record, "rel": rel}
    (out / STATE_FILE).write_text(json.dumps(state))
    return rel


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "archive_member"])
def test_state_file_entries_outside_the_output_are_refused(fetched, tmp_path, capsys, case):
    src, out = fetched
    rel = _edit_state(out, tmp_path, case)
    before = snapshot(tmp_path)
    code, err = cli(["fetch", str(src), str(out)], capsys)
    line = one_line_error(err)
    assert code == 2
    assert line.startswith(f"error: {out / STATE_FILE}: entry in ") and repr(rel) in line
    assert "refused, nothing was written or deleted" in line
    assert (tmp_path / "outside" / "victim.txt").read_text() == "keep me"
    assert snapshot(tmp_path) == before


def test_state_file_that_is_malformed_is_refused(fetched, tmp_path):
    src, out = fetched
    state = json.loads((out / STATE_FILE).read_text())
    state["files"]["part/x.png"] = "not a record"
    (out / STATE_FILE).write_text(json.dumps(state))
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=rf"^{out / STATE_FILE}: entry files\['part/x.png'\] is malformed"):
        fetch_dataset(str(src), str(out))
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- fetch: archives


def _bomb_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/good/huge.png", bytes(40 * 1024 * 1024))
    return buf.getvalue()


ARCHIVE_CASES = {
    # name -> (archive file name, bytes, extra CLI args, what the message must contain)
    "unsafe member": ("part/evil.tar.gz", lambda: tar_gz({"ok.png": b"x", "../../../evil.png": b"x"}), [],
                      "unsafe archive member: refusing '../../../evil.png': '..' in the path"),
    "bomb by ratio": ("part/bomb.zip", _bomb_zip, [], "unpacks to 41943040 bytes"),
    "over --max-archive-bytes": ("part/big.tar.gz", lambda: tar_gz({"train/good/x.png": bytes(5000)}),
                                 ["--max-archive-bytes", "1000"],
                                 "archive unpacks to 5000 bytes, over the limit of 1000 bytes"),
}


@pytest.mark.parametrize("case", list(ARCHIVE_CASES))
def test_refused_archive_leaves_the_dataset_as_it_was(fetched, tmp_path, capsys, case):
    """A changed plain file and a bad archive in the source: nothing of either reaches the output."""
    src, out = fetched
    name, make, extra, expected = ARCHIVE_CASES[case]
    (src / name).write_bytes(make())
    changed = src / "part/train/good/000.png"
    changed.write_bytes((src / "part/train/good/001.png").read_bytes())  # a new version of a plain file
    before = snapshot(tmp_path)
    code, err = cli(["fetch", str(src), str(out), *extra], capsys)
    line = one_line_error(err)
    assert code == 2 and line.startswith(f"error: {src / name}: ") and expected in line, line
    assert "nothing was written" in line or "would write outside" in line
    assert snapshot(tmp_path) == before  # the plain file was not replaced, no temporary file is left
    assert not (tmp_path / "evil.png").exists()


def test_ratio_limit_is_a_setting_and_a_genuine_archive_passes(fetched, tmp_path):
    src, out = fetched
    (src / "part/bomb.zip").write_bytes(_bomb_zip())
    with pytest.raises(DataError, match=r"bomb.zip: archive of \d+ bytes unpacks to 41943040 bytes \(\d+x, over the "
                                        r"limit of 200x"):
        fetch_dataset(str(src), str(out), validate=False)
    res = fetch_dataset(str(src), str(out), validate=False, max_archive_ratio=1e6)
    assert (out / "part/train/good/huge.png").stat().st_size == 40 * 1024 * 1024 and res["downloaded"] == 1


@pytest.mark.parametrize("setting, value", [("--max-archive-bytes", "0"), ("--max-archive-ratio", "-1")])
def test_archive_limits_must_be_positive(fetched, tmp_path, capsys, setting, value):
    src, out = fetched
    before = snapshot(tmp_path)
    code, err = cli(["fetch", str(src), str(out), setting, value], capsys)
    assert code == 2 and setting.lstrip("-").replace("-", "_") in one_line_error(err)
    assert snapshot(tmp_path) == before


def test_a_killed_fetch_leaves_only_staging_which_the_next_fetch_cleans(fetched, tmp_path, monkeypatch):
    src, out = fetched
    staging = out / ".adcore-fetch-staging"
    staging.mkdir()
    (staging / "half-written").write_bytes(b"x" * 10)  # what a fetch killed mid-download leaves
    (src / "part/train/good/000.png").write_bytes((src / "part/train/good/001.png").read_bytes())
    before = {k: v for k, v in snapshot(out).items() if not k.startswith(".adcore-fetch-staging")}

    from components.fetch.sources import RemoteFile

    def interrupted(self, path):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(RemoteFile, "download_verified", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset(str(src), str(out))
    assert snapshot(out) == before  # the old leftovers are gone and the interrupted download left nothing
    monkeypatch.undo()
    res = fetch_dataset(str(src), str(out))
    assert res["downloaded"] == 1 and not staging.exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("text, masked", [
    ("http://alice:s3cret@mlflow:5000", "http://alice:***@mlflow:5000"),
    (f"https://{TOKEN}@github.com/o/r.git", "https://***@github.com/o/r.git"),
    (f"https://oauth2:{TOKEN}@gitlab.com/o/r.git: clone failed", "https://oauth2:***@gitlab.com/o/r.git: clone failed"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA&X-Amz-Signature=abc123&x-id=GetObject",
     "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&x-id=GetObject"),
    (f"https://h/api?token={TOKEN}#frag", "https://h/api?token=***#frag"),
    ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("repo:data@v1 and s3://bucket/prefix", "repo:data@v1 and s3://bucket/prefix"),
])
def test_mask_secrets(text, masked):
    assert mask_secrets(text) == masked


class _AuthServer(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append(self.headers.get("Authorization"))
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def auth_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthServer)
    _AuthServer.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", _AuthServer.seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("where", ["uri", "environment"])
def test_reachability_check_sends_credentials_as_a_header(auth_server, monkeypatch, where):
    """Before: the host name became 'alice:s3cret@127.0.0.1' and the check reported a working server as down."""
    host, seen = auth_server
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    if where == "uri":
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        check_reachable(f"http://alice:s3cret@{host}/")
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
        check_reachable(f"http://{host}")
    assert seen == ["Basic " + base64.b64encode(b"alice:s3cret").decode()]


def test_tracking_uri_password_never_printed(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://alice:s3cret@127.0.0.1:{port}"
    with pytest.raises(TrackingError) as exc:
        check_reachable(uri, saved="models/x")
    message = str(exc.value)
    assert "s3cret" not in message and message.startswith(f"MLflow tracking server http://alice:***@127.0.0.1:{port} "
                                                          "cannot be reached (")
    # through the CLI (register checks the metrics file first, so give it a valid one)
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x")
    (tmp_path / "metrics.json").write_text(json.dumps({"image_auroc": 0.9, "model_sha256": model_fingerprint(model)}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, err = cli(["register", str(model), str(tmp_path / "metrics.json"), "tile", "patchcore"], capsys)
    assert code == 2 and "s3cret" not in err and "alice:***@" in one_line_error(err)


def test_dvc_repository_token_never_printed(tmp_path):
    # a subprocess: dvc binds its log handler to the stderr of the process that first imports it
    import subprocess
    import sys

    repo = f"https://oauth2:{TOKEN}@127.0.0.1:1/data.git"
    proc = subprocess.run([sys.executable, "-m", "components", "fetch", "data", str(tmp_path / "out"), "--repo", repo],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 2 and TOKEN not in proc.stderr + proc.stdout
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: https://oauth2:***@127.0.0.1:1/data.git:data@HEAD: cannot open the DVC "
                           "repository or revision"), proc.stderr


def test_dvc_repository_token_not_in_manifest_or_state(fetched, tmp_path, monkeypatch):
    from components.fetch import mirror
    from components.fetch.sources import list_local

    src, _ = fetched
    repo = f"https://oauth2:{TOKEN}@git.example.com/data.git"
    monkeypatch.setattr(mirror, "source_kind", lambda source, repo="": "dvc")
    monkeypatch.setattr(mirror, "list_source", lambda source, repo="", rev="": list_local(str(src)))
    res = fetch_dataset("data", str(tmp_path / "dvc-out"), repo=repo, rev="v1")
    for path in (Path(res["manifest"]), tmp_path / "dvc-out" / STATE_FILE):
        text = path.read_text()
        assert TOKEN not in text and "https://oauth2:***@git.example.com/data.git" in text, path


# --------------------------------------------------------------------------------------------- register


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A model directory as register sees it (its fingerprint is a hash of the two files); the registry would be
    ./mlflow.db in the test folder, so the snapshot shows that nothing was registered."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text('{"format_version": 1}')
    (model / "model.safetensors").write_bytes(b"weights")
    return model


METRICS_CASES = {
    # name -> (metrics written, what the message must say after the file name)
    "another model's metrics": ({"image_auroc": 0.99, "model_sha256": "0" * 64},
                                "model_sha256 0000000000000000... is not the content hash of"),
    "forged image_auroc=5.0": ({"image_auroc": 5.0}, "image_auroc = 5.0 is not a number in [0, 1] (or null)"),
    "negative pixel_auroc": ({"image_auroc": 0.9, "pixel_auroc": -0.1}, "pixel_auroc = -0.1 is not a number in"),
    "string metric": ({"image_auroc": "0.99"}, "image_auroc = '0.99' is not a number in"),
    "boolean metric": ({"image_auroc": True}, "image_auroc = True is not a number in"),
    "NaN metric": ({"image_auroc": float("nan")}, "image_auroc = nan is not a number in"),
    "not an object": ([0.99], "not a JSON object of evaluation metrics"),
}


@pytest.mark.parametrize("case", list(METRICS_CASES))
def test_register_refuses_metrics_it_cannot_trust(fake_model, tmp_path, capsys, case):
    written, expected = METRICS_CASES[case]
    if isinstance(written, dict) and "model_sha256" not in written:
        written = {**written, "model_sha256": model_fingerprint(fake_model)}
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(written))
    before = snapshot(tmp_path)
    code, err = cli(["register", str(fake_model), str(metrics), "tile", "patchcore"], capsys)
    line = one_line_error(err)
    assert code == 2 and line.startswith(f"error: {metrics}: ") and expected in line, line
    if case == "another model's metrics":
        assert str(fake_model) in line
    assert snapshot(tmp_path) == before and not (tmp_path / "mlflow.db").exists()


def test_champion_without_metric_tags_is_re_evaluated_not_a_blocker(demo_root, tmp_path, monkeypatch):
    """Before: a champion whose metric tags were gone blocked every promotion ('has no image_auroc to compare
    with'), and metrics without a model hash promoted. Now: re-evaluated given data_root, else 're-evaluate
    required'; unverified metrics never promote."""
    from mlflow import MlflowClient

    from components.evaluate import evaluate
    from components.register import register_model
    from components.train import train

    # an absolute URI: MLflow caches stores by URI, so a relative sqlite:///mlflow.db would be another test's
    uri = f"sqlite:///{tmp_path / 'hostile-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tr = train("patchcore", str(demo_root), "tile", str(tmp_path / "a"), track=False,
               overrides=["backbone.weights=random", "data.image_size=32"])
    ev = evaluate(tr["model_dir"], str(demo_root), "tile", str(tmp_path / "eval"), track=False)
    metrics = json.loads(Path(ev["metrics_json"]).read_text())
    assert metrics["model_sha256"] == model_fingerprint(tr["model_dir"])  # evaluate records whose metrics they are

    # metrics that do not say which model they score never promote, even into an empty registry
    unverified = tmp_path / "unverified.json"
    unverified.write_text(json.dumps({k: v for k, v in metrics.items() if k != "model_sha256"}))
    res = register_model(tr["model_dir"], str(unverified), "tile", "patchcore", prefix="h-unverified")
    assert res["decision"] == "rejected" and res["reasons"].endswith("unverified metrics never promote")

    first = register_model(tr["model_dir"], ev["metrics_json"], "tile", "patchcore", prefix="h")
    assert first["decision"] == "promoted"
    client = MlflowClient(uri)
    for key in [k for k in client.get_model_version("h-tile-patchcore", "1").tags if k.startswith("metric.")]:
        client.delete_model_version_tag("h-tile-patchcore", "1", key)

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "model.json").write_text((tmp_path / "a" / "model.json").read_text() + "\n")
    b_metrics = {**metrics, "image_auroc": 1.0, "model_sha256": model_fingerprint(tmp_path / "b")}
    (tmp_path / "b.json").write_text(json.dumps(b_metrics))
    for forged in ("deleted", "5.0"):  # a missing tag, and one forged out of [0, 1], count alike
        if forged != "deleted":
            client.set_model_version_tag("h-tile-patchcore", "1", "metric.image_auroc", forged)
        res = register_model(str(tmp_path / "b"), str(tmp_path / "b.json"), "tile", "patchcore", prefix="h")
        assert res["decision"] == "rejected" and res["champion_version"] == 1, res
        assert res["reasons"].startswith("champion v1 has no valid metric.image_auroc tag and no data_root was given "
                                         "to re-evaluate it: re-evaluate required (give data_root, --data-root)")
    # re-evaluated, the champion is compared on evidence: b's own per-image scores (the same predictions, whatever
    # b.json claims) against the champion's, a tie that the gate rejects
    shutil.copy(Path(ev["metrics_json"]).with_name("scores.csv"), tmp_path / "scores.csv")
    res = register_model(str(tmp_path / "b"), str(tmp_path / "b.json"), "tile", "patchcore", prefix="h",
                         data_root=str(demo_root))
    assert res["reasons"].startswith("champion v1 had no valid metric.image_auroc tag and was re-evaluated on this "
                                     f"test split; image_auroc {ev['image_auroc']:.4f} does not beat champion v1's "
                                     f"{ev['image_auroc']:.4f} by the margin 0.0: +0.0000, 95% CI [+0.0000, +0.0000]")
    assert res["decision"] == "rejected" and res["champion_version"] == 1
