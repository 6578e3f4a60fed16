"""N-Net: module behaviour on hand-made tensors, the loss schedule, Eq. 8, a demo run (persistence, resume,
seeding: tests/test_method_contract.py)."""

from __future__ import annotations

import pytest
import torch

from adcore.methods import create_model, resolve_settings
from adcore.methods.nnet.anomaly_map import combine, stage_maps
from adcore.methods.nnet.ffc import FusionCompression
from adcore.methods.nnet.fpm import FeatureProjection
from adcore.methods.nnet.loss import align_beta, distill_loss, total_loss
from adcore.methods.nnet.nfs import NormalFeatureStore, entropy_loss

TINY = ["backbone.weights=random", "data.image_size=64", "method.nnet.epochs=1", "method.nnet.nfs_items=8"]


def test_fpm_shape_and_only_reweights():
    torch.manual_seed(0)
    fpm = FeatureProjection(40, reduction=4).eval()
    x = torch.randn(2, 40, 8, 6)
    y = fpm(x)
    assert y.shape == x.shape
    # Every value is the input times a weight in (0, 1): sign kept, magnitude not increased.
    ratio = y / x
    assert torch.all(ratio > 0) and torch.all(ratio < 1)
    a_h, a_w = fpm.weights(x)
    assert a_h.shape == (2, 40, 8, 1) and a_w.shape == (2, 40, 1, 6)
    torch.testing.assert_close(y, x * a_h * a_w)
    assert torch.count_nonzero(fpm(torch.zeros(1, 40, 5, 5))) == 0


def test_nfs_recall_is_convex_combination_and_shrinks_small_weights():
    torch.manual_seed(0)
    nfs = NormalFeatureStore(16, items=10, shrink=1.0)
    x = torch.randn(3, 16, 4, 5)
    recalled, w = nfs(x)
    assert recalled.shape == x.shape and w.shape == (3 * 4 * 5, 10)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(1), torch.ones(60))
    queries = x.permute(0, 2, 3, 1).reshape(-1, 16)
    torch.testing.assert_close(recalled.permute(0, 2, 3, 1).reshape(-1, 16), w @ nfs.memory)
    # Weights whose softmax value is below the threshold 1/N are exactly zero, the others survive.
    sim = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(nfs.memory, dim=1).t()
    soft = torch.softmax(sim, 1)
    small = soft < nfs.threshold
    assert small.any() and (~small).any()
    assert torch.all(w[small] == 0) and torch.all(w[~small] > 0)
    # A query equal to one item, with a sharp store, recalls (almost) only that item.
    sharp = NormalFeatureStore(4, items=4, shrink=1.0)  # softmax weights e/(e+3) and 1/(e+3); threshold 1/4
    with torch.no_grad():
        sharp.memory.copy_(torch.eye(4) * 2)
    r, w1 = sharp(torch.tensor([0.0, 0.0, 5.0, 0.0]).view(1, 4, 1, 1))
    assert w1[0].argmax() == 2 and torch.count_nonzero(w1[0]) == 1
    torch.testing.assert_close(r.flatten(), sharp.memory[2])
    assert entropy_loss(w1) < 1e-6 < entropy_loss(w)


def test_beta_schedule_switches_at_epoch_20():
    cfg = resolve_settings("nnet", "paper", None, ["backbone.weights=random"]).method
    assert cfg.align_epochs == 20 and cfg.alpha == 1.2 and cfg.delta == 0.002 and cfg.lr == 0.05
    assert [align_beta(e, cfg.align_epochs) for e in (0, 19, 20, 199)] == [1.0, 1.0, 0.0, 0.0]
    assert total_loss(1.0, 2.0, 3.0, 100.0, alpha=1.2, beta=0.0, delta=0.002) == pytest.approx(1 + 2.4 + 0.2)
    assert total_loss(1.0, 2.0, 3.0, 100.0, alpha=1.2, beta=1.0, delta=0.002) == pytest.approx(1 + 2.4 + 3 + 0.2)


def test_cosine_losses_on_hand_made_features():
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    # Channel vectors of b per position: (1,0), (0,1), (0,-1), (-1,0) -> cosine distances 0, 1, 1, 2.
    b = torch.tensor([[[1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [-1.0, 0.0]]]).unsqueeze(0)
    # L_KD's per-position distance is the shared cosine map (tests/test_common.py): 0, 1, 1, 2 here.
    assert float(distill_loss([a, a], [b, a])) == pytest.approx(1.0)  # mean 1.0 + 0.0


def test_eq8_map_formula_on_hand_made_maps():
    m = [torch.full((1, 2, 2), v) for v in (1.0, 2.0, 3.0)]  # M1, M2, M3
    f = [torch.full((1, 2, 2), v) for v in (10.0, 20.0, 30.0)]  # M4, M5, M6
    # (M1 + M6)(M2 + M5)(M3 + M4) = 31 * 22 * 13
    torch.testing.assert_close(combine(m, f), torch.full((1, 2, 2), 31.0 * 22.0 * 13.0))
    torch.testing.assert_close(combine(m, None), torch.full((1, 2, 2), 6.0))
    torch.testing.assert_close(combine(None, f), torch.full((1, 2, 2), 60.0))
    # Stage maps are 1 - cos, upsampled to one size.
    a = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)]
    maps = stage_maps(a, [x.clone() for x in a], (8, 8))
    assert [tuple(x.shape) for x in maps] == [(2, 8, 8), (2, 8, 8)]
    assert max(float(x.abs().max()) for x in maps) < 1e-5
    neg = stage_maps(a, [-x for x in a], (16, 16))
    torch.testing.assert_close(neg[1], torch.full((2, 16, 16), 2.0))


def test_ffc_fuses_to_compressed_scale():
    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 12, 8, 8), torch.randn(2, 16, 4, 4)]
    ffc = FusionCompression([8, 12, 16], [4, 8, 16], out_channels=32, blocks=4)
    assert ffc(feats).shape == (2, 32, 2, 2)
    assert len(ffc.compress) == 4
    plain = FusionCompression([8, 12, 16], [4, 8, 16], out_channels=32, blocks=3, fuse=False)
    assert plain(feats).shape == (2, 32, 2, 2) and isinstance(plain.mix, torch.nn.Identity)


@pytest.mark.parametrize("branch", ["both", "reverse", "forward"])
def test_branches_and_switches_build(branch):
    config = resolve_settings("nnet", "cpu", None, [*TINY, f"method.nnet.branch={branch}", "method.nnet.fpm=false"])
    model = create_model(config)
    net = model.new_network({"channels": list(model.backbone.channels), "strides": list(model.backbone.strides)})
    assert hasattr(net, "student") == (branch != "reverse")
    assert hasattr(net, "decoder") == (branch != "forward")
    assert not hasattr(net, "fpm_t")
    maps = model.predict_raw(torch.randn(2, 3, 64, 64)).maps
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()


def test_demo_run_clearly_above_chance(fit_and_auroc):
    # Offline Lite0 weights ship with the package dependency; a missing package is an error, never a skip.
    settings = resolve_settings("nnet", "cpu", None, ["data.image_size=64", "method.nnet.epochs=10", "train.seed=0"])
    _, auroc = fit_and_auroc(settings, "tile")
    assert auroc > 0.7, auroc
