"""Anomaly generation (adcore.synthesis): masks are exactly the changed pixels, target areas are respected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcore.errors import DataError
from adcore.synthesis import (
    AUG1_OPS,
    KINDS,
    AnomalyGenerator,
    TextureSource,
    aug1,
    blend,
    estimate_foreground,
    extended_anomaly,
    heterogenous_anomaly,
    homologous_anomaly,
    perlin_mask,
    procedural_texture,
    render_grid,
    sample_target_area,
    save_anomaly_grid,
    shape_mask,
    shuffle_grid,
)
from adcore.synthesis.extended import apply_op

S = 64
DTD = Path(__file__).resolve().parents[2] / "shared" / "data" / "dtd"


def _normal(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, (S, S, 3), dtype=np.uint8)


def _seen(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    img = _normal(seed)
    mask = np.zeros((S, S), bool)
    mask[20:34, 10:40] = True
    img[mask] = (250, 20, 20)
    return img, mask


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(axis=2)


def test_perlin_mask_is_seeded_and_non_empty():
    a = perlin_mask(S, np.random.default_rng(3))
    b = perlin_mask(S, np.random.default_rng(3))
    assert a.dtype == bool and a.shape == (S, S)
    assert np.array_equal(a, b) and a.any() and not a.all()


@pytest.mark.parametrize("kind", ["circle", "rectangle", "polygon"])
def test_shapes_are_filled_around_centre(kind):
    m = shape_mask(S, kind, (32.0, 32.0), 12.0, np.random.default_rng(0))
    assert m.any() and m.mean() < 0.5
    ys, xs = np.nonzero(m)
    assert abs(ys.mean() - 32) < 8 and abs(xs.mean() - 32) < 8
    assert (np.abs(ys - 32) <= 13).all() and (np.abs(xs - 32) <= 13).all()


def test_target_area_stays_in_foreground():
    fg = np.zeros((S, S), bool)
    fg[16:48, 16:48] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        ta = sample_target_area(fg, rng)
        assert ta.any() and not (ta & ~fg).any()


def test_blend_eq4_reports_exactly_changed_pixels():
    normal = _normal()
    anomaly = normal.copy()
    anomaly[:, :32] = 255 - anomaly[:, :32]
    mask = np.zeros((S, S), bool)
    mask[10:50, 10:50] = True
    out, changed = blend(normal, anomaly, mask, beta=0.3)
    assert np.array_equal(changed, _changed(out, normal))
    assert not changed[:, 32:].any()  # anomaly == normal there: nothing changes, not in the mask
    assert changed[10:50, 10:32].all()
    expected = np.rint(0.7 * anomaly[20, 20].astype(float) + 0.3 * normal[20, 20])
    assert np.array_equal(out[20, 20], expected.astype(np.uint8))


@pytest.mark.parametrize("op", AUG1_OPS)
def test_aug1_ops_keep_shape_and_type(op):
    img = _normal()
    out = apply_op(img, op, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert aug1(img, np.random.default_rng(1)).shape == img.shape


def test_shuffle_grid_permutes_cells():
    img = np.zeros((S, S, 3), np.uint8)
    for i in range(8):
        for j in range(8):
            img[i * 8:(i + 1) * 8, j * 8:(j + 1) * 8] = i * 8 + j
    out = shuffle_grid(img, np.random.default_rng(0), 8)
    cells = sorted(int(out[i * 8, j * 8, 0]) for i in range(8) for j in range(8))
    assert cells == list(range(64)) and not np.array_equal(out, img)


@pytest.mark.parametrize("kind", KINDS)
def test_generated_masks_are_exactly_the_changed_pixels_inside_the_target_area(kind):
    fg = np.zeros((S, S), bool)
    fg[8:56, 8:56] = True
    from adcore.synthesis.foreground import Foreground

    normals = np.stack([_normal(i) for i in range(4)])
    gen = AnomalyGenerator(normals, [_seen()], TextureSource(None, S), Foreground(fg, "object", "test"))
    rng = np.random.default_rng(42)
    n_nonempty = 0
    for i in range(12):
        normal = normals[i % 4]
        a = gen.generate(normal, kind, rng)
        assert a.kind == kind and a.image.dtype == np.uint8 and a.image.shape == normal.shape
        assert np.array_equal(a.mask, _changed(a.image, normal)), "mask != changed pixels"
        assert not (a.mask & ~a.target).any(), "anomaly outside its target area"
        assert not (a.target & ~fg).any(), "target area outside the foreground"
        n_nonempty += int(a.mask.sum() > 0)
    assert n_nonempty >= 10


def test_extended_anomaly_uses_the_seen_defect():
    seen_img, seen_mask = _seen()
    normal = _normal(5)
    target = np.ones((S, S), bool)
    a = extended_anomaly(normal, seen_img, seen_mask, target, np.random.default_rng(0), beta_range=(0.0, 0.0))
    # Aug2 keeps the area up to resampling; with beta = 0 the changed region is a moved copy of the defect.
    assert 0.5 * seen_mask.sum() < a.mask.sum() < 1.6 * seen_mask.sum()


def test_simulated_anomalies_fill_with_their_source():
    normal = np.full((S, S, 3), 100, np.uint8)
    target = np.zeros((S, S), bool)
    target[:, :32] = True
    tex = np.full((S, S, 3), 7, np.uint8)
    a = heterogenous_anomaly(normal, tex, target, np.random.default_rng(0))
    assert a.mask.any() and not a.mask[:, 32:].any()
    b = homologous_anomaly(normal, _normal(2), target, np.random.default_rng(1))
    assert np.array_equal(b.mask, _changed(b.image, normal)) and not b.mask[:, 32:].any()


def test_generation_is_reproducible():
    normals = np.stack([_normal(i) for i in range(3)])
    gen = AnomalyGenerator(normals, [_seen()])
    a = [gen.generate(normals[0], k, np.random.default_rng(9)) for k in KINDS]
    b = [gen.generate(normals[0], k, np.random.default_rng(9)) for k in KINDS]
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)


def test_without_seen_anomalies_ea_slots_fall_back_to_simulated():
    normals = np.stack([_normal(i) for i in range(3)])
    gen = AnomalyGenerator(normals, [(normals[0], np.zeros((S, S), bool))])  # an empty mask cannot serve
    assert gen.kinds == ("hea", "hoa")
    rng = np.random.default_rng(0)
    assert {gen.pick_kind(rng, "ea") for _ in range(20)} <= {"hea", "hoa"}
    only_ea = AnomalyGenerator(normals, [_seen()], kinds=("ea",))
    assert only_ea.pick_kind(rng, "sim") == "ea"
    assert AnomalyGenerator(normals, [], kinds=("ea",)).pick_kind(rng, "sim") is None


def test_foreground_estimate_object_and_texture():
    rng = np.random.default_rng(0)
    objects = np.full((6, S, S, 3), 20, np.uint8)
    objects[:, 16:48, 12:52] = 200
    objects = np.clip(objects.astype(int) + rng.integers(-5, 6, objects.shape), 0, 255).astype(np.uint8)
    fg = estimate_foreground(objects)
    assert fg.kind == "object"
    assert fg.mask[20:44, 16:48].all() and not fg.mask[:8].any() and not fg.mask[:, :6].any()
    textures = rng.integers(0, 256, (6, S, S, 3), dtype=np.uint8)
    assert estimate_foreground(textures).mask.all()


def test_texture_source_folder_and_procedural(tmp_path):
    for i in range(2):
        Image.fromarray(_normal(i)).save(tmp_path / f"t{i}.png")
    src = TextureSource(tmp_path, 32)
    assert src.sample(np.random.default_rng(0)).shape == (32, 32, 3) and len(src.paths) == 2
    proc = TextureSource(None, 32)
    assert proc.procedural and proc.sample(np.random.default_rng(0)).dtype == np.uint8
    for kind in ("noise", "stripes", "checker", "blobs", "perlin"):
        assert procedural_texture(32, np.random.default_rng(1), kind).shape == (32, 32, 3)
    with pytest.raises(DataError, match="not found"):
        TextureSource(tmp_path / "missing", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        TextureSource(tmp_path / "empty", 32)


@pytest.mark.skipif(not DTD.exists(), reason="DTD textures (../shared/data/dtd) not present")
def test_dtd_folder_as_texture_source():
    src = TextureSource(DTD, 48)
    assert len(src.paths) >= 10 and src.sample(np.random.default_rng(0)).shape == (48, 48, 3)


def test_grid_picture(tmp_path):
    normals = np.stack([_normal(i) for i in range(3)])
    gen = AnomalyGenerator(normals, [_seen()])
    arr = render_grid(gen, np.random.default_rng(0), n_per_kind=2)
    assert arr.shape[0] == 3 * (S + 4) + 4 and arr.shape[2] == 3
    out = save_anomaly_grid(gen, tmp_path / "grid.png", n_per_kind=2)
    assert out.is_file() and Image.open(out).size == (arr.shape[1], arr.shape[0])
