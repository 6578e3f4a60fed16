"""Property-based checks (hypothesis) of the path-safety functions and of settings parsing: for any input, either a
clean result that stays inside its folder, or a one-line error that names what is wrong."""

from __future__ import annotations

import string
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adcore.config import parse_override
from adcore.data.mvtec import load_category
from adcore.errors import AdcoreError, ConfigError, DataError
from adcore.methods import resolve_settings
from components.fetch.paths import resolve_inside, safe_relpath

# Path pieces that matter for escapes: separators, dots, drive letters, NUL, and ordinary names.
PIECES = st.sampled_from(["..", ".", "", "a", "b.png", "C:", "\\", "..\\x", "\x00", "~", "good", " "])
NAMES = st.lists(PIECES | st.text(string.ascii_letters + "./\\:", max_size=6), max_size=6).map("/".join)
QUICK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@QUICK
@given(name=NAMES | st.text(max_size=20))
def test_safe_relpath_returns_a_clean_relative_path_or_refuses(name, tmp_path):
    try:
        rel = safe_relpath(name, "s3://bucket/key")
    except DataError as exc:
        assert str(exc).startswith("s3://bucket/key: refusing") and "\n" not in str(exc)
        return
    parts = PurePosixPath(rel).parts
    assert rel and not rel.startswith("/") and ".." not in parts and "." not in parts and "" not in rel.split("/")
    assert "\\" not in rel and "\x00" not in rel
    assert resolve_inside(tmp_path, rel).is_relative_to(tmp_path.resolve())


@QUICK
@given(name=NAMES)
def test_a_category_name_never_reads_outside_the_data_root(name, tmp_path):
    (tmp_path / "root").mkdir(exist_ok=True)
    try:
        category = load_category(tmp_path / "root", name)
    except AdcoreError as exc:
        assert "\n" not in str(exc)
        return
    assert Path(category.root / category.name).resolve().is_relative_to((tmp_path / "root").resolve())


KEYS = st.lists(st.text(string.ascii_lowercase + "_", min_size=1, max_size=8), min_size=1, max_size=4).map(".".join)
SCALARS = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.floats(allow_nan=False, allow_infinity=False,
                                                                          width=32),
                    st.text(string.ascii_letters, min_size=1, max_size=8))


@QUICK
@given(key=KEYS, value=SCALARS)
def test_override_parsing_round_trips_yaml_scalars(key, value):
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    assume(yaml.safe_load(text) == value)
    assert parse_override(f"{key}={text}") == (key.split("."), value)


@QUICK
@given(key=KEYS, value=SCALARS)
def test_any_override_resolves_or_names_its_key(key, value):
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        settings_ = resolve_settings("patchcore", "cpu", None, [f"{key}={text}"])
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        first = key.split(".")[0]
        assert first in message or key in message or "method" in message or "profile" in message, message
        return
    assert settings_.method_name == "patchcore"


@pytest.mark.parametrize("section", ["dta", "trian", "method_"])
def test_misspelled_params_section_is_an_error(section):
    with pytest.raises(ConfigError, match=section):
        resolve_settings("patchcore", "cpu", {section: {"image_size": 64}})
