"""FRAD: shuffle, GFE, losses, multi-level fusion and a short run on the demo data (persistence, resume and
seeding: tests/test_method_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcore.errors import ConfigError
from adcore.methods import create_model, resolve_settings
from adcore.methods.frad.extractor import fuse_levels
from adcore.methods.frad.gfe import GlobalFeatureExtraction
from adcore.methods.frad.loss import reconstruction_loss, total_loss
from adcore.methods.frad.network import FRADNetwork
from adcore.methods.frad.shuffle import grid_shuffle, grid_unshuffle, random_permutations

TINY = ["backbone.name=resnet18", "backbone.weights=random", "data.image_size=64", "method.frad.channels=16",
        "method.frad.epochs=2", "method.frad.batch_size=4"]


def _cells(x: torch.Tensor, k: int) -> list[torch.Tensor]:
    h, w = x.shape[-2] // k, x.shape[-1] // k
    return [x[..., i * h:(i + 1) * h, j * w:(j + 1) * w] for i in range(k) for j in range(k)]


# ---- feature shuffle (1.2) ---------------------------------------------------------------------------------------
def test_shuffle_permutes_grid_cells_and_is_invertible():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, 12)
    perm = random_permutations(3, 4, np.random.default_rng(1))
    assert all(sorted(p.tolist()) == list(range(16)) for p in perm)
    assert not all(torch.equal(p, torch.arange(16)) for p in perm)
    y = grid_shuffle(x, 4, perm)
    for b in range(3):
        src, dst = _cells(x[b], 4), _cells(y[b], 4)
        for j in range(16):
            assert torch.equal(dst[j], src[perm[b, j]])  # cell j of z' is cell perm[j] of z
    assert torch.equal(grid_unshuffle(y, 4, perm), x)
    assert not torch.equal(y, x)


def test_shuffle_keeps_border_outside_the_grid():
    x = torch.randn(2, 3, 10, 9)  # 10 = 4*2 + 2, 9 = 4*2 + 1
    perm = random_permutations(2, 4, np.random.default_rng(0))
    y = grid_shuffle(x, 4, perm)
    assert torch.equal(y[..., 8:, :], x[..., 8:, :]) and torch.equal(y[..., :, 8:], x[..., :, 8:])
    assert torch.equal(grid_unshuffle(y, 4, perm), x)


def test_shuffle_from_torch_rng_is_seeded():
    torch.manual_seed(3)
    a = random_permutations(4, 4)
    torch.manual_seed(3)
    assert torch.equal(a, random_permutations(4, 4))


# ---- GFE (1.3) ---------------------------------------------------------------------------------------------------
def test_gfe_shape_and_global_information():
    torch.manual_seed(0)
    gfe = GlobalFeatureExtraction(32, grid=4).eval()
    t = torch.randn(2, 32, 8, 8)
    out = gfe(t)
    assert out.shape == (2, 64, 8, 8)
    assert torch.equal(out[:, :32], t)  # the map itself passes through unchanged
    g = out[:, 32:]
    assert torch.allclose(g, g[:, :, :1, :1].expand_as(g))  # one global vector, repeated over H x W
    t2 = t.clone()
    t2[:, :, 6:, 6:] += 5.0  # change only the bottom-right region
    g2 = gfe(t2)[:, 32:]
    # every position's global part changes, the top-left one included, far from the change
    assert ((g2 - g).abs().amax(dim=1) > 1e-4).all()
    assert torch.equal(gfe(t2)[:, :32, :6, :6], t[:, :, :6, :6])


def test_gfe_handles_maps_smaller_than_grid():
    gfe = GlobalFeatureExtraction(16, grid=4)
    assert gfe(torch.randn(1, 16, 2, 3)).shape == (1, 32, 2, 3)


# ---- losses (1.4) ------------------------------------------------------------------------------------------------
def test_cosine_loss_zero_for_identical_and_scale_invariant():
    torch.manual_seed(0)
    z = torch.randn(2, 8, 5, 5)
    assert reconstruction_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert reconstruction_loss(z, 3.0 * z).item() == pytest.approx(0.0, abs=1e-6)
    loss, parts = total_loss(z, z, -z, 0.1)
    assert loss.item() == pytest.approx(0.2, abs=1e-5) and parts["loss_ssl"] == pytest.approx(2.0, abs=1e-5)


# ---- multi-level features (1.1) ----------------------------------------------------------------------------------
def test_fuse_levels_pools_each_level_to_equal_share():
    a = torch.ones(1, 4, 8, 8)  # stride-8 level
    b = torch.full((1, 8, 4, 4), 3.0)  # stride-16 level, 2x fewer positions and 2x more channels
    z = fuse_levels([a, b], 4)
    assert z.shape == (1, 4, 8, 8)
    assert torch.allclose(z[:, :2], torch.ones(1, 2, 8, 8)) and torch.allclose(z[:, 2:], torch.full((1, 2, 8, 8), 3.0))


# ---- network -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(16, 16), (14, 18)])
def test_autoencoder_output_matches_input(size):
    torch.manual_seed(0)
    for gfe in (True, False):
        ae = FRADNetwork(16, gfe=gfe).eval()
        z = torch.randn(2, 16, *size)
        assert ae(z).shape == z.shape


def test_config_switches_and_stage_choice():
    cfg = resolve_settings("frad", "paper", None, ["method.frad.stages=[1,2,3]"])
    assert cfg.method.channels == 512 and cfg.method.epochs == 100 and cfg.method.betas == (0.5, 0.999)
    model = create_model(resolve_settings("frad", "cpu", None,
                                          TINY + ["method.frad.stages=[3,1]", "method.frad.gfe=false"]))
    assert model.backbone.strides == (4, 16) and model.build_network({}).gfe is None
    with pytest.raises(ConfigError, match="method.frad.stages"):
        resolve_settings("frad", "cpu", None, ["method.frad.stages=[5]"])


# ---- a real run on the demo data ---------------------------------------------------------------------------------
def test_demo_run_detects_anomalies(fit_and_auroc):
    settings = resolve_settings("frad", "cpu", None, ["data.image_size=128", "method.frad.epochs=8",
                                                      "method.frad.batch_size=8", "train.device=cpu"])
    _, auroc = fit_and_auroc(settings, "tile")
    assert auroc > 0.7, auroc


def test_min_steps_lengthens_training_on_small_categories(fit_and_auroc):
    from adcore.methods.frad.method import epochs_for

    assert epochs_for(10, 0, 36, 16) == 10  # no minimum: the configured epochs
    assert epochs_for(10, 1300, 36, 16) == 434  # 3 steps per epoch -> ceil(1300 / 3)
    assert epochs_for(100, 50, 300, 16) == 100  # a large category already has more steps
    settings = resolve_settings("frad", "cpu", None, TINY + ["method.frad.epochs=1", "method.frad.min_steps=6"])
    model, _ = fit_and_auroc(settings, "tile")  # 16 images at batch 4: 4 steps per epoch -> 2 epochs
    assert model.fit_info["epochs_planned"] == 2 and len(model.fit_info["history"]) == 2
