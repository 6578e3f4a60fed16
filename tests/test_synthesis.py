"""Anomaly generation (adcore.synthesis): masks are the intended anomaly regions (only their pixels change), target
areas are respected, a missed target area redraws the noise, textures follow the category's colour mode."""

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
    build_generator,
    estimate_foreground,
    extended_anomaly,
    heterogenous_anomaly,
    homologous_anomaly,
    is_grayscale,
    perlin_mask,
    perlin_region,
    procedural_texture,
    render_grid,
    sample_target_area,
    save_anomaly_grid,
    shape_mask,
    shuffle_grid,
    simulated,
)
from adcore.synthesis.extended import apply_op, aug2
from adcore.synthesis.foreground import Foreground
from adcore.synthesis.simulated import simulated_anomaly

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


def test_blend_eq4_changes_only_mask_pixels():
    normal = _normal()
    anomaly = normal.copy()
    anomaly[:, :32] = 255 - anomaly[:, :32]
    mask = np.zeros((S, S), bool)
    mask[10:50, 10:50] = True
    out = blend(normal, anomaly, mask, beta=0.3)
    changed = _changed(out, normal)
    assert not (changed & ~mask).any()
    assert not changed[:, 32:].any()  # anomaly == normal there: nothing changes (the region is still the mask)
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
def test_generated_masks_cover_the_changed_pixels_inside_the_target_area(kind):
    fg = np.zeros((S, S), bool)
    fg[8:56, 8:56] = True
    normals = np.stack([_normal(i) for i in range(4)])
    gen = AnomalyGenerator(normals, [_seen()], TextureSource(None, S), Foreground(fg, "object", "test"))
    rng = np.random.default_rng(42)
    n_nonempty = 0
    for i in range(12):
        normal = normals[i % 4]
        a = gen.generate(normal, kind, rng)
        assert a.kind == kind and a.image.dtype == np.uint8 and a.image.shape == normal.shape
        assert not (_changed(a.image, normal) & ~a.mask).any(), "a pixel outside the mask changed"
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
    assert not (_changed(b.image, normal) & ~b.mask).any() and b.mask.any() and not b.mask[:, 32:].any()


def test_masks_are_the_intended_region_even_where_nothing_changes():
    """With beta = 1 (Eq. 4 / 6: the region shows the normal image) no pixel changes, yet the mask is the region M:
    C binarised for EA, the Perlin noise inside the target area for HEA / HOA (the paper's ground truth)."""
    normal = _normal(5)
    target = np.zeros((S, S), bool)
    target[8:56, 8:56] = True
    seen_img, seen_mask = _seen()
    a = extended_anomaly(normal, seen_img, seen_mask, target, np.random.default_rng(0), beta_range=(1.0, 1.0))
    rng = np.random.default_rng(0)  # the same draws: Aug1 on the defect's box, then Aug2
    recoloured = seen_img.copy()
    recoloured[20:34, 10:40] = aug1(seen_img[20:34, 10:40], rng)
    _, region = aug2(recoloured, seen_mask, target, rng)
    assert np.array_equal(a.image, normal) and a.mask.any()
    assert np.array_equal(a.mask, region & target)
    for make in (heterogenous_anomaly, homologous_anomaly):
        b = make(normal, _normal(2), target, np.random.default_rng(1), beta_range=(1.0, 1.0))
        rng = np.random.default_rng(1)
        aug1(_normal(2), rng)  # the source's Aug1 (and HOA's shuffle) come first
        if make is homologous_anomaly:
            rng.permutation(64)
        assert np.array_equal(b.image, normal) and b.mask.any()
        assert np.array_equal(b.mask, perlin_region(target, rng))
    # the pasted content equals the original on part of the region: those pixels stay in the mask
    source = normal.copy()
    source[:, 32:] = 255 - source[:, 32:]
    c = simulated_anomaly(normal, source, np.ones((S, S), bool), np.random.default_rng(3), "hea", (0.0, 0.0))
    expected = perlin_region(np.ones((S, S), bool), np.random.default_rng(3))
    assert np.array_equal(c.mask, expected) and c.mask[:, :32].any()
    assert np.array_equal(_changed(c.image, normal), expected & (np.arange(S) >= 32)[None, :])


def test_a_missed_target_area_redraws_the_noise_never_pastes_the_whole_shape(monkeypatch):
    fg = np.zeros((S, S), bool)
    fg[8:56, 8:56] = True
    normals = np.stack([_normal(i) for i in range(4)])
    gen = AnomalyGenerator(normals, [], TextureSource(None, S), Foreground(fg, "object", "test"))
    rng = np.random.default_rng(7)
    for i in range(200):
        a = gen.generate(normals[i % 4], ("hea", "hoa")[i % 2], rng)
        assert a.mask.any() and not (a.mask & ~a.target).any() and a.mask.sum() <= a.target.sum()
        assert not np.array_equal(a.mask, a.target), f"draw {i}: the whole target shape was pasted"
    # the noise misses 25 times in a row: 20 redraws on the first target, then a new target area (5 more misses)
    calls = {"n": 0}
    real = simulated.perlin_mask

    def missing_first(size, rng, **kw):
        calls["n"] += 1
        return np.zeros((S, S), bool) if calls["n"] <= 25 else real(size, rng, **kw)

    monkeypatch.setattr(simulated, "perlin_mask", missing_first)
    first = np.zeros((S, S), bool)
    first[30:34, 30:34] = True
    new_targets = []

    def retarget(rng):
        new_targets.append(gen.target_area(rng))
        return new_targets[-1]

    b = simulated_anomaly(normals[0], normals[1], first, np.random.default_rng(0), "hoa", retarget=retarget)
    assert len(new_targets) == 1 and calls["n"] > 25 and np.array_equal(b.target, new_targets[0])
    assert b.mask.any() and not (b.mask & ~b.target).any() and not np.array_equal(b.mask, b.target)
    # noise that never meets the target: the image stays normal with an empty mask, never the whole shape
    monkeypatch.setattr(simulated, "perlin_mask", lambda size, rng, **kw: np.zeros((S, S), bool))
    c = simulated_anomaly(normals[0], normals[1], first, np.random.default_rng(0), "hoa", retarget=retarget)
    assert not c.mask.any() and np.array_equal(c.image, normals[0])


def test_generation_is_reproducible():
    normals = np.stack([_normal(i) for i in range(3)])
    gen = AnomalyGenerator(normals, [_seen()])
    a = [gen.generate(normals[0], k, np.random.default_rng(9)) for k in KINDS]
    b = [gen.generate(normals[0], k, np.random.default_rng(9)) for k in KINDS]
    for x, y in zip(a, b, strict=True):
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


def test_grayscale_category_gets_grayscale_textures(tmp_path):
    """Colour textures pasted on a grayscale category would be found by their colour alone."""
    grey = np.repeat(np.stack([_normal(i)[..., 0] for i in range(4)])[..., None], 3, axis=3)
    colour = np.stack([_normal(i) for i in range(4)])
    assert is_grayscale(grey) and not is_grayscale(colour)
    gen = build_generator(grey, [], None, target_area="whole")
    assert gen.textures.grayscale and "grayscale" in gen.textures.describe()
    rng = np.random.default_rng(0)
    for i in range(10):
        a = gen.generate(grey[i % 4], "hea", rng)
        assert a.mask.any() and is_grayscale(a.image, tolerance=0)
    assert not build_generator(colour, [], None, target_area="whole").textures.grayscale
    Image.fromarray(_normal(9)).save(tmp_path / "t.png")  # a colour texture from a folder (DTD) is converted too
    texture = TextureSource(tmp_path, 32, grayscale=True).sample(rng)
    assert texture.shape == (32, 32, 3) and is_grayscale(texture, tolerance=0)
    assert not is_grayscale(TextureSource(tmp_path, 32).sample(rng))


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
