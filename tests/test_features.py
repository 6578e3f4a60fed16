"""Feature cache: hits skip the backbone, every key part invalidates, corrupt entries are rebuilt, memory mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adcore.backbones import FeatureExtractor
from adcore.data.mvtec import Sample
from adcore.data.transforms import ImageTransform
from adcore.features import FeatureCache


class CountingExtractor(FeatureExtractor):
    """A small random ResNet-18 cut at stride 8 and 16 that counts its forward calls."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__("resnet18", (8, 16), "random")
        self.calls = 0
        # A key part a real weight source would give: random weights seeded differently must not share entries.
        self.weights_sha256 = f"random-seed{seed}"

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


@pytest.fixture
def images(tmp_path) -> list[Sample]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    samples = []
    for i in range(5):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path=path, label=0, defect="good", mask_path=None))
    return samples


@pytest.fixture(scope="module")
def extractor() -> CountingExtractor:
    return CountingExtractor()


def _transform(size: int = 32) -> ImageTransform:
    return ImageTransform(size)


def _extract(cache, extractor, samples, transform=None):
    return cache.features(extractor, samples, transform or _transform(), batch_size=2, show_progress=False)


def test_cache_hit_returns_identical_arrays_without_the_backbone(tmp_path, images, extractor):
    cache = FeatureCache(tmp_path / "cache")
    extractor.calls = 0
    first = _extract(cache, extractor, images)
    assert extractor.calls == 3  # 5 images in batches of 2
    assert len(first) == 5 and [s.shape for s in first.stages] == [(5, 128, 4, 4), (5, 256, 2, 2)]
    assert all(s.dtype == np.float16 for s in first.stages)
    entry = tmp_path / "cache" / first.key
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "stage0.npy", "stage1.npy"]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp dirs left

    extractor.calls = 0
    second = _extract(FeatureCache(tmp_path / "cache"), extractor, images)
    assert extractor.calls == 0
    assert second.key == first.key
    for a, b in zip(first.stages, second.stages, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # The cached values are the backbone's features (to fp16 precision), in sample order.
    with torch.no_grad():
        direct = extractor(torch.stack([_transform()(np.asarray(Image.open(s.path))) for s in images]))
    got = second.get([4, 0, 2])
    for d, g in zip(direct, got, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, d[[4, 0, 2]], rtol=2e-3, atol=2e-3)


def test_batches_cover_every_image_once(tmp_path, images, extractor):
    feats = _extract(FeatureCache(None), extractor, images)
    seen = []
    for idx, stages in feats.batches(2, shuffle=True, rng=np.random.default_rng(3)):
        assert stages[0].shape[0] == len(idx)
        torch.testing.assert_close(stages[1], feats.get(idx)[1])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(5)) and seen != list(range(5))
    assert [len(i) for i, _ in feats.batches(2, drop_last=True)] == [2, 2]


def test_every_key_part_invalidates(tmp_path, images, extractor):
    cache = FeatureCache(tmp_path / "cache")
    base = _extract(cache, extractor, images).key

    # A changed image (same path, new content) gives a new key.
    changed = list(images)
    arr = np.asarray(Image.open(images[2].path)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(images[2].path)
    extractor.calls = 0
    after_edit = _extract(cache, extractor, changed)
    assert after_edit.key != base and extractor.calls == 3

    keys = {after_edit.key}
    keys.add(_extract(cache, extractor, images, _transform(48)).key)  # another transform
    keys.add(_extract(cache, extractor, images[:4]).key)  # another image list
    keys.add(_extract(cache, extractor, images[::-1]).key)  # same images, another order
    keys.add(_extract(cache, CountingExtractor(seed=1), images).key)  # other backbone weights
    keys.add(_extract(cache, FeatureExtractor("resnet18", (8,), "random"), images).key)  # another cut
    assert len(keys) == 6 and base not in keys
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 7


@pytest.mark.parametrize("damage", ["truncate_npy", "broken_meta", "missing_stage", "wrong_dtype"])
def test_corrupt_entry_is_rebuilt(tmp_path, images, extractor, damage):
    cache = FeatureCache(tmp_path / "cache")
    good = _extract(cache, extractor, images)
    reference = [np.array(s) for s in good.stages]
    del good  # release the memory maps before damaging the files
    entry = next(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    if damage == "truncate_npy":
        data = (entry / "stage1.npy").read_bytes()
        (entry / "stage1.npy").write_bytes(data[: len(data) // 2])
    elif damage == "broken_meta":
        (entry / "meta.json").write_text('{"format": 1, "key": ')
    elif damage == "missing_stage":
        (entry / "stage0.npy").unlink()
    else:
        np.save(entry / "stage0.npy", reference[0].astype(np.float32))

    extractor.calls = 0
    rebuilt = _extract(cache, extractor, images)
    assert extractor.calls == 3
    for a, b in zip(reference, rebuilt.stages, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert json.loads((entry / "meta.json").read_text())["key"] == rebuilt.key
    extractor.calls = 0
    _extract(cache, extractor, images)
    assert extractor.calls == 0  # and the rebuilt entry is a hit again


def test_entry_with_a_foreign_key_is_not_trusted(tmp_path, images, extractor):
    cache = FeatureCache(tmp_path / "cache")
    key = _extract(cache, extractor, images).key
    entry = tmp_path / "cache" / key
    meta = json.loads((entry / "meta.json").read_text())
    meta["n"] = 99
    (entry / "meta.json").write_text(json.dumps(meta))
    extractor.calls = 0
    _extract(cache, extractor, images)
    assert extractor.calls == 3


def test_in_memory_mode_writes_nothing(tmp_path, images, extractor, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extractor.calls = 0
    feats = _extract(FeatureCache(None), extractor, images)
    assert extractor.calls == 3
    assert list(Path(tmp_path).iterdir()) == [tmp_path / "images"]
    assert all(isinstance(s, np.ndarray) and not isinstance(s, np.memmap) for s in feats.stages)
    on_disk = _extract(FeatureCache(tmp_path / "cache"), extractor, images)
    assert on_disk.key == feats.key
    for a, b in zip(feats.stages, on_disk.stages, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    shutil.rmtree(tmp_path / "cache")
