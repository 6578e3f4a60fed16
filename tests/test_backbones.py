"""Feature extractors: offline weights, stage order, truncation, freezing and every weight source's failure mode."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from adcore.backbones import OFFLINE_MEAN_STD, OFFLINE_PACKAGES, FeatureExtractor, build_backbone
from adcore.config import BackboneConfig
from adcore.errors import WeightSourceError


def _package_file() -> Path:
    module = importlib.import_module(OFFLINE_PACKAGES["tf_efficientnet_lite0"])
    return sorted((Path(module.__file__).parent / "models").glob("*.pth"))[0]


@pytest.fixture(scope="module")
def lite0_offline() -> FeatureExtractor:
    return FeatureExtractor("tf_efficientnet_lite0", (8, 16), "offline")


def test_offline_lite0_weights_come_from_the_package(lite0_offline):
    source = torch.load(_package_file(), map_location="cpu", weights_only=True)
    # lukemelas' names, mapped by position into timm's: the stem conv is first, the first block's depthwise next.
    assert torch.equal(lite0_offline.body.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(lite0_offline.body.state_dict()["bn1.running_var"], source["_bn0.running_var"])
    block = lite0_offline.body.state_dict()["blocks.0.0.conv_dw.weight"]
    assert torch.equal(block, source["_blocks.0._depthwise_conv.weight"])
    # The package's weights were trained with mean = std = 0.5, not ImageNet's statistics.
    assert (lite0_offline.mean, lite0_offline.std) == OFFLINE_MEAN_STD
    assert lite0_offline.weights_sha256 not in ("random", "") and len(lite0_offline.weights_sha256) == 16
    assert lite0_offline.weights_sha256 in lite0_offline.fingerprint


def test_offline_weights_are_deterministic_and_differ_from_random(lite0_offline):
    again = FeatureExtractor("tf_efficientnet_lite0", (8, 16), "offline")
    assert again.weights_sha256 == lite0_offline.weights_sha256
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(again(x), lite0_offline(x), strict=True):
        assert torch.equal(a, b)
    rand = FeatureExtractor("tf_efficientnet_lite0", (8, 16), "random")
    assert rand.weights_sha256 == "random" and rand.fingerprint != lite0_offline.fingerprint
    assert not torch.equal(rand(x)[0], lite0_offline(x)[0])


@pytest.mark.parametrize("name, strides, channels", [
    ("tf_efficientnet_lite0", (8, 16), [40, 112]),
    ("tf_efficientnet_lite0", (16, 8), [112, 40]),
    ("tf_efficientnet_lite0", (4, 8, 16, 32), [24, 40, 112, 320]),
    ("resnet18", (8, 16), [128, 256]),
    ("resnet18", (32, 4), [512, 64]),
])
def test_stages_come_in_the_requested_order(name, strides, channels):
    fe = FeatureExtractor(name, strides, "random")
    assert fe.strides == strides and fe.channels == channels
    out = fe(torch.zeros(1, 3, 64, 64))
    assert [o.shape[1] for o in out] == channels
    assert [64 // o.shape[-1] for o in out] == list(strides)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_truncated_after_the_deepest_stage(name):
    def n_params(strides):
        return sum(p.numel() for p in FeatureExtractor(name, strides, "random").parameters())

    shallow, middle, deep = n_params((4,)), n_params((8, 16)), n_params((4, 8, 16, 32))
    assert shallow < middle < deep
    assert n_params((16, 8)) == middle  # the order does not change what is kept
    fe = FeatureExtractor(name, (8,), "random")
    names = [n for n, _ in fe.body.named_parameters()]
    if name == "resnet18":
        assert not any(n.startswith(("layer3", "layer4", "fc")) for n in names)
    else:  # stride 8 is the end of block 2 of EfficientNet-Lite0: blocks 3.. and the head are gone
        assert not any(n.startswith(("blocks.3", "blocks.6", "conv_head", "classifier")) for n in names)


def test_frozen_stays_in_eval_and_trainable_trains():
    frozen = FeatureExtractor("resnet18", (8,), "random")
    assert not any(p.requires_grad for p in frozen.parameters())
    parent = torch.nn.Sequential(frozen)
    parent.train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    # BatchNorm statistics do not move in a forward pass after .train()
    before = frozen.body.bn1.running_mean.clone()
    frozen(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, frozen.body.bn1.running_mean)

    student = FeatureExtractor("resnet18", (8,), "random", trainable=True)
    assert all(p.requires_grad for p in student.parameters())
    student.train()
    assert student.training
    student.eval()
    assert not student.training


@pytest.mark.timeout(60)
def test_hub_without_network_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(WeightSourceError) as info:
        FeatureExtractor("resnet18", (8,), "hub")
    message = str(info.value)
    assert message.startswith("backbone 'resnet18': pretrained weights could not be loaded from the timm hub")
    assert "backbone.weights" in message  # says what to do instead


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weight_file_round_trip(tmp_path, suffix):
    torch.manual_seed(1)
    source = FeatureExtractor("resnet18", (8, 16), "random")
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.body.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": source.body.state_dict()}, path)  # the common checkpoint wrapping
    loaded = FeatureExtractor("resnet18", (8, 16), str(path))
    for key, value in source.body.state_dict().items():
        assert torch.equal(loaded.body.state_dict()[key], value), key
    assert loaded.weights_sha256 != "random"
    x = torch.randn(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(source(x), loaded(x), strict=True))
    # A file holding a full model's weights (with later stages) fits a truncated extractor too.
    assert FeatureExtractor("resnet18", (8,), str(path)).weights_sha256 != loaded.weights_sha256


def test_weight_source_errors(tmp_path):
    with pytest.raises(WeightSourceError, match=r"not 'hub', 'offline', 'random', an s3:// URI or an existing file"):
        FeatureExtractor("resnet18", (8,), str(tmp_path / "missing.safetensors"))
    wrong = tmp_path / "lite0.pth"
    torch.save(FeatureExtractor("tf_efficientnet_lite0", (8,), "random").body.state_dict(), wrong)
    with pytest.raises(WeightSourceError, match=r"lite0\.pth.* do not fit resnet18: \d+ parameters missing"):
        FeatureExtractor("resnet18", (8,), str(wrong))
    resnet34 = tmp_path / "r34.pth"
    state18 = FeatureExtractor("resnet18", (8,), "random").body.state_dict()
    torch.save({k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if v.ndim else v for k, v in state18.items()}, resnet34)
    with pytest.raises(WeightSourceError, match=r"do not fit resnet18: shape mismatch"):
        FeatureExtractor("resnet18", (8,), str(resnet34))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightSourceError, match=r"garbage\.safetensors.*unreadable"):
        FeatureExtractor("resnet18", (8,), str(garbage))
    scalar = tmp_path / "list.pth"
    torch.save([1, 2, 3], scalar)
    with pytest.raises(WeightSourceError, match=r"expected a state dict, got list"):
        FeatureExtractor("resnet18", (8,), str(scalar))
    with pytest.raises(WeightSourceError, match=r"no offline weights package"):
        FeatureExtractor("resnet18", (8,), "offline")
    with pytest.raises(WeightSourceError, match=r"not a timm model"):
        FeatureExtractor("no_such_net", (8,), "random")
    with pytest.raises(WeightSourceError, match=r"no stage with stride \[64\]"):
        FeatureExtractor("resnet18", (8, 64), "random")


def test_build_backbone_without_weights_keeps_the_offline_normalisation():
    cfg = BackboneConfig(name="tf_efficientnet_lite0", weights="offline")
    fe = build_backbone(cfg, (8, 16), load_weights=False)
    assert (fe.mean, fe.std) == OFFLINE_MEAN_STD and fe.weights_sha256 == "random"
    fe = build_backbone(BackboneConfig(name="resnet18", weights="random"), (8,))
    assert fe.weights_sha256 == "random" and not fe.training


# ---- torchvision's own weight files (the papers' reference code loads torchvision's ImageNet weights) -------------
def _torchvision_model(name: str, seed: int) -> torch.nn.Module:
    """A torchvision ResNet with seeded weights and non-trivial BatchNorm statistics, in eval mode."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # weights=None leaves mean 0, var 1, affine 1/0: make them count
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
    return model.eval()


def _torchvision_layer2_3(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        h = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
        f2 = model.layer2(h)
        return [f2, model.layer3(f2)]


def _assert_features_equal(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        # 1e-5 relative to the features' magnitude (channels_last and contiguous convolutions round differently)
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max())), float((a - b).abs().max())


def test_torchvision_wide_resnet_file_loads_into_the_timm_extractor(tmp_path):
    # A file in torchvision's format, like wide_resnet50_2-95faca4d.pth: torchvision's names, fc.* and layer4 included.
    model = _torchvision_model("wide_resnet50_2", seed=3)
    path = tmp_path / "wide_resnet50_2-tv.pth"
    torch.save(model.state_dict(), path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {"conv1.weight", "layer1.0.conv1.weight", "fc.weight", "layer4.2.bn3.running_var"} <= set(state)
    fe = build_backbone(BackboneConfig(name="wide_resnet50_2.tv_in1k", weights=str(path)), (8, 16))
    assert fe.channels == [512, 1024] and fe.weights_sha256 not in ("random", "from-model-file")
    assert not any(k.startswith(("fc.", "layer4.")) for k in fe.body.state_dict())  # dropped, not an error
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _assert_features_equal(fe(x), _torchvision_layer2_3(model, x))


def test_torchvision_file_from_s3_and_with_a_dataparallel_prefix(tmp_path, s3_endpoint, monkeypatch):
    import boto3

    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                       "AWS_CONFIG_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ADCORE_WEIGHTS_CACHE", str(tmp_path / "weights-cache"))  # the download cache: this test's own
    model = _torchvision_model("resnet18", seed=4)
    path = tmp_path / "resnet18-tv.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="adcore-weights-test")
    client.upload_file(str(path), "adcore-weights-test", "tv/resnet18-tv.pth")
    fe = FeatureExtractor("resnet18.tv_in1k", (8, 16), "s3://adcore-weights-test/tv/resnet18-tv.pth")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _assert_features_equal(fe(x), _torchvision_layer2_3(model, x))
    assert FeatureExtractor("resnet18.tv_in1k", (8, 16), str(path)).weights_sha256 == fe.weights_sha256

    # The object changes under the same URI: the weights cache is keyed by its content, so the new one is fetched.
    other = _torchvision_model("resnet18", seed=5)
    torch.save(other.state_dict(), path)
    client.upload_file(str(path), "adcore-weights-test", "tv/resnet18-tv.pth")
    again = FeatureExtractor("resnet18.tv_in1k", (8, 16), "s3://adcore-weights-test/tv/resnet18-tv.pth")
    assert again.weights_sha256 != fe.weights_sha256
    _assert_features_equal(again(x), _torchvision_layer2_3(other, x))
    assert len(list((tmp_path / "weights-cache").glob("*/resnet18-tv.pth"))) == 2


def test_paper_profiles_name_torchvision_weights():
    from adcore.config import PROFILES
    from adcore.methods import resolve_settings

    # timm's untagged wide_resnet50_2 / resnet18 resolve to its own recipes (racm_in1k, a1_in1k), not torchvision's
    assert PROFILES["paper"]["backbone"]["name"] == "wide_resnet50_2.tv_in1k"
    assert resolve_settings("cfa", "paper").backbone.name == "wide_resnet50_2.tv_in1k"
    assert resolve_settings("prn", "paper").backbone.name == "resnet18.tv_in1k"
    import timm

    assert timm.create_model("wide_resnet50_2.tv_in1k", pretrained=False).pretrained_cfg["url"].endswith(
        "wide_resnet50_2-95faca4d.pth")
