"""N-Net: module behaviour on hand-made tensors, the loss schedule, Eq. 8, a demo run (persistence, resume,
seeding: tests/test_method_contract.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adcore.errors import ConfigError
from adcore.methods import create_model, resolve_settings
from adcore.methods.nnet.anomaly_map import combine, score_map, stage_maps
from adcore.methods.nnet.ffc import FusionCompression
from adcore.methods.nnet.fpm import FeatureProjection
from adcore.methods.nnet.loss import align_beta, align_loss, distill_loss, total_loss
from adcore.methods.nnet.nfs import NormalFeatureStore, entropy_loss, sample_rows
from adcore.postprocess import gaussian_blur, upsample

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
    # A convex combination of the items: weights >= 0 summing to 1, recall = weights @ memory.
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(1), torch.ones(60))
    torch.testing.assert_close(recalled.permute(0, 2, 3, 1).reshape(-1, 16), w @ nfs.memory)
    # The weights are the cosine similarities (no softmax): those <= 1/N are exactly zero, the others are the
    # similarities divided by their sum.
    queries = x.permute(0, 2, 3, 1).reshape(-1, 16)
    sim = F.normalize(queries, dim=1) @ F.normalize(nfs.memory, dim=1).t()
    small = sim <= 1 / 10
    assert small.any() and (~small).any()
    assert torch.all(w[small] == 0) and torch.all(w[~small] > 0)
    kept = torch.where(small, torch.zeros_like(sim), sim)
    torch.testing.assert_close(w, kept / kept.sum(1, keepdim=True))


def test_nfs_on_hand_made_items():
    nfs = NormalFeatureStore(4, items=4, shrink=1.0)  # threshold 1/4
    with torch.no_grad():
        nfs.memory.copy_(torch.eye(4) * 2)
    # Equal to one item: cosine 1 with it, 0 with the others -> recalls that item alone.
    r, w = nfs(torch.tensor([0.0, 0.0, 5.0, 0.0]).view(1, 4, 1, 1))
    torch.testing.assert_close(w[0], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(r.flatten(), nfs.memory[2])
    # (3, 4, 0, 0) has cosines 0.6, 0.8, 0, 0: weights 0.6 / 1.4, 0.8 / 1.4.
    _, w = nfs(torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 4, 1, 1))
    torch.testing.assert_close(w[0], torch.tensor([0.6, 0.8, 0.0, 0.0]) / 1.4)
    # (1, 0.2, 0, 0): cosine 0.196 with item 1 is below 1/4 and shrunk away.
    _, w = nfs(torch.tensor([1.0, 0.2, 0.0, 0.0]).view(1, 4, 1, 1))
    torch.testing.assert_close(w[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # No weight above the threshold (all cosines <= 0): the most similar item is recalled.
    r, w = nfs(torch.tensor([-1.0, -3.0, -2.0, -4.0]).view(1, 4, 1, 1))
    torch.testing.assert_close(w[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert entropy_loss(w) < 1e-6
    # MemAE's softmax addressing is a switch: softmax(cos) = (e, 1, 1, 1) / (e + 3), only item 3 passes 1/4.
    soft = NormalFeatureStore(4, items=4, shrink=1.0, addressing="softmax")
    with torch.no_grad():
        soft.memory.copy_(torch.eye(4))
    _, w = soft(torch.tensor([0.0, 0.0, 0.0, 1.0]).view(1, 4, 1, 1))
    torch.testing.assert_close(w[0], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_nfs_memory_init_is_sampled_f3_rows():
    # Every position of the hand-made F_3 holds a distinct vector that names it: (image, y, x, 1, ...).
    n, c, h, w = 3, 6, 4, 5
    f3 = np.zeros((n, c, h, w), np.float16)
    for i, y, x in np.ndindex(n, h, w):
        f3[i, :, y, x] = [i, y, x, 1, 1, 1]
    rows = sample_rows(f3, 8, seed=3)
    assert rows.shape == (8, c) and rows.dtype == torch.float32
    flat = np.random.default_rng(3).choice(n * h * w, size=8, replace=False)
    img, rest = np.divmod(flat, h * w)
    expected = np.stack([f3[i, :, r // w, r % w] for i, r in zip(img, rest, strict=True)]).astype(np.float32)
    torch.testing.assert_close(rows, torch.from_numpy(expected))
    assert len({tuple(r.tolist()) for r in rows}) == 8  # distinct positions
    torch.testing.assert_close(sample_rows(f3, 8, seed=3), rows)
    assert not torch.equal(sample_rows(f3, 8, seed=4), rows)
    assert sample_rows(f3[:1, :, :2, :2], 8, seed=0).shape == (8, c)  # fewer positions than items: with replacement
    nfs = NormalFeatureStore(c, items=8)
    nfs.init_from(rows)
    torch.testing.assert_close(nfs.memory.detach(), rows)


def test_fit_initialises_the_memory_from_training_f3_before_training(demo_root):
    from adcore.data.mvtec import load_category
    from adcore.methods.base import FitData, TrainOptions

    settings = resolve_settings("nnet", "cpu", None, [*TINY, "data.batch_size=2", "train.seed=5"])
    model = create_model(settings)
    cat = load_category(demo_root, "tile")
    data = FitData(train=cat.train[:4], val=[], transform=model.make_transform())
    options = TrainOptions(progress=False, stop_after_epochs=0)  # no epoch runs: the memory is the initial one
    model.fit(data, options)
    f3 = model.read_features(data.train, data.transform, options).stages[-1]
    memory = model.check_is_fitted().nfs.memory.detach()
    torch.testing.assert_close(memory, sample_rows(f3, 8, seed=5))


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
    torch.testing.assert_close(combine(m, f, "cross"), torch.full((1, 2, 2), 31.0 * 22.0 * 13.0))
    # Same-scale pairs: (M1 + M4)(M2 + M5)(M3 + M6) = 11 * 22 * 33
    torch.testing.assert_close(combine(m, f, "same"), torch.full((1, 2, 2), 11.0 * 22.0 * 33.0))
    torch.testing.assert_close(combine(m, None), torch.full((1, 2, 2), 6.0))
    torch.testing.assert_close(combine(None, f), torch.full((1, 2, 2), 60.0))
    # score_maps picks the branches whose maps enter Eq. 8 (Table 7).
    torch.testing.assert_close(score_map(m, f, "reverse"), torch.full((1, 2, 2), 6.0))
    torch.testing.assert_close(score_map(m, f, "forward"), torch.full((1, 2, 2), 60.0))
    torch.testing.assert_close(score_map(m, f, "both", "same"), torch.full((1, 2, 2), 11.0 * 22.0 * 33.0))
    torch.testing.assert_close(score_map(m, None, "reverse", "same"), torch.full((1, 2, 2), 6.0))
    with pytest.raises(ValueError, match="not computed"):
        score_map(m, None, "both")
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


# ---- a network of the cpu profile (random Lite0 student) on hand-made teacher features ---------------------------

def tiny_model(*extra: str):
    model = create_model(resolve_settings("nnet", "cpu", None, [*TINY, *extra]))
    net = model.new_network({"channels": list(model.backbone.channels), "strides": list(model.backbone.strides)})
    return model, net


def hand_made_teacher(channels, seed: int = 0) -> list[torch.Tensor]:
    """Teacher features of two 64 px images (strides 4, 8, 16): non-negative, F_3 of mean ~6.6 as a real WRN50's."""
    g = torch.Generator().manual_seed(seed)
    sizes, scales = (16, 8, 4), (1.0, 2.0, 13.2)
    return [torch.rand(2, c, s, s, generator=g) * k for c, s, k in zip(channels, sizes, scales, strict=True)]


def train_step(model, net, feats, images) -> dict:
    net.train()
    out = net(feats, images)
    loss = model._losses(out, beta=1.0)["loss"]
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return out


def bn_stats(norm: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    return norm.running_mean.clone(), norm.running_var.clone()


def test_each_fpm_batchnorm_sees_one_kind_of_input():
    torch.manual_seed(0)
    model, net = tiny_model()
    assert net.fpm_recall == "split_bn" and len(net.fpm_t[-1].norms) == 2 and len(net.fpm_t[0].norms) == 1
    feats, images = hand_made_teacher(model.backbone.channels), torch.randn(2, 3, 64, 64)
    before = copy.deepcopy(net.fpm_t[-1])  # the weights the training step's forward pass used
    f3_recalled = net.nfs(feats[-1])[0].detach()
    assert float(feats[-1].abs().mean()) > 100 * float(f3_recalled.abs().mean())  # two very different inputs
    train_step(model, net, feats, images)
    fpm = net.fpm_t[-1]
    # What F_3 alone gives to norms[0], F'_3 alone to norms[1]: each a module fed only that input.
    only_f3, only_recall = copy.deepcopy(before).train(), copy.deepcopy(before).train()
    only_f3(feats[-1], source=0)
    only_recall(f3_recalled, source=1)
    for got, want in ((fpm.norms[0], only_f3.norms[0]), (fpm.norms[1], only_recall.norms[1])):
        for a, b in zip(bn_stats(got), bn_stats(want), strict=True):
            torch.testing.assert_close(a, b)
    # At evaluation P_3 = FPM(F_3) with the trained weights and the statistics of F_3 alone.
    reference = FeatureProjection(model.backbone.channels[-1], model.config.fpm_reduction)
    state = {k: v for k, v in fpm.state_dict().items() if not k.startswith("norms.1.")}
    state.update({f"norms.0.{k}": v for k, v in only_f3.norms[0].state_dict().items() if "running" in k})
    reference.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(feats, images)["P"][-1], reference.eval()(feats[-1]))


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_fpm_recall_switch(mode):
    torch.manual_seed(0)
    model, net = tiny_model(f"method.nnet.fpm_recall={mode}")
    feats, images = hand_made_teacher(model.backbone.channels), torch.randn(2, 3, 64, 64)
    assert len(net.fpm_t[-1].norms) == 1 and hasattr(net, "fpm_r") == (mode == "separate")
    before = copy.deepcopy(net.fpm_r if mode == "separate" else net.fpm_t[-1])
    only_f3 = copy.deepcopy(net.fpm_t[-1]).train()
    f3_recalled = net.nfs(feats[-1])[0].detach()
    train_step(model, net, feats, images)
    only_f3(feats[-1])
    running = net.fpm_t[-1].norms[0].running_mean
    if mode == "separate":  # FPM_T sees F_3 only, fpm_r F'_3 only
        torch.testing.assert_close(running, only_f3.norms[0].running_mean)
        only_recall = before.train()
        only_recall(f3_recalled)
        torch.testing.assert_close(net.fpm_r.norms[0].running_mean, only_recall.norms[0].running_mean)
    else:  # round 1: the statistics of F_3 and F'_3 mixed in one BatchNorm
        assert not torch.allclose(running, only_f3.norms[0].running_mean)


def test_align_loss_does_not_reach_the_teacher_fpm():
    torch.manual_seed(0)
    model, net = tiny_model()
    feats, images = hand_made_teacher(model.backbone.channels), torch.randn(2, 3, 64, 64)
    net.train()

    def grads(loss: torch.Tensor) -> tuple[float, float]:
        net.zero_grad(set_to_none=True)
        loss.backward()
        norm = lambda ps: sum(float(p.grad.abs().sum()) for p in ps if p.grad is not None)  # noqa: E731
        return norm(net.fpm_t.parameters()), norm(net.student.parameters())

    out = net(feats, images)
    fpm_t, student = grads(align_loss(out["SF"], out["P"]))  # Eq. 3
    assert fpm_t == 0 and student > 0
    out = net(feats, images)
    fpm_t, _ = grads(distill_loss(out["SF"], out["P"]))  # the same loss without the detach would reach FPM_T
    assert fpm_t > 0
    out = net(feats, images)
    fpm_t, _ = grads(distill_loss(out["P"], out["SP"]))  # L_KD reaches FPM_T (Eq. 1)
    assert fpm_t > 0
    # In the training loss, L_align is the detached one.
    out = net(feats, images)
    parts = model._losses(out, beta=1.0)
    torch.testing.assert_close(parts["align"], align_loss(out["SF"], out["P"]).detach())


def test_score_maps_setting_and_its_check():
    torch.manual_seed(0)
    model, net = tiny_model()
    images = torch.randn(2, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        out = net(model.backbone_features(images), images)
    reverse = stage_maps(out["F"], out["D"], (16, 16))
    forward = stage_maps(out["P"], out["SP"], (16, 16))
    torch.testing.assert_close(model.combined_map(images), combine(reverse, forward, "cross"))
    model.config.pairing = "same"
    torch.testing.assert_close(model.combined_map(images), combine(reverse, forward, "same"))
    model.config.score_maps = "reverse"
    torch.testing.assert_close(model.combined_map(images), sum(reverse))
    model.config.score_maps = "forward"
    torch.testing.assert_close(model.combined_map(images), sum(forward))
    with pytest.raises(ConfigError, match="score_maps: 'both' needs maps of a branch"):
        resolve_settings("nnet", "cpu", None, [*TINY, "method.nnet.branch=reverse", "method.nnet.score_maps=both"])
    with pytest.raises(ConfigError, match="method.nnet.pairing"):
        resolve_settings("nnet", "cpu", None, [*TINY, "method.nnet.pairing=diagonal"])


def test_blur_on_the_input_map_or_on_the_combined_map(monkeypatch):
    # A hand-made combined map: one hot cell in a 16 x 16 map of a 64 px input (4 input px per map cell).
    spike = torch.zeros(1, 16, 16)
    spike[0, 8, 8] = 1.0
    images = torch.zeros(1, 3, 64, 64)
    preds = {}
    for blur in ("input", "map"):
        model, _ = tiny_model(f"method.nnet.blur={blur}")
        monkeypatch.setattr(model, "combined_map", lambda images: spike.clone())
        preds[blur] = model.predict(images)
        assert model.output_blur_sigma() == (0.0 if blur == "map" else model.settings.postprocess.blur_sigma)
    # input: upsample to 64 px, then sigma 4 input px; map: sigma 4 map cells (16 input px), then upsample.
    torch.testing.assert_close(preds["input"].maps, gaussian_blur(upsample(spike, (64, 64)), 4.0))
    torch.testing.assert_close(preds["map"].maps, upsample(gaussian_blur(spike, 4.0), (64, 64)))
    torch.testing.assert_close(preds["map"].scores, gaussian_blur(spike, 4.0).amax(dim=(1, 2)))  # Score_l
    # The map blur is four times wider: a lower peak and more mass 16 px away from it.
    peak_in, peak_map = preds["input"].maps.max(), preds["map"].maps.max()
    assert peak_map < 0.2 * peak_in
    assert preds["map"].maps[0, 34, 50] > 10 * preds["input"].maps[0, 34, 50]
    assert resolve_settings("nnet", "paper", None, ["backbone.weights=random"]).method.blur == "map"
    assert resolve_settings("nnet", "cpu", None, TINY).method.blur == "input"


def test_paper_profile_runs_end_to_end_on_the_cpu(demo_root, tmp_path):
    from adcore.data.dataset import make_loader
    from adcore.data.mvtec import load_category
    from adcore.methods import load_model
    from adcore.methods.base import FitData, TrainOptions

    settings = resolve_settings("nnet", "paper", None, [
        "backbone.weights=random", "data.image_size=64", "method.nnet.epochs=1", "data.batch_size=2",
        "train.device=cpu", "train.seed=0",
    ])
    assert settings.backbone.name.startswith("wide_resnet50_2")  # with or without a pretrained tag
    assert settings.method.decoder_blocks == [6, 4, 3] and settings.method.ffc_blocks == 4
    model = create_model(settings)
    assert model.backbone.channels == [256, 512, 1024]
    cat = load_category(demo_root, "tile")
    transform = model.make_transform()
    # Two training images, one step of batch 2: WRN50 teacher + student + de-WRN50 are 132 M trained parameters,
    # and one Adam step over them alone takes seconds on two cores.
    model.fit(FitData(train=cat.train[:2], val=[], transform=transform), TrainOptions(progress=False))
    net = model.check_is_fitted()
    assert net.nfs.memory.shape == (50, 1024) and net.fpm_t[-1].norms[1].num_batches_tracked == 1
    images = next(iter(make_loader(cat.test[:2], transform, batch_size=2)))["image"]
    pred = model.predict(images)
    assert pred.maps.shape == (2, 64, 64) and pred.scores.shape == (2,)
    assert torch.isfinite(pred.maps).all() and torch.isfinite(pred.scores).all()
    assert model.combined_map(images).shape == (2, 16, 16)  # the stride-4 map of a 64 px input
    model.save(tmp_path / "model")
    again = load_model(tmp_path / "model").predict(images)
    torch.testing.assert_close(again.maps, pred.maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.scores, pred.scores, rtol=0, atol=1e-6)


# ---- Fig. 9 loss types, Table 6 loss switches ---------------------------------------------------------------------

def test_loss_types_on_hand_made_features():
    from adcore.methods.nnet.loss import position_distance

    # Two positions (1 x 2 map) of 2-channel vectors: a = (3, 0), (1, 1); b = (0, 4), (1, 1).
    a = torch.tensor([[3.0, 1.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    b = torch.tensor([[0.0, 1.0], [4.0, 1.0]]).view(1, 2, 1, 2)
    # cosine: 1 - 0 = 1 (orthogonal), 0 (same) -> mean 0.5
    torch.testing.assert_close(position_distance(a, b, "cosine"), torch.tensor([[[1.0, 0.0]]]))
    # l1: |3 - 0| + |0 - 4| = 7, 0 -> mean 3.5; l2: 9 + 16 = 25, 0 -> mean 12.5
    torch.testing.assert_close(position_distance(a, b, "l1"), torch.tensor([[[7.0, 0.0]]]))
    torch.testing.assert_close(position_distance(a, b, "l2"), torch.tensor([[[25.0, 0.0]]]))
    # Summed over stages (Eq. 1); the second stage is a doubled copy: cosine unchanged, l1 x 2, l2 x 4.
    assert float(distill_loss([a, 2 * a], [b, 2 * b], "cosine")) == pytest.approx(0.5 + 0.5)
    assert float(distill_loss([a, 2 * a], [b, 2 * b], "l1")) == pytest.approx(3.5 + 7.0)
    assert float(distill_loss([a, 2 * a], [b, 2 * b], "l2")) == pytest.approx(12.5 + 50.0)
    assert float(align_loss([a], [b], "l2")) == pytest.approx(12.5)
    with pytest.raises(ValueError, match="'cosine', 'l1' or 'l2'"):
        position_distance(a, b, "huber")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_loss_setting_reaches_every_distillation_term_but_not_the_maps(kind):
    torch.manual_seed(0)
    model, net = tiny_model(f"method.nnet.loss={kind}")
    feats, images = hand_made_teacher(model.backbone.channels), torch.randn(2, 3, 64, 64)
    net.train()
    out = net(feats, images)
    parts = model._losses(out, beta=1.0)
    torch.testing.assert_close(parts["rkd"], distill_loss(out["F"], out["D"], kind).detach())
    torch.testing.assert_close(parts["kd"], distill_loss(out["P"], out["SP"], kind).detach())
    torch.testing.assert_close(parts["align"], align_loss(out["SF"], out["P"], kind).detach())
    assert float(parts["rkd"]) > 2 * float(distill_loss(out["F"], out["D"], "cosine").detach())  # not the cosine
    # The anomaly maps stay Eq. 2's cosine distance whatever the training loss.
    model.network = net.eval()
    with torch.no_grad():
        out = net(model.backbone_features(images), images)
    expected = combine(stage_maps(out["F"], out["D"], (16, 16)), stage_maps(out["P"], out["SP"], (16, 16)))
    torch.testing.assert_close(model.combined_map(images), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="method.nnet.loss"):
        resolve_settings("nnet", "cpu", None, [*TINY, "method.nnet.loss=huber"])


def table6_grads(*extra: str) -> dict[str, float]:
    """Gradient sizes of one training step's loss (beta as the schedule gives for epoch 0) per trained part."""
    torch.manual_seed(0)
    model, net = tiny_model("method.nnet.nfs=false", "method.nnet.ffc=false", *extra)
    feats, images = hand_made_teacher(model.backbone.channels), torch.randn(2, 3, 64, 64)
    net.train()
    parts = model._losses(net(feats, images), beta=align_beta(0, model.config.align_epochs))
    parts["loss"].backward()
    size = lambda m: sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)  # noqa: E731
    return {"student": size(net.student), "fpm_s": size(net.fpm_s), "decoder": size(net.decoder),
            "kd": float(parts["kd"]), "align": float(parts["align"])}


def test_table6_rows_are_expressed_by_alpha_and_align_epochs():
    # Row 1, L_RKD only: the forward branch gets no gradient at all (it is not constrained).
    rkd_only = table6_grads("method.nnet.alpha=0", "method.nnet.align_epochs=0")
    assert rkd_only["student"] == 0 and rkd_only["fpm_s"] == 0 and rkd_only["decoder"] > 0
    assert rkd_only["kd"] == 0 and rkd_only["align"] == 0
    # Row 3, + L_align: S1 learns, FPM_S does not (its maps need forward_map=raw).
    align_only = table6_grads("method.nnet.alpha=0", "method.nnet.align_epochs=2")
    assert align_only["student"] > 0 and align_only["fpm_s"] == 0 and align_only["align"] > 0
    # Row 2, + L_KD: S1 and FPM_S learn through L_KD alone.
    kd_only = table6_grads("method.nnet.align_epochs=0")
    assert kd_only["student"] > 0 and kd_only["fpm_s"] > 0 and kd_only["kd"] > 0 and kd_only["align"] == 0
    # Row 4, both.
    both = table6_grads()
    assert both["student"] > 0 and both["fpm_s"] > 0 and both["kd"] > 0 and both["align"] > 0


def test_forward_map_raw_scores_sf_against_p():
    torch.manual_seed(0)
    model, net = tiny_model("method.nnet.forward_map=raw")
    model.network = net.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(model.backbone_features(images), images)
    reverse = stage_maps(out["F"], out["D"], (16, 16))
    raw = stage_maps(out["P"], out["SF"], (16, 16))
    torch.testing.assert_close(model.combined_map(images), combine(reverse, raw), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model.combined_map(images), combine(reverse, stage_maps(out["P"], out["SP"], (16, 16))))


# ---- inference copy: BatchNorms folded, one branch skipped when not scored -----------------------------------------

def test_inference_copy_gives_the_same_maps_and_follows_weight_changes():
    from adcore.methods.common.distances import cosine_distance_map
    from adcore.methods.nnet.anomaly_map import cosine_distance

    torch.manual_seed(0)
    model, net = tiny_model()
    g = torch.Generator().manual_seed(1)
    for m in net.modules():  # trained-looking BatchNorm statistics, far from the (0, 1) of a new module
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    net.eval()
    images = torch.randn(3, 3, 64, 64)
    feats = model.backbone_features(images)
    with torch.no_grad():
        out = net(feats, images)
    for a, b in zip(out["F"], out["D"], strict=True):
        torch.testing.assert_close(cosine_distance(a, b), cosine_distance_map(a, b), rtol=0, atol=1e-6)
    reference = combine(stage_maps(out["F"], out["D"], (16, 16)), stage_maps(out["P"], out["SP"], (16, 16)))
    torch.testing.assert_close(model.combined_map(images), reference, rtol=0, atol=1e-5)
    fast = model.inference_network(feats, images, "both")
    norms = lambda m: sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert norms(fast.student) == 0 and norms(fast.decoder) == 0 < norms(net.decoder)
    assert norms(fast.fpm_t[-1]) == 2  # its convolutions serve F_3 and F'_3: not folded
    assert model.inference_network(feats, images, "both") is fast  # cached
    # Only the scored branch runs.
    assert "SP" not in fast(feats, images, "reverse") and "D" not in fast(feats, images, "forward")
    # An in-place weight change (an optimizer step, load_state_dict) rebuilds the copy.
    with torch.no_grad():
        net.decoder.stages[0][0].body[0].weight.mul_(2.0)
        out = net(feats, images)
    assert model.inference_network(feats, images, "both") is not fast
    reference = combine(stage_maps(out["F"], out["D"], (16, 16)), stage_maps(out["P"], out["SP"], (16, 16)))
    torch.testing.assert_close(model.combined_map(images), reference, rtol=0, atol=1e-5)
