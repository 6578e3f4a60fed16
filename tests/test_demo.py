"""The procedural demo dataset: layout, determinism, exact masks, visible defects, safe overwriting."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from adcore.data import DEMO_CATEGORIES, generate_demo_dataset, list_categories, load_category, read_image, read_mask
from adcore.data.demo import DEMO_DEFECTS, MARKER, demo_seed_key, render_demo_image
from adcore.errors import DataError

SMALL = {"n_train": 3, "n_test_good": 2, "n_test_defect": 2, "image_size": 48}


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_demo_root_fixture_is_valid_mvtec(demo_root):
    assert list_categories(demo_root) == list(DEMO_CATEGORIES)
    for name in DEMO_CATEGORIES:
        cat = load_category(demo_root, name)
        assert cat.has_masks and len(cat.train) == 16
        assert cat.defects == sorted(DEMO_DEFECTS[name]) and len(cat.defects) >= 3
        assert sum(s.label == 0 for s in cat.test) == 6 and sum(s.label for s in cat.test) == 3 * len(cat.defects)
        assert read_image(cat.train[0].path).shape == (64, 64, 3)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_demo_dataset(tmp_path / "a", seed=5, **SMALL)
    b = generate_demo_dataset(tmp_path / "b", seed=5, **SMALL)
    c = generate_demo_dataset(tmp_path / "c", seed=6, **SMALL)
    assert _tree_hash(a) == _tree_hash(b) != _tree_hash(c)


def test_masks_are_exactly_the_changed_pixels(demo_root):
    """Re-render each defective image without its defect: the stored mask is exactly where they differ."""
    for name in DEMO_CATEGORIES:
        cat = load_category(demo_root, name)
        for s in (s for s in cat.test if s.label == 1):
            index = int(s.path.stem)
            clean, image, mask = render_demo_image(name, s.defect, 64, demo_seed_key(0, name, "test", s.defect, index))
            stored = read_image(s.path)
            stored_mask = read_mask(s.mask_path, (64, 64))
            assert np.array_equal(stored, image)
            assert np.array_equal(stored_mask, np.any(stored != clean, axis=2)), s.path
            assert np.array_equal(stored_mask, mask) and stored_mask.sum() >= 8
            # Visible: a strong mean change inside the mask (sensor noise is ~3 grey levels).
            change = np.abs(stored.astype(int) - clean.astype(int)).max(axis=2)[stored_mask].mean()
            assert change > 25, (s.path, change)


def test_good_images_match_clean_rendering_and_vary(demo_root):
    cat = load_category(demo_root, "widget")
    first = read_image(cat.train[0].path)
    clean, image, mask = render_demo_image("widget", None, 64, demo_seed_key(0, "widget", "train", "good", 0))
    assert np.array_equal(first, clean) and np.array_equal(image, clean) and not mask.any()
    for name in DEMO_CATEGORIES:
        imgs = np.stack([read_image(s.path).astype(float) for s in load_category(demo_root, name).train])
        pairwise = np.abs(imgs[1:] - imgs[:1]).mean(axis=(1, 2, 3))
        assert pairwise.min() > 2.0, name  # no two normal images are (near) copies


def test_defective_images_stand_out_from_normal_variation(demo_root):
    """A crude pixel nearest-neighbour detector already separates most defects: the task is feasible."""
    for name in DEMO_CATEGORIES:
        cat = load_category(demo_root, name)
        bank = np.stack([read_image(s.path).astype(np.float32) for s in cat.train])

        def score(path, bank=bank):
            x = read_image(path).astype(np.float32)
            # per-pixel distance to the nearest normal image, a high percentile over the image
            d = np.abs(bank - x[None]).mean(axis=3)
            return float(np.percentile(d.min(axis=0), 99.5))

        good = [score(s.path) for s in cat.test if s.label == 0]
        bad = [score(s.path) for s in cat.test if s.label == 1]
        auroc = np.mean([[b > g for g in good] for b in bad])
        assert auroc > 0.6, (name, auroc)


def test_overwrite_rules(tmp_path):
    out = tmp_path / "demo"
    generate_demo_dataset(out, categories=("tile",), **SMALL)
    assert (out / MARKER).is_file()
    (out / "stale.txt").write_text("from an older run")
    generate_demo_dataset(out, categories=("widget",), **SMALL)  # a previous demo dataset is replaced
    assert list_categories(out) == ["widget"] and not (out / "stale.txt").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    generate_demo_dataset(empty, categories=("tile",), **SMALL)
    assert list_categories(empty) == ["tile"]

    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine"):
        generate_demo_dataset(precious, **SMALL)
    assert (precious / "thesis.txt").read_text() == "keep me" and len(list(precious.iterdir())) == 1

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DataError, match="file.txt"):
        generate_demo_dataset(a_file, **SMALL)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temp folders left behind


def test_generation_failure_leaves_nothing(tmp_path, monkeypatch):
    import adcore.data.demo as demo

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "_save_png", boom)
    with pytest.raises(RuntimeError):
        generate_demo_dataset(tmp_path / "out", **SMALL)
    assert list(tmp_path.iterdir()) == []
