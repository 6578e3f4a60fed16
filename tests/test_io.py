"""Model directories: atomic writes, version and corruption errors, state flattening, no unpickling."""

from __future__ import annotations

import json

import pytest
import torch

from adcore import MODEL_FORMAT_VERSION, __version__
from adcore.errors import ModelFormatError
from adcore.io import (
    META_FILE,
    TENSOR_FILE,
    atomic_directory,
    atomic_path,
    atomic_write_json,
    atomic_write_stream,
    file_digests,
    file_sha256,
    flatten_state,
    read_model_dir,
    read_model_meta,
    unflatten_state,
    write_model_dir,
)


def _write(path, value: float = 1.0):
    return write_model_dir(path, {"method": "toy", "note": "hello"}, {"w": torch.full((2, 3), value)})


def test_model_dir_round_trip(tmp_path):
    out = _write(tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == [META_FILE, TENSOR_FILE]
    meta, tensors = read_model_dir(out)
    assert meta["format_version"] == MODEL_FORMAT_VERSION and meta["adcore_version"] == __version__
    assert meta["method"] == "toy" and meta["note"] == "hello"
    assert torch.equal(tensors["w"], torch.ones(2, 3))
    _write(out, 2.0)  # overwriting swaps the whole directory
    assert torch.equal(read_model_dir(out)[1]["w"], torch.full((2, 3), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old directories left


def test_failed_write_leaves_the_existing_model_untouched(tmp_path):
    out = _write(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_directory(out) as tmp:
            (tmp / TENSOR_FILE).write_bytes(b"partial")
            raise RuntimeError("disk on fire")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    class Unserialisable:
        pass

    with pytest.raises(TypeError):  # the JSON fails after the tensors were written
        write_model_dir(out, {"method": "toy", "bad": Unserialisable()}, {"w": torch.zeros(1)})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(TypeError):  # and a failed first write leaves nothing at all
        write_model_dir(tmp_path / "new", {"bad": Unserialisable()}, {"w": torch.zeros(1)})
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_json_leaves_no_temp_file_on_error(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_format_version_mismatch_says_so(tmp_path):
    out = _write(tmp_path / "model")
    meta = json.loads((out / META_FILE).read_text())
    meta["format_version"] = MODEL_FORMAT_VERSION - 1
    meta["adcore_version"] = "0.0.1"
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError) as info:
        read_model_dir(out)
    message = str(info.value)
    assert str(out) in message
    assert f"model format version {MODEL_FORMAT_VERSION - 1} (written by adcore 0.0.1)" in message
    assert f"reads format version {MODEL_FORMAT_VERSION}" in message and "retrain" in message


@pytest.mark.parametrize("content, pattern", [
    ("{not json", r"model\.json: corrupt JSON"),
    ("\xff\xfe", r"model\.json: corrupt JSON"),
    ('{"method": "toy"}', r"model\.json: no format_version; not written by adcore"),
    ("[1, 2]", r"model\.json: no format_version"),
])
def test_corrupt_metadata(tmp_path, content, pattern):
    out = _write(tmp_path / "model")
    (out / META_FILE).write_bytes(content.encode("latin-1"))
    with pytest.raises(ModelFormatError, match=pattern):
        read_model_meta(out)


def test_missing_files(tmp_path):
    with pytest.raises(ModelFormatError, match=r"absent: not a model directory"):
        read_model_dir(tmp_path / "absent")
    out = _write(tmp_path / "model")
    (out / TENSOR_FILE).unlink()
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: tensor file missing"):
        read_model_dir(out)
    (out / META_FILE).unlink()
    with pytest.raises(ModelFormatError, match=r"model\.json: missing; .* is not an adcore model directory"):
        read_model_dir(out)


def test_pickle_renamed_to_safetensors_is_refused(tmp_path):
    out = _write(tmp_path / "model")
    # A torch pickle (which could run code when unpickled) placed under the safetensors name.
    torch.save({"w": torch.ones(2, 3)}, out / TENSOR_FILE)
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: not a readable safetensors file"):
        read_model_dir(out)
    (out / TENSOR_FILE).write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a bare pickle header
    with pytest.raises(ModelFormatError, match=r"not a readable safetensors file"):
        read_model_dir(out)
    (out / TENSOR_FILE).write_bytes(b"")
    with pytest.raises(ModelFormatError, match=r"not a readable safetensors file"):
        read_model_dir(out)


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
    state = opt.state_dict()
    tensors, structure = flatten_state("opt", state)
    assert tensors and all(isinstance(v, torch.Tensor) for v in tensors.values())
    # The structure is pure JSON: it survives a dump/load (int keys included).
    structure = json.loads(json.dumps(structure))
    restored = unflatten_state(structure, {k: v.clone() for k, v in tensors.items()})
    assert set(restored["state"]) == set(state["state"]) == {0, 1, 2, 3}
    assert restored["param_groups"][0]["betas"] == [0.8, 0.9]  # tuples come back as lists, which torch accepts
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            assert torch.equal(restored["state"][idx][name], value)

    opt2 = torch.optim.Adam(model.parameters(), lr=1.0)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["lr"] == 1e-2
    for idx in state["state"]:
        assert torch.equal(opt2.state_dict()["state"][idx]["exp_avg"], state["state"][idx]["exp_avg"])

    nested = {"a": [1, {"b": torch.arange(3)}], 7: "seven", "none": None}
    t, s = flatten_state("x", nested)
    assert unflatten_state(json.loads(json.dumps(s)), t) == {"a": [1, {"b": t["x.a.1.b"]}], 7: "seven", "none": None}


def test_atomic_writes_get_umask_permissions(tmp_path):
    # mkdtemp / mkstemp make 0700 / 0600 entries; a model directory (read by a server under another user, say)
    # must get the permissions of any mkdir'd folder and open()'d file. adcore.io read the umask at import.
    import adcore.io as io_module

    mode = 0o777 & ~io_module._UMASK
    write_model_dir(tmp_path / "m", {"method": "x"}, {"t": torch.zeros(2)})
    assert (tmp_path / "m").stat().st_mode & 0o777 == mode
    assert (tmp_path / "m" / "model.json").stat().st_mode & 0o777 == mode & 0o666
    assert (tmp_path / "m" / "model.safetensors").stat().st_mode & 0o777 == mode & 0o666


def test_atomic_write_stream_returns_the_sha256_and_a_failed_copy_keeps_the_old_file(tmp_path):
    import hashlib
    import io

    import adcore.io as io_module

    data = b"x" * (3 << 20) + b"tail"  # several read chunks
    assert atomic_write_stream(tmp_path / "a.bin", io.BytesIO(data)) == hashlib.sha256(data).hexdigest()
    assert atomic_write_stream(tmp_path / "b.bin", [b"ab", b"cd"]) == hashlib.sha256(b"abcd").hexdigest()
    assert file_sha256(tmp_path / "a.bin") == hashlib.sha256(data).hexdigest()
    assert file_digests(tmp_path / "b.bin", "md5", "sha256") == {
        "md5": hashlib.md5(b"abcd").hexdigest(), "sha256": hashlib.sha256(b"abcd").hexdigest()}
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~io_module._UMASK

    def broken_transfer():
        yield b"partial"
        raise ConnectionError("reset by peer")

    with pytest.raises(ConnectionError):
        atomic_write_stream(tmp_path / "a.bin", broken_transfer())
    assert (tmp_path / "a.bin").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_atomic_path_keeps_the_suffix_a_writer_needs(tmp_path):
    with atomic_path(tmp_path / "out" / "p.yaml", suffix=".yaml") as tmp:
        assert tmp.suffix == ".yaml" and tmp.parent == tmp_path / "out" and tmp.name.startswith(".")
        tmp.write_text("a: 1\n")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out" / "p.yaml") as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert (tmp_path / "out" / "p.yaml").read_text() == "a: 1\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p.yaml"]
