"""Dataset loading, validation errors, image decoding, splits, transforms and the torch dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adcore.config import DataConfig
from adcore.data import (
    ImageDataset,
    ImageTransform,
    Sample,
    image_size,
    list_categories,
    load_category,
    make_loader,
    read_image,
    read_mask,
    split_seen_anomalies,
    train_val_split,
)
from adcore.errors import DataError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----------------------------------------------------------------------------------------------- read_image


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1", "CMYK"])
def test_read_image_modes_become_rgb_uint8(tmp_path, mode):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (7, 11, 3), dtype=np.uint8))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = tmp_path / f"x.{fmt.lower()}"
    base.convert(mode).save(path, format=fmt)
    arr = read_image(path)
    assert arr.shape == (7, 11, 3) and arr.dtype == np.uint8
    if mode in ("L", "LA", "1"):  # grayscale: the three channels are identical
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_read_image_gray_values_are_kept(tmp_path):
    gray = np.arange(0, 240, 4, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(gray).save(tmp_path / "g.png")
    arr = read_image(tmp_path / "g.png")
    assert np.array_equal(arr, np.repeat(gray[:, :, None], 3, axis=2))


def test_read_image_16bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535], [257, 257 * 200, 30000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I")
    arr = read_image(tmp_path / "d.png")
    assert arr.shape == (2, 3, 3) and arr.dtype == np.uint8
    assert arr[..., 0].tolist() == [[0, 100, 255], [1, 200, 30000 // 257]]


def test_read_image_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("suffix,fmt", [(".jpg", "JPEG"), (".JPEG", "JPEG"), (".bmp", "BMP"), (".PNG", "PNG")])
def test_read_image_formats_and_non_square(tmp_path, suffix, fmt):
    arr = np.full((30, 50, 3), 128, np.uint8)
    arr[:, :25] = 20
    Image.fromarray(arr).save(tmp_path / f"x{suffix}", format=fmt)
    out = read_image(tmp_path / f"x{suffix}")
    assert out.shape == (30, 50, 3)
    assert abs(int(out[15, 5, 0]) - 20) <= 3 and abs(int(out[15, 45, 0]) - 128) <= 3
    assert image_size(tmp_path / f"x{suffix}") == (50, 30)


def test_read_image_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    _truncate(tmp_path / "t.png")
    (tmp_path / "text.png").write_text("not an image")
    for name in ("t.png", "text.png", "missing.png"):
        with pytest.raises(DataError, match=name):
            read_image(tmp_path / name)
    with pytest.raises(DataError, match="text.png"):
        image_size(tmp_path / "text.png")


# ----------------------------------------------------------------------------------------------- read_mask


def test_read_mask_binary_and_size_check(tmp_path):
    m = np.zeros((30, 40), np.uint8)
    m[5:10, 5:20] = 255
    m[0, 0] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", (40, 30))
    assert mask.dtype == bool and mask.shape == (30, 40) and mask.sum() == 5 * 15 + 1
    Image.fromarray((m // 255).astype(np.uint8)).save(tmp_path / "m01.png")  # 0/1 masks are binary too
    assert np.array_equal(read_mask(tmp_path / "m01.png", (40, 30)), mask)
    m[0, 0] = 1  # 0, 1 and 255 in one mask: not binary (hostile cases: tests/test_hostile_inputs.py)
    Image.fromarray(m).save(tmp_path / "mixed.png")
    with pytest.raises(DataError, match=r"mixed\.png: mask is not binary \(values 0, 1, 255\)"):
        read_mask(tmp_path / "mixed.png", (40, 30))
    with pytest.raises(DataError) as err:
        read_mask(tmp_path / "m.png", (41, 30))
    assert "m.png" in str(err.value) and "40x30" in str(err.value) and "41x30" in str(err.value)


# ----------------------------------------------------------------------------------------------- load_category


def test_load_category_valid(tiny_category):
    cat_dir = tiny_category(defects=("scratch", "dent"), n_defect=3)
    (cat_dir / "train" / "good" / "notes.txt").write_text("ignored")
    (cat_dir / "train" / "good" / ".DS_Store").write_bytes(b"\0\1")
    (cat_dir / "train" / "good" / "._000.png").write_bytes(b"\0\1")  # macOS resource fork: hidden, ignored
    (cat_dir / "test" / "readme.md").write_text("ignored")
    cat = load_category(cat_dir.parent, "part")
    assert cat.name == "part" and cat.root == cat_dir.parent and cat.has_masks and cat.masks_note is None
    assert [s.path.name for s in cat.train] == ["000.png", "001.png", "002.png", "003.png"]
    assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in cat.train)
    assert [(s.defect, s.path.name) for s in cat.test] == sorted((s.defect, s.path.name) for s in cat.test)
    assert len(cat.test) == 2 + 6 and cat.defects == ["dent", "scratch"]
    for s in cat.test:
        if s.defect == "good":
            assert s.label == 0 and s.mask_path is None
        else:
            assert s.label == 1 and s.mask_path == cat_dir / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
    assert list_categories(cat_dir.parent) == ["part"]


def test_load_category_alternative_mask_names(tiny_category):
    cat_dir = tiny_category(defects=("scratch",), n_defect=3)
    gt = cat_dir / "ground_truth" / "scratch"
    (gt / "001_mask.png").rename(gt / "001.png")
    with Image.open(gt / "002_mask.png") as im:
        im.save(gt / "002_mask.BMP")
    (gt / "002_mask.png").unlink()
    cat = load_category(cat_dir.parent, "part")
    names = [s.mask_path.name for s in cat.test if s.label == 1]
    assert names == ["000_mask.png", "001.png", "002_mask.BMP"]


def test_load_category_jpg_grayscale_non_square(tiny_category):
    cat_dir = tiny_category(mode="L", suffix=".jpg", size=(48, 20))
    cat = load_category(cat_dir.parent, "part")
    assert len(cat.train) == 4 and all(s.path.suffix == ".jpg" for s in cat.train + cat.test)
    assert read_image(cat.test[-1].path).shape == (20, 48, 3)


def test_without_ground_truth_has_no_masks(tiny_category):
    cat_dir = tiny_category(masks=False)
    assert not (cat_dir / "ground_truth").exists()
    cat = load_category(cat_dir.parent, "part")
    assert not cat.has_masks and "ground_truth" in cat.masks_note
    assert [s.label for s in cat.test] == [0, 0, 1, 1] and all(s.mask_path is None for s in cat.test)
    assert cat.defects == ["scratch"]


def test_error_root_missing(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        load_category(tmp_path / "nowhere", "part")
    with pytest.raises(DataError, match="nowhere"):
        list_categories(tmp_path / "nowhere")


def test_error_category_missing_lists_existing(tiny_category, tmp_path):
    tiny_category("bottle")
    tiny_category("cable")
    with pytest.raises(DataError) as err:
        load_category(tmp_path, "screw")
    msg = str(err.value)
    assert str(tmp_path / "screw") in msg and "bottle, cable" in msg


def test_error_missing_train_good(tiny_category, tmp_path):
    cat_dir = tiny_category()
    shutil.rmtree(cat_dir / "train" / "good")
    with pytest.raises(DataError) as err:
        load_category(tmp_path, "part")
    assert str(cat_dir / "train" / "good") in str(err.value) and "missing" in str(err.value)
    assert "MVTec" in str(err.value)


def test_error_empty_train_good(tiny_category, tmp_path):
    cat_dir = tiny_category(n_train=0)
    (cat_dir / "train" / "good").mkdir(parents=True)
    (cat_dir / "train" / "good" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as err:
        load_category(tmp_path, "part")
    assert str(cat_dir / "train" / "good") in str(err.value) and "empty category" in str(err.value)


def test_error_missing_test(tiny_category, tmp_path):
    cat_dir = tiny_category()
    shutil.rmtree(cat_dir / "test")
    with pytest.raises(DataError) as err:
        load_category(tmp_path, "part")
    assert str(cat_dir / "test") in str(err.value) and "missing" in str(err.value)


def test_error_partly_missing_masks(tiny_category, tmp_path):
    cat_dir = tiny_category(defects=("scratch", "dent"))
    (cat_dir / "ground_truth" / "dent" / "001_mask.png").unlink()
    with pytest.raises(DataError) as err:
        load_category(tmp_path, "part")
    msg = str(err.value)
    assert str(cat_dir / "test" / "dent" / "001.png") in msg and "001_mask.png" in msg and "no mask" in msg


def test_error_missing_mask_folder_for_a_defect(tiny_category, tmp_path):
    cat_dir = tiny_category(defects=("scratch", "dent"))
    shutil.rmtree(cat_dir / "ground_truth" / "dent")
    with pytest.raises(DataError, match="2 anomalous test image"):
        load_category(tmp_path, "part")


@pytest.mark.parametrize("check_images", [True, False])
def test_error_mask_size_differs(tiny_category, tmp_path, check_images):
    cat_dir = tiny_category(size=(40, 30))
    bad = cat_dir / "ground_truth" / "scratch" / "001_mask.png"
    Image.new("L", (30, 40)).save(bad)
    with pytest.raises(DataError) as err:
        load_category(tmp_path, "part", check_images=check_images)
    msg = str(err.value)
    assert str(bad) in msg and "30x40" in msg and "40x30" in msg


def test_error_truncated_image_only_with_check(tiny_category, tmp_path):
    cat_dir = tiny_category(size=(120, 90))
    bad = cat_dir / "train" / "good" / "002.png"
    _truncate(bad)
    with pytest.raises(DataError) as err:
        load_category(tmp_path, "part")
    assert str(bad) in str(err.value) and "unreadable" in str(err.value)
    cat = load_category(tmp_path, "part", check_images=False)  # header-only scan does not decode train images
    assert len(cat.train) == 4


def test_error_unreadable_test_image(tiny_category, tmp_path):
    cat_dir = tiny_category()
    bad = cat_dir / "test" / "good" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="001.png"):
        load_category(tmp_path, "part")


# ----------------------------------------------------------------------------------------------- splits


def _samples(n: int, defect: str = "good") -> list[Sample]:
    label = 0 if defect == "good" else 1
    return [Sample(Path(f"/d/{defect}/{i:03d}.png"), label, defect, None) for i in range(n)]


@pytest.mark.parametrize("n,fraction,min_val,expected", [
    (10, 0.1, 2, 2), (50, 0.1, 2, 5), (2, 0.5, 2, 1), (1, 0.5, 2, 0), (10, 0.0, 2, 0), (3, 0.1, 5, 2),
    (40, 0.25, 0, 10),
])
def test_train_val_split_sizes(n, fraction, min_val, expected):
    train, val = train_val_split(_samples(n), fraction, seed=0, min_val=min_val)
    assert len(val) == expected and len(train) == n - expected
    assert len(train) >= 1


def test_train_val_split_deterministic_and_disjoint():
    samples = _samples(30)
    a = train_val_split(samples, 0.2, seed=3)
    assert a == train_val_split(samples, 0.2, seed=3)
    train, val = a
    assert not set(train) & set(val) and set(train) | set(val) == set(samples)
    assert train == [s for s in samples if s in set(train)]  # original order kept
    assert {s.path for s in train_val_split(samples, 0.2, seed=4)[1]} != {s.path for s in val}


def test_split_seen_anomalies_covers_defects():
    test = _samples(5) + _samples(6, "a") + _samples(4, "b") + _samples(1, "c")
    seen, remaining = split_seen_anomalies(test, 3, seed=0)
    assert sorted(s.defect for s in seen) == ["a", "b", "c"]
    assert (seen, remaining) == split_seen_anomalies(test, 3, seed=0)
    seen7, rest7 = split_seen_anomalies(test, 7, seed=1)
    assert len(seen7) == 7 and all(s.label == 1 for s in seen7)
    counts = {d: sum(s.defect == d for s in seen7) for d in "abc"}
    assert counts["c"] == 1 and counts["a"] == 3 and counts["b"] == 3  # round-robin until c runs out
    assert not set(seen7) & set(rest7) and len(seen7) + len(rest7) == len(test)
    assert all(s in rest7 for s in test if s.label == 0)
    assert split_seen_anomalies(test, 0, seed=0) == ([], test)
    all_seen, rest = split_seen_anomalies(test, 11, seed=0)
    assert len(all_seen) == 11 and all(s.label == 0 for s in rest)


def test_split_seen_anomalies_seed_changes_draw():
    test = _samples(20, "a") + _samples(20, "b")
    draws = {tuple(s.path for s in split_seen_anomalies(test, 4, seed=k)[0]) for k in range(5)}
    assert len(draws) > 1


def test_split_seen_anomalies_too_many():
    test = _samples(5) + _samples(2, "a")
    with pytest.raises(DataError, match="only 2 anomalous"):
        split_seen_anomalies(test, 3, seed=0)


# ----------------------------------------------------------------------------------------------- transforms


def test_transform_shapes_and_normalisation():
    t = ImageTransform(32)
    x = t(np.full((20, 50, 3), 255, np.uint8))  # non-square input
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, 10, 10], expected, atol=1e-5)
    assert t.output_size == 32
    gray = t(np.full((20, 50), 0, np.uint8))
    assert gray.shape == (3, 32, 32)
    with pytest.raises(DataError):
        t(np.zeros((5, 5, 3), np.float32))


def test_transform_crop_aligns_image_and_mask():
    t = ImageTransform(40, crop_size=20)
    assert t.output_size == 20
    img = np.zeros((80, 80, 3), np.uint8)
    mask = np.zeros((80, 80), bool)
    img[30:50, 30:50] = 255  # a centred square: after resize 15:25, after crop 5:15
    mask[30:50, 30:50] = True
    x = t(img)
    m = t.mask(mask)
    assert x.shape == (3, 20, 20) and m.shape == (20, 20) and m.dtype == torch.float32
    assert torch.equal(m.nonzero().min(0).values, torch.tensor([5, 5]))
    assert torch.equal(m.nonzero().max(0).values, torch.tensor([14, 14]))
    bright = t.denormalize(x)[..., 0] > 128
    assert np.array_equal(bright, m.numpy() > 0)


def test_mask_nearest_resize_stays_binary():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.7
    for size in (16, 64, 100):
        m = ImageTransform(size).mask(mask)
        assert m.shape == (size, size) and set(torch.unique(m).tolist()) <= {0.0, 1.0}
        assert abs(m.mean().item() - mask.mean()) < 0.08


def test_denormalize_roundtrip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    t = ImageTransform(24)
    assert np.array_equal(t.denormalize(t(img)), img)


def test_fingerprint_and_from_config():
    a = ImageTransform(64, 56)
    assert a.fingerprint == ImageTransform(64, 56).fingerprint
    others = [ImageTransform(64), ImageTransform(72, 56), ImageTransform(64, 56, mean=(0.5, 0.5, 0.5))]
    assert len({a.fingerprint} | {o.fingerprint for o in others}) == 4
    c = ImageTransform.from_config(DataConfig(image_size=64, crop_size=56), (0.485, 0.456, 0.406),
                                   (0.229, 0.224, 0.225))
    assert c.fingerprint == a.fingerprint and c.output_size == 56


# ----------------------------------------------------------------------------------------------- dataset


def test_image_dataset_items(tiny_category):
    cat_dir = tiny_category(size=(40, 30), mode="L")
    cat = load_category(cat_dir.parent, "part")
    ds = ImageDataset(cat.test, ImageTransform(32))
    assert len(ds) == 4
    assert [s.defect for s in cat.test] == ["good", "good", "scratch", "scratch"]  # sorted by (defect, path)
    anomalous = ds[2]
    assert anomalous["image"].shape == (3, 32, 32) and anomalous["mask"].shape == (32, 32)
    assert anomalous["label"] == 1 and anomalous["index"] == 2 and anomalous["path"] == str(cat.test[2].path)
    assert anomalous["mask"].sum() > 0
    good = ds[0]
    assert good["label"] == 0 and good["mask"].sum() == 0


def test_make_loader_batches_and_seeded_shuffle(tiny_category):
    cat_dir = tiny_category(n_train=7)
    cat = load_category(cat_dir.parent, "part")
    t = ImageTransform(16)
    batches = list(make_loader(cat.train, t, batch_size=3))
    assert [b["image"].shape[0] for b in batches] == [3, 3, 1]
    assert batches[0]["index"].tolist() == [0, 1, 2] and len(batches[0]["path"]) == 3

    def order(seed):
        loader = make_loader(cat.train, t, batch_size=4, shuffle=True, seed=seed)
        return [i for b in loader for i in b["index"].tolist()]

    assert order(1) == order(1) and sorted(order(1)) == list(range(7))


# ----------------------------------------------------------------------------------------------- real data


@pytest.mark.shared_data
@pytest.mark.skipif(not (DATA / "magnetic_tile").exists(), reason="real data ../shared/data/magnetic_tile absent")
def test_real_magnetic_tile():
    cat = load_category(DATA, "magnetic_tile", check_images=False)
    assert len(cat.train) == 762 and len(cat.test) == 582 and cat.has_masks
    assert cat.defects == ["blowhole", "break", "crack", "fray", "uneven"]
    assert sum(s.label for s in cat.test) == 392 and all(s.mask_path for s in cat.test if s.label)
    sample = next(s for s in cat.test if s.label == 1)
    img = read_image(sample.path)
    assert img.ndim == 3 and img.shape[2] == 3
    assert read_mask(sample.mask_path, (img.shape[1], img.shape[0])).shape == img.shape[:2]


@pytest.mark.shared_data
@pytest.mark.skipif(not (DATA / "pcb").exists(), reason="real data ../shared/data/pcb absent")
def test_real_pcb():
    cat = load_category(DATA, "pcb")
    assert len(cat.train) == 200 and len(cat.test) == 120 and cat.defects == ["defect"]
    assert "pcb" in list_categories(DATA) and "magnetic_tile" in list_categories(DATA)
