"""FRAD: shuffle, GFE, losses, multi-level fusion and a short run on the demo data (persistence, resume and
seeding: tests/test_method_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcore.data.dataset import make_loader
from adcore.data.mvtec import load_category
from adcore.errors import ConfigError
from adcore.methods import create_model, load_model, resolve_settings
from adcore.methods.base import FitData, TrainOptions
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


def _predict(model, samples):
    maps, scores = [], []
    for batch in make_loader(samples, model.make_transform(), 8):
        pred = model.predict(batch["image"])
        maps.append(pred.maps)
        scores.append(pred.scores)
    return torch.cat(maps), torch.cat(scores)


def _output_sizes(modules) -> list[list[tuple[int, int]]]:
    """Hooks on every bottleneck of each module: the (H, W) each layer outputs, filled in by a forward pass."""
    sizes: list[list[tuple[int, int]]] = [[] for _ in modules]
    for i, module in enumerate(modules):
        for layer in module:
            layer.register_forward_hook(lambda _m, _i, out, i=i: sizes[i].append(tuple(out.shape[-2:])))
    return sizes


# ---- switches where the paper leaves a choice open ---------------------------------------------------------------
@pytest.mark.parametrize("downsample, encoder, decoder", [
    # each encoder module halves in its first bottleneck; the decoder doubles in its last (the paper's reading)
    ("first", [[8, 8, 8], [4, 4, 4], [2, 2, 2]], [[2, 2, 4], [4, 4, 8], [8, 8, 16]]),
    # halves in the last bottleneck; the decoder doubles in its first
    ("last", [[16, 16, 8], [8, 8, 4], [4, 4, 2]], [[4, 4, 4], [8, 8, 8], [16, 16, 16]]),
    # the first module keeps the resolution: a 4 x 4 bottleneck instead of 2 x 2
    ("deep", [[16, 16, 16], [8, 8, 8], [4, 4, 4]], [[4, 4, 8], [8, 8, 16], [16, 16, 16]]),
])
def test_downsample_switch_moves_the_encoder_strides(downsample, encoder, decoder):
    torch.manual_seed(0)
    net = FRADNetwork(16, downsample=downsample).eval()
    enc, dec = _output_sizes(net.encoder), _output_sizes(net.decoder)
    z = torch.randn(2, 16, 16, 16)
    assert net(z).shape == z.shape
    assert enc == [[(n, n) for n in module] for module in encoder]
    assert dec == [[(n, n) for n in module] for module in decoder]


def test_gfe_at_every_level_adds_global_features_to_every_skip():
    torch.manual_seed(0)
    seen: dict[str, list[tuple[int, ...]]] = {}
    for gfe_at in ("bottleneck", "every_level"):
        net = FRADNetwork(16, gfe_at=gfe_at).eval()
        gfes = [m for m in net.modules() if isinstance(m, GlobalFeatureExtraction)]
        seen[gfe_at] = []
        for g in gfes:
            g.register_forward_hook(lambda _m, inp, _o, key=gfe_at: seen[key].append(tuple(inp[0].shape[-2:])))
        z = torch.randn(2, 16, 16, 16)
        assert net(z).shape == z.shape
        skip_in = 16 + 32 if gfe_at == "every_level" else 16 + 16  # decoder output + skip (with its g: 2 x width)
        assert [f[0].in_channels for f in net.fuse] == [skip_in, skip_in]
    assert sorted(seen["bottleneck"]) == [(2, 2)]
    assert sorted(seen["every_level"]) == [(2, 2), (4, 4), (8, 8)]  # the bottleneck and both skips
    off = FRADNetwork(16, gfe=False, gfe_at="every_level")
    assert not any(isinstance(m, GlobalFeatureExtraction) for m in off.modules())


def test_level_norm_gives_levels_an_equal_share():
    a = torch.full((1, 4, 8, 8), 5.0)  # stride-8 level: 4 channels, nothing cancels when pooled to 4
    b = torch.tensor([3.0, -1.0] * 4).view(1, 8, 1, 1).expand(1, 8, 4, 4)  # signed: pairs cancel to 1 when pooled
    none = fuse_levels([a, b], 4)
    assert torch.allclose(none[:, :2], torch.tensor(5.0)) and torch.allclose(none[:, 2:], torch.tensor(1.0))
    l2 = fuse_levels([a, b], 4, "l2")  # unit vectors before eq. 2: b still loses most of its norm to cancelling
    assert torch.allclose(l2[:, :2], torch.tensor(0.5)) and torch.allclose(l2[:, 2:], torch.tensor(40 ** -0.5))
    pooled = fuse_levels([a, b], 4, "pooled_l2")  # unit vectors after eq. 2: an equal share
    assert torch.allclose(pooled, torch.tensor(0.5))
    scale = torch.rand(1, 1, 4, 4) * 10 + 0.1  # a positive per-position scale of one level
    for norm in ("l2", "pooled_l2"):
        assert torch.allclose(fuse_levels([a, b * scale], 4, norm), fuse_levels([a, b], 4, norm), atol=1e-6)
    assert not torch.allclose(fuse_levels([a, b * scale], 4), none)


def test_small_map_grid_clamps_k_to_the_bottleneck():
    torch.manual_seed(0)
    keep = FRADNetwork(64, grid=4, input_size=(16, 16))  # 16 -> 8 -> 4 -> 2: a 2 x 2 bottleneck, K = 4
    clamp = FRADNetwork(64, grid=4, small_map_grid="clamp", input_size=(16, 16), gfe_at="every_level")
    assert keep.gfe is not None and clamp.gfe is not None and clamp.skip_gfe is not None
    assert (keep.gfe.grid, keep.gfe.fc.out_features) == (4, 64 // 16)
    assert (clamp.gfe.grid, clamp.gfe.fc.out_features) == (2, 64 // 4)
    assert keep.gfe.out_channels == clamp.gfe.out_channels == 128  # g has C_i channels either way
    assert [g.grid for g in clamp.skip_gfe] == [4, 4]  # the 4 x 4 and 8 x 8 skips are not smaller than K
    t = torch.randn(2, 64, 2, 2)
    regions = torch.nn.functional.adaptive_avg_pool2d(t, 4)  # what "keep" averages: each position 4 times
    assert torch.equal(regions[..., 0, 0], regions[..., 1, 1]) and torch.equal(regions[..., 0, 0], t[..., 0, 0])
    assert clamp.eval()(torch.randn(2, 64, 16, 16)).shape == (2, 64, 16, 16)
    with pytest.raises(ValueError, match="clamp"):
        FRADNetwork(16, small_map_grid="clamp")  # its layer sizes depend on the map size


def test_switches_run_save_and_reload_with_a_validation_curve(demo_root, tmp_path):
    settings = resolve_settings("frad", "cpu", None, TINY + [
        "method.frad.downsample=deep", "method.frad.gfe_at=every_level", "method.frad.level_norm=pooled_l2",
        "method.frad.small_map_grid=clamp", "method.frad.grid=4", "train.device=cpu"])
    model = create_model(settings)
    cat = load_category(demo_root, "widget")
    model.fit(FitData(train=cat.train[:12], val=cat.train[12:], transform=model.make_transform()),
              TrainOptions(progress=False))
    assert model.build_info == {"feature_size": [8, 8]}  # 64 px at stride 8; the clamped GFE depends on it
    history = model.fit_info["history"]
    # 12 images at batch 4: 3 steps per epoch; the reconstruction loss on the 4 held-out normal images each epoch
    assert [h["steps"] for h in history] == [3, 6]
    assert all(np.isfinite(h["val_loss_rec"]) and 0.0 < h["val_loss_rec"] < 2.0 for h in history)
    assert history[0]["val_loss_rec"] != history[1]["val_loss_rec"]
    maps, scores = _predict(model, cat.test[:4])
    model.save(tmp_path / "m")
    maps2, scores2 = _predict(load_model(tmp_path / "m", device="cpu"), cat.test[:4])
    assert torch.equal(maps, maps2) and torch.equal(scores, scores2)


# ---- the paper profile end to end on the CPU ---------------------------------------------------------------------
def test_paper_profile_runs_end_to_end(demo_root, tmp_path):
    settings = resolve_settings("frad", "paper", None, ["backbone.weights=random", "data.image_size=64",
                                                       "train.device=cpu", "method.frad.epochs=1"])
    assert settings.backbone.name == "wide_resnet50_2.tv_in1k"
    m = settings.method
    assert (m.channels, m.grid, m.batch_size, m.stages, m.downsample, m.gfe_at, m.level_norm, m.small_map_grid) == \
        (512, 4, 16, [2, 3], "first", "bottleneck", "none", "keep")
    model = create_model(settings)
    cat = load_category(demo_root, "tile")
    model.fit(FitData(train=cat.train[:4], val=cat.train[4:6], transform=model.make_transform()),
              TrainOptions(progress=False))
    assert model.backbone.channels == [512, 1024]  # WRN50-2 layer2 and layer3
    assert model.fit_info["feature_shape"] == [512, 8, 8]  # z: C = 512 at stride 8 of 64 px
    history = model.fit_info["history"]
    assert len(history) == 1 and {"loss", "loss_rec", "loss_ssl", "val_loss_rec", "steps"} <= set(history[0])
    maps, scores = _predict(model, cat.test[:4])
    assert maps.shape == (4, 64, 64) and scores.shape == (4,)
    assert torch.isfinite(maps).all() and torch.isfinite(scores).all()
    model.save(tmp_path / "paper")
    maps2, scores2 = _predict(load_model(tmp_path / "paper", device="cpu"), cat.test[:4])
    assert torch.equal(maps, maps2) and torch.equal(scores, scores2)
