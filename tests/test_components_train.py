"""components.train: a run stopped after some epochs and resumed from its checkpoint equals an uninterrupted run."""

from __future__ import annotations

import json

import torch

from adcore.io import load_tensors
from components.cli import main
from components.train import train

# FRAD trains epochs over cached frozen-backbone features; random weights keep it offline and fast.
TINY = ["backbone.weights=random", "data.image_size=64", "method.frad.epochs=3", "method.frad.channels=16",
        "method.frad.batch_size=8"]


def test_stopped_and_resumed_run_equals_uninterrupted(demo_root, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    full = train("frad", str(demo_root), "tile", str(tmp_path / "full"), overrides=TINY, seed=3, cache_dir=cache,
                 track=False)
    assert full["epochs"] == 3 and full["device"] == "cpu"

    part = train("frad", str(demo_root), "tile", str(tmp_path / "resumed"), overrides=TINY, seed=3,
                 cache_dir=cache, stop_after_epochs=1, track=False)
    assert part["epochs"] == 1 and part["checkpoint_dir"] == str(tmp_path / "resumed") + ".ckpt"
    assert json.loads((tmp_path / "resumed.ckpt" / "checkpoint.json").read_text())["epoch"] == 0
    after_one = load_tensors(tmp_path / "resumed" / "model.safetensors")

    # the pre-empted job restarts through the CLI with --resume and finishes the remaining epochs
    argv = ["train", "frad", str(demo_root), "tile", str(tmp_path / "resumed"), "--seed", "3", "--cache-dir", cache,
            "--resume", "--no-track"] + [a for t in TINY for a in ("--set", t)]
    assert main(argv) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["epochs"] == 3

    a = load_tensors(tmp_path / "full" / "model.safetensors")
    b = load_tensors(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("network.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    hist = [json.loads((tmp_path / d / "model.json").read_text())["fit_info"]["history"] for d in ("full", "resumed")]
    for ha, hb in zip(*hist, strict=True):
        assert {k: v for k, v in ha.items() if k != "epoch_seconds"} == {k: v for k, v in hb.items()
                                                                         if k != "epoch_seconds"}

    # the comparison is not vacuous: the model saved when the job stopped after one epoch differs
    assert any(not torch.equal(after_one[k], a[k]) for k in a if k.startswith("network."))


def test_checkpoints_in_the_object_store_let_a_fresh_pod_resume(demo_root, tmp_path, s3_endpoint, monkeypatch):
    """A pre-empted pod loses its local folder: the checkpoint mirrored to S3 is all the next pod has."""
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="train-ckpt")
    uri = "s3://train-ckpt/checkpoints/tile/frad/abc"
    cache = str(tmp_path / "cache")
    full = train("frad", str(demo_root), "tile", str(tmp_path / "full"), overrides=TINY, seed=3, cache_dir=cache,
                 track=False)
    assert full["resumed_from_epoch"] == -1

    first = train("frad", str(demo_root), "tile", str(tmp_path / "pod1" / "model"), overrides=TINY, seed=3,
                  cache_dir=cache, checkpoint_dir=str(tmp_path / "pod1" / "ckpt"), checkpoint_uri=uri,
                  stop_after_epochs=2, track=False)
    assert first["resumed_from_epoch"] == -1 and first["epochs"] == 2
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="train-ckpt")["Contents"])
    assert keys == ["checkpoints/tile/frad/abc/checkpoint.json",
                    "checkpoints/tile/frad/abc/epoch00001-checkpoint.safetensors"]  # the old epoch's file is gone

    second = train("frad", str(demo_root), "tile", str(tmp_path / "pod2" / "model"), overrides=TINY, seed=3,
                   cache_dir=cache, checkpoint_dir=str(tmp_path / "pod2" / "ckpt"), checkpoint_uri=uri, track=False)
    assert second["resumed_from_epoch"] == 1 and second["epochs"] == 3
    assert "Contents" not in s3.list_objects_v2(Bucket="train-ckpt")  # finished: the copy is removed
    a = load_tensors(tmp_path / "full" / "model.safetensors")
    b = load_tensors(tmp_path / "pod2" / "model" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
