"""Post-processing: Gaussian blur equal to scipy, upsampling, image scores, the validation-fitted normaliser."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from adcore.errors import DataError, ModelFormatError
from adcore.postprocess import (
    ScoreNormalizer,
    anomaly_maps_to_input,
    gaussian_blur,
    gaussian_kernel1d,
    image_score_max,
    image_score_topk_mean,
    upsample,
)


@pytest.mark.parametrize(
    "sigma,h,w", [(4.0, 64, 48), (1.3, 20, 30), (4.0, 10, 7), (0.5, 5, 5), (2.0, 33, 64)]
)  # includes a radius larger than the image (period-2n reflection)
def test_blur_matches_scipy_reflect(sigma, h, w):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, h, w))
    ref = np.stack([ndimage.gaussian_filter(a, sigma, mode="reflect", truncate=4.0) for a in x])
    out64 = gaussian_blur(torch.from_numpy(x), sigma)
    assert out64.dtype == torch.float64 and out64.shape == x.shape
    np.testing.assert_allclose(out64.numpy(), ref, atol=1e-12)
    out32 = gaussian_blur(torch.from_numpy(x).float().unsqueeze(1), sigma)  # (B, 1, H, W) keeps its rank
    assert out32.shape == (3, 1, h, w) and out32.dtype == torch.float32
    np.testing.assert_allclose(out32[:, 0].numpy(), ref, atol=1e-5)


def test_kernel_size_and_identity():
    assert gaussian_kernel1d(4.0).numel() == 2 * int(4 * 4.0 + 0.5) + 1 == 33
    assert gaussian_kernel1d(0.3).numel() == 3
    assert float(gaussian_kernel1d(2.5).sum()) == pytest.approx(1.0, abs=1e-6)
    x = torch.rand(2, 9, 9)
    assert torch.equal(gaussian_blur(x, 0.0), x)
    with pytest.raises(DataError, match="sigma"):
        gaussian_blur(x, -1.0)
    with pytest.raises(DataError, match="shape"):
        gaussian_blur(torch.rand(9, 9), 1.0)


def test_blur_preserves_constant_and_mass():
    c = torch.full((2, 40, 30), 3.25, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(c, 4.0), c, atol=1e-12, rtol=0)
    x = torch.zeros(1, 64, 64, dtype=torch.float64)
    x[0, 28:36, 30:33] = torch.rand(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = gaussian_blur(x, 2.0)
    assert float(y.sum()) == pytest.approx(float(x.sum()), rel=1e-10)  # far from the borders nothing is lost
    assert float(y.max()) < float(x.max())


def test_upsample_shapes_and_values():
    x = torch.rand(2, 8, 8)
    y = upsample(x, (64, 48))
    assert y.shape == (2, 64, 48)
    assert upsample(x.unsqueeze(1), (16, 16)).shape == (2, 1, 16, 16)
    c = torch.full((1, 4, 4), 0.7)
    torch.testing.assert_close(upsample(c, (32, 32)), torch.full((1, 32, 32), 0.7))
    assert torch.equal(upsample(x, (8, 8)), x)
    ref = torch.nn.functional.interpolate(x[:, None], size=(64, 48), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(y, ref)


def test_anomaly_maps_to_input_is_upsample_then_blur():
    x = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(1))
    out = anomaly_maps_to_input(x, (56, 56), sigma=4.0)
    assert out.shape == (3, 56, 56)
    torch.testing.assert_close(out, gaussian_blur(upsample(x, (56, 56)), 4.0))
    assert anomaly_maps_to_input(x[:, None], (14, 14), sigma=0).shape == (3, 14, 14)


def test_image_scores():
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 4, 5)
    torch.testing.assert_close(image_score_max(x), torch.tensor([19.0, 39.0]))
    torch.testing.assert_close(image_score_topk_mean(x, k=3), torch.tensor([18.0, 38.0]))
    torch.testing.assert_close(image_score_topk_mean(x, k=1), image_score_max(x))
    torch.testing.assert_close(image_score_topk_mean(x, k=1000), x.flatten(1).mean(1))  # k capped at H*W
    torch.testing.assert_close(image_score_topk_mean(x[:, None], k=3), torch.tensor([18.0, 38.0]))
    with pytest.raises(DataError, match="k must be"):
        image_score_topk_mean(x, k=0)


def test_normalizer_threshold_maps_to_half_and_round_trips():
    rng = np.random.default_rng(0)
    val_scores = rng.normal(2.0, 0.5, 50)
    val_pixels = torch.from_numpy(rng.normal(0.0, 1.0, (5, 16, 16)))
    norm = ScoreNormalizer().fit(val_scores, val_pixels, quantile=0.95)
    assert norm.image_threshold == pytest.approx(np.quantile(val_scores, 0.95))
    assert norm.image_span == pytest.approx(val_scores.max() - val_scores.min())
    assert float(norm.normalize_scores(np.array([norm.image_threshold]))[0]) == pytest.approx(0.5)
    assert float(norm.normalize_maps(torch.tensor([norm.pixel_threshold], dtype=torch.float64))[0]) == 0.5
    out = norm.normalize_scores(np.linspace(-100, 100, 201))
    assert out.min() == 0.0 and out.max() == 1.0 and np.all(np.diff(out) >= 0)
    maps = torch.randn(2, 8, 8)
    nm = norm.normalize_maps(maps)
    assert isinstance(nm, torch.Tensor) and nm.shape == maps.shape and 0 <= float(nm.min()) <= float(nm.max()) <= 1

    d = json.loads(json.dumps(norm.to_dict()))
    back = ScoreNormalizer.from_dict(d)
    assert back.to_dict() == norm.to_dict()
    np.testing.assert_array_equal(back.normalize_scores(val_scores), norm.normalize_scores(val_scores))


def test_normalizer_edge_cases():
    norm = ScoreNormalizer().fit([1.0, 1.0, 1.0], None)
    assert norm.image_span == 1.0  # constant validation scores: no division by zero
    assert norm.normalize_scores([1.0, 1.2, 0.0]).tolist() == [0.5, pytest.approx(0.7), 0.0]
    with pytest.raises(RuntimeError, match="not fitted"):
        norm.normalize_maps(np.zeros((1, 2, 2)))
    assert ScoreNormalizer.from_dict(norm.to_dict()).pixel_threshold is None
    with pytest.raises(DataError, match="NaN"):
        ScoreNormalizer().fit([1.0, float("nan")], None)
    with pytest.raises(DataError, match="quantile"):
        ScoreNormalizer().fit([1.0, 2.0], None, quantile=0.0)
    d = norm.to_dict()
    del d["image_span"]
    with pytest.raises(ModelFormatError, match="image_span"):
        ScoreNormalizer.from_dict(d)
    with pytest.raises(ModelFormatError, match="image_threshold"):
        ScoreNormalizer.from_dict({**norm.to_dict(), "image_threshold": "x"})
