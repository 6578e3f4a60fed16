"""Settings resolution: profiles, params.yaml, --set overrides and the error messages for bad keys and values."""

from __future__ import annotations

import pytest

from adcore.config import PROFILES, RunConfig, deep_merge, parse_override
from adcore.errors import ConfigError
from adcore.methods import resolve_settings as resolve
from adcore.methods import settings_from_dict
from adcore.methods.patchcore import PatchCoreConfig


def test_cpu_and_paper_profiles_differ_where_the_papers_say():
    cpu = resolve("patchcore", "cpu")
    paper = resolve("patchcore", "paper")
    assert isinstance(cpu, RunConfig) and cpu.profile == "cpu" and paper.profile == "paper"
    assert (cpu.backbone.name, cpu.backbone.weights) == ("tf_efficientnet_lite0", "offline")
    # torchvision's ImageNet weights, as the papers' reference code (timm's untagged name is its racm_in1k recipe)
    assert (paper.backbone.name, paper.backbone.weights) == ("wide_resnet50_2.tv_in1k", "hub")
    # PatchCore's own paper profile crops 224 after resizing to 256; the cpu profile does not crop.
    assert (paper.data.image_size, paper.data.crop_size, paper.data.input_size) == (256, 224, 224)
    assert (cpu.data.image_size, cpu.data.crop_size, cpu.data.input_size) == (256, None, 256)
    assert cpu.method.coreset_ratio == pytest.approx(0.01)  # cpu-sized; the paper profile keeps 0.1
    assert paper.method.coreset_ratio == pytest.approx(0.1)
    # The method section is stored complete (defaults filled in), so a saved model records every setting.
    assert set(cpu.to_dict()["method"]) == {"coreset_ratio", "coreset_min", "projection_dim", "embedding_dim",
                                            "patch_size", "reweight_k", "reweight", "chunk_size"}
    assert resolve("patchcore").profile == "cpu"  # the default profile


def test_params_layer_over_profile_and_overrides_over_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "profile: paper\n"
        "data: {image_size: 96, batch_size: 3}\n"
        "backbone: {weights: random}\n"
        "method:\n"
        "  patchcore: {coreset_ratio: 0.25, reweight_k: 5}\n"
        "  cfa: {epochs: 7}\n"  # another method's section is allowed and ignored for this run
    )
    cfg = resolve("patchcore", None, params, ["data.batch_size=5", "method.patchcore.reweight_k=4"])
    assert cfg.profile == "paper"  # taken from params.yaml when not given
    assert cfg.backbone.name == "wide_resnet50_2.tv_in1k"  # from the profile
    assert cfg.backbone.weights == "random"  # params over profile
    assert cfg.data.image_size == 96 and cfg.data.crop_size == 224  # params over profile, profile kept
    assert cfg.data.batch_size == 5  # override over params
    assert cfg.method.coreset_ratio == pytest.approx(0.25)
    assert cfg.method.reweight_k == 4
    # An explicit profile beats the one in params.yaml; the dict form of params works the same.
    cpu = resolve("patchcore", "cpu", {"profile": "paper", "data": {"image_size": 80}})
    assert cpu.profile == "cpu" and cpu.backbone.name == "tf_efficientnet_lite0" and cpu.data.image_size == 80


def test_override_values_are_parsed_as_yaml_scalars():
    assert parse_override("method.cfa.epochs=5") == (["method", "cfa", "epochs"], 5)
    assert parse_override("a.b=0.5") == (["a", "b"], 0.5)
    assert parse_override("a.b=false") == (["a", "b"], False)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=null") == (["a", "b"], None)
    assert parse_override("a.b=x=y") == (["a", "b"], "x=y")  # only the first '=' splits
    cfg = resolve("patchcore", "cpu", overrides=[
        "train.threads=2", "postprocess.blur_sigma=2.5", "method.patchcore.reweight=false",
        "data.crop_size=48", "data.image_size=64", "backbone.name=resnet18", "train.device=cpu",
    ])
    assert cfg.train.threads == 2 and isinstance(cfg.train.threads, int)
    assert cfg.postprocess.blur_sigma == 2.5
    assert cfg.method.reweight is False
    assert (cfg.data.image_size, cfg.data.input_size) == (64, 48)
    assert cfg.backbone.name == "resnet18" and cfg.train.device == "cpu"


def test_list_override_where_a_number_is_expected():
    # No shared setting is a list; a list where a number is expected is an error that names the key.
    with pytest.raises(ConfigError, match=r"^data\.image_size: .*integer.*\[64, 64\]"):
        resolve("patchcore", "cpu", overrides=["data.image_size=[64, 64]"])


@pytest.mark.parametrize("override, pattern", [
    ("data.image_sze=3", r"^data\.image_sze: unknown setting$"),
    ("method.patchcore.corset_ratio=0.2", r"^method\.patchcore\.corset_ratio: unknown setting$"),
    ("nonsense.key=1", r"^nonsense: unknown setting$"),
    ("method.patchcore.coreset_ratio=2", r"^method\.patchcore\.coreset_ratio: .*less than or equal to 1 \(got 2\)"),
    ("data.batch_size=abc", r"^data\.batch_size: .*valid integer.*\(got 'abc'\)"),
    ("data.image_size=0", r"^data\.image_size: .*greater than 0 \(got 0\)"),
    ("data.val_fraction=1.5", r"^data\.val_fraction: .*less than 1"),
    ("method.patchcore.reweight=maybe", r"^method\.patchcore\.reweight: .*boolean"),
    ("profile=paper", r"^profile: cannot be overridden with --set; use --profile$"),
    ("method_name=cfa", r"^method_name: cannot be overridden with --set; use --method$"),
    ("method=3", r"^method: expected method\.<name>\.<setting>=VALUE"),
    ("method.patchcore=3", r"^method\.patchcore: expected a mapping of settings, got 3$"),
    ("backbone=null", r"^backbone: .*valid dictionary"),
    ("data.image_size.x=3", r"'image_size' is a value, not a section"),
    ("data.image_size", r"expected KEY=VALUE"),
    ("=3", r"empty key"),
    ("method.nomethod.epochs=1", r"^method\.nomethod: unknown method; known: .*patchcore"),
])
def test_bad_override_names_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve("patchcore", "cpu", overrides=[override])


def test_unknown_method_and_profile_and_bad_params(tmp_path):
    with pytest.raises(ConfigError, match=r"method 'nomethod': unknown; known methods: .*patchcore"):
        resolve("nomethod", "cpu")
    with pytest.raises(ConfigError, match=r"^profile: 'gpu' is not one of \['cpu', 'paper'\]"):
        resolve("patchcore", "gpu")
    with pytest.raises(ConfigError, match=r"^profile: 'gpu' is not one of"):
        resolve("patchcore", None, {"profile": "gpu"})
    with pytest.raises(ConfigError, match=r"^method\.nomethod: unknown method"):
        resolve("patchcore", "cpu", {"method": {"nomethod": {"epochs": 1}}})
    with pytest.raises(ConfigError, match=r"^method: expected a mapping"):
        resolve("patchcore", "cpu", {"method": [1, 2]})
    with pytest.raises(ConfigError, match=r"^method\.patchcore: expected a mapping of settings, got 'fast'$"):
        resolve("patchcore", "cpu", {"method": {"patchcore": "fast"}})
    with pytest.raises(ConfigError, match=r"^method\.patchcore\.bogus: unknown setting$"):
        resolve("patchcore", "cpu", {"method": {"patchcore": {"bogus": 1}}})
    with pytest.raises(ConfigError, match=r"^data\.image_size: .*greater than 0 \(got -4\)"):
        resolve("patchcore", "cpu", {"data": {"image_size": -4}})
    with pytest.raises(ConfigError, match=r"params file not found"):
        resolve("patchcore", "cpu", tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        resolve("patchcore", "cpu", bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match=r"scalar\.yaml: expected a mapping at the top level, got str"):
        resolve("patchcore", "cpu", scalar)


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        resolve("patchcore", "cpu", overrides=["data.image_size=-1", "data.batch_sizee=2"])
    message = str(info.value)
    assert "data.image_size:" in message and "data.batch_sizee: unknown setting" in message
    assert "\n" not in message  # the CLI prints it as one line


def test_assignment_is_validated_and_merge_does_not_mutate():
    cfg = resolve("patchcore", "cpu")
    with pytest.raises(ValueError):
        cfg.data.image_size = -1
    base = {"a": {"b": 1, "c": [1]}}
    merged = deep_merge(base, {"a": {"b": 2}})
    assert merged == {"a": {"b": 2, "c": [1]}} and base == {"a": {"b": 1, "c": [1]}}
    merged["a"]["c"].append(2)
    assert base["a"]["c"] == [1]
    # Resolving twice gives equal configs, and the module-level profile tables are untouched.
    assert resolve("patchcore", "paper", overrides=["data.image_size=32"]).data.image_size == 32
    assert PROFILES["paper"]["data"]["image_size"] == 256
    assert resolve("patchcore", "paper").data.image_size == 256


def test_round_trip_through_json():
    cfg = resolve("patchcore", "cpu", overrides=["data.image_size=64", "method.patchcore.reweight_k=3"])
    again = settings_from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again.method, PatchCoreConfig)  # the method section is stored typed
    assert again.method.reweight_k == 3


def test_config_module_knows_no_method():
    # The settings sections do not import the method registry (no import cycle through adcore.methods).
    import subprocess
    import sys

    code = "import sys, adcore.config; print('adcore.methods' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
