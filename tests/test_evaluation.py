"""The evaluated test split: seen anomalies are excluded, and the split fingerprinted, the same under any data root."""

from __future__ import annotations

import shutil
from pathlib import Path

from adcore.data.mvtec import load_category, split_seen_anomalies
from adcore.evaluation import exclude_seen, split_fingerprint


def test_seen_anomalies_stay_excluded_under_another_data_root(demo_root, tmp_path):
    # Training recorded the seen anomalies under its own data root; evaluation may run on another pod's copy.
    roots = [tmp_path / "train-pod" / "data", tmp_path / "eval-pod" / "artifacts" / "dataset"]
    for root in roots:
        shutil.copytree(demo_root / "tile", root / "tile")
    seen, remaining = split_seen_anomalies(load_category(roots[0], "tile").test, 3, 0)
    seen_paths = [str(s.path) for s in seen]  # as fit_info["seen_anomalies"] stores them
    expected = [Path(s.path).relative_to(roots[0]) for s in remaining]

    for root in roots:
        kept = exclude_seen(load_category(root, "tile").test, seen_paths)
        assert [Path(s.path).relative_to(root) for s in kept] == expected

    fingerprints = {split_fingerprint(root, "tile", seen_paths) for root in roots}
    assert len(fingerprints) == 1
    assert fingerprints != {split_fingerprint(roots[1], "tile")}  # no seen image came back into the test set


def test_split_fingerprint_follows_the_content(demo_root, tmp_path):
    shutil.copytree(demo_root / "tile", tmp_path / "tile")
    before = split_fingerprint(tmp_path, "tile")
    good = sorted((tmp_path / "tile" / "test" / "good").iterdir())
    good[0].write_bytes(good[1].read_bytes())
    assert split_fingerprint(tmp_path, "tile") != before
