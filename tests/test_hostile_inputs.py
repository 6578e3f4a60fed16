"""Hostile and careless input: nothing already written is lost, nothing leaks out of the data root or to the network,
and nothing read from a model file, params.yaml or a mask is trusted blindly.

Every refusal is exit code 2 with one line on stderr naming the file or key, and leaves the folder tree exactly as
it was (paths, sizes and modification times). Two bounded stress tests check concurrent model writes and reads
(no mixed version, no writer error) and concurrent fills of one feature cache entry.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_category
from PIL import Image
from safetensors.torch import load_file, save_file

from adcore.cli import main
from adcore.io import META_FILE, TENSOR_FILE, read_model_dir, write_model_dir

TINY = ["--set", "data.image_size=32", "--set", "train.device=cpu", "--set", "backbone.weights=random"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("ADCORE_NO_PROGRESS", "1")
    # The feature cache lives outside every snapshotted folder (and never in the user's cache).
    monkeypatch.setenv("ADCORE_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size if not path.is_dir() else 0, st.st_mtime_ns)
    return out


def error_line(capsys, command: str) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"adcore {command}: error: "), lines
    return lines[0]


def train_args(root: Path, category: str, output: Path | str, *extra: str) -> list[str]:
    return ["train", "--method", "patchcore", "--data-root", str(root), "--category", category,
            "--output", str(output), *TINY, *extra]


def huge_png(path: Path, width: int = 12500, height: int = 12500) -> None:
    """A valid 1-bit PNG of width x height black pixels: a few KB on disk, 156 megapixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------- adcore train


def _notes_folder(ws: Path) -> list[str]:
    (ws / "notes").mkdir()
    (ws / "notes" / "ideas.txt").write_text("three months of notes\n")
    return train_args(ws / "data", "part", ws / "notes")


def _category_itself(ws: Path) -> list[str]:
    return train_args(ws / "data", "part", ws / "data" / "part")


def _inside_category(ws: Path) -> list[str]:
    return train_args(ws / "data", "part", ws / "data" / "part" / "model")


def _holds_category(ws: Path) -> list[str]:
    return train_args(ws / "data", "part", ws / "data")


def _current_folder(ws: Path) -> list[str]:
    (ws / "work").mkdir()
    (ws / "work" / "run.sh").write_text("adcore train ...\n")
    os.chdir(ws / "work")  # the test's monkeypatch.chdir restores the working folder
    return train_args(ws / "data", "part", ".")


def _existing_model(ws: Path) -> list[str]:
    write_model_dir(ws / "model", {"method": "patchcore"}, {"w": torch.zeros(2)})
    return train_args(ws / "data", "part", ws / "model")


def _model_dir_with_other_files(ws: Path) -> list[str]:
    write_model_dir(ws / "model", {"method": "patchcore"}, {"w": torch.zeros(2)})
    (ws / "model" / "README.md").write_text("my notes on this model\n")
    return train_args(ws / "data", "part", ws / "model", "--overwrite")


def _output_is_a_file(ws: Path) -> list[str]:
    (ws / "report.pdf").write_bytes(b"%PDF-1.4")
    return train_args(ws / "data", "part", ws / "report.pdf", "--overwrite")


def _bool_for_int(ws: Path) -> list[str]:
    return train_args(ws / "data", "part", ws / "m", "--set", "data.image_size=true")


def _string_for_int(ws: Path) -> list[str]:
    return train_args(ws / "data", "part", ws / "m", "--set", 'data.batch_size="8"')


def _bool_for_float(ws: Path) -> list[str]:
    return train_args(ws / "data", "part", ws / "m", "--set", "postprocess.blur_sigma=true")


def _image_size_too_large(ws: Path) -> list[str]:
    return train_args(ws / "data", "part", ws / "m", "--set", "data.image_size=100000")


def _threads_too_many(ws: Path) -> list[str]:
    return train_args(ws / "data", "part", ws / "m", "--set", "train.threads=1000000")


def _misspelled_section(ws: Path) -> list[str]:
    (ws / "params.yaml").write_text("dta:\n  image_size: 64\n")
    return train_args(ws / "data", "part", ws / "m", "--params", str(ws / "params.yaml"))


def _category_dotdot(ws: Path) -> list[str]:
    make_tiny_category(ws, "outside")
    return train_args(ws / "data", "../outside", ws / "m")


def _category_absolute(ws: Path) -> list[str]:
    outside = make_tiny_category(ws, "outside")
    return train_args(ws / "data", str(outside.resolve()), ws / "m")


def _mask_not_binary(ws: Path) -> list[str]:
    mask = ws / "data" / "part" / "ground_truth" / "scratch" / "001_mask.png"
    arr = np.asarray(Image.open(mask)).copy()
    arr[arr == 255] = 128
    arr[0, :3] = (0, 60, 255)  # anti-aliased edge values
    Image.fromarray(arr).save(mask)
    return train_args(ws / "data", "part", ws / "m")


def _decompression_bomb(ws: Path) -> list[str]:
    huge_png(ws / "data" / "part" / "train" / "good" / "002.png")
    return train_args(ws / "data", "part", ws / "m")


TRAIN_CASES = {
    # case: (workspace builder, fragments the one error line must hold)
    "output is a folder of notes": (_notes_folder, ["notes: holds files that are not part of a model (ideas.txt)"]),
    "output is the dataset category": (_category_itself, ["data/part: the output is the dataset category folder"]),
    "output inside the category": (_inside_category, ["part/model: the output lies inside the dataset category"]),
    "output holds the category": (_holds_category, ["data: the output contains the dataset category folder"]),
    "output is the current folder": (_current_folder, ["error: .: the output is the current folder"]),
    "existing model without --overwrite": (_existing_model,
                                           ["model: an adcore model directory already exists; pass --overwrite"]),
    "model dir holding other files, --overwrite": (_model_dir_with_other_files,
                                                   ["model: holds files that are not part of a model (README.md)"]),
    "output is a file, --overwrite": (_output_is_a_file, ["report.pdf: exists and is not a folder"]),
    "bool for an int setting": (_bool_for_int, ["data.image_size: Input should be a valid integer (got True)"]),
    "string for an int setting": (_string_for_int, ["data.batch_size: Input should be a valid integer (got '8')"]),
    "bool for a float setting": (_bool_for_float, ["postprocess.blur_sigma: Input should be a valid number"]),
    "image_size above its bound": (_image_size_too_large,
                                   ["data.image_size: Input should be less than or equal to 4096 (got 100000)"]),
    "threads above its bound": (_threads_too_many, ["train.threads: Input should be less than or equal to 1024"]),
    "misspelled params.yaml section": (_misspelled_section, ["error: dta: unknown section in ", "params.yaml"]),
    "category with ../": (_category_dotdot, ["category '../outside': not a folder name inside the data root"]),
    "category as an absolute path": (_category_absolute, ["outside': not a folder name inside the data root"]),
    "mask that is not binary": (_mask_not_binary,
                                ["ground_truth/scratch/001_mask.png: mask is not binary (values 0, 60, 128, 255)"]),
    "12500x12500 PNG header": (_decompression_bomb,
                               ["train/good/002.png: image of 12500x12500 pixels (156 megapixels) exceeds the limit"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_refuses_and_changes_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws = tmp_path / "ws"
    make_tiny_category(ws / "data", "part")
    build, fragments = TRAIN_CASES[case]
    argv = build(ws)
    capsys.readouterr()
    before = snapshot(ws)
    assert main(argv) == 2
    line = error_line(capsys, "train")
    for fragment in fragments:
        assert fragment in line, line
    assert snapshot(ws) == before


def test_overwrite_replaces_a_model_directory_and_an_empty_folder_is_fine(tmp_path, capsys):
    make_tiny_category(tmp_path / "data", "part")
    (tmp_path / "empty").mkdir()
    assert main(train_args(tmp_path / "data", "part", tmp_path / "empty")) == 0
    first = (tmp_path / "empty" / META_FILE).read_bytes()
    assert main(train_args(tmp_path / "data", "part", tmp_path / "empty", "--overwrite")) == 0
    assert (tmp_path / "empty" / META_FILE).read_bytes() != first  # replaced (train_seconds differ)
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [META_FILE, TENSOR_FILE]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_the_repository_params_yaml_stays_valid():
    from adcore.methods import method_names, resolve_settings

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    for method in method_names():
        assert resolve_settings(method, None, params, ["train.device=cpu"]).method_name == method


# ---------------------------------------------------------------------------------------------- loading a model


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    make_tiny_category(root / "data", "part")
    os.environ["ADCORE_NO_PROGRESS"] = "1"
    assert main(train_args(root / "data", "part", root / "model", "--cache-dir", str(root / "cache"))) == 0
    return root / "model"


def _nan_tensor(model: Path) -> str:
    tensors = load_file(str(model / TENSOR_FILE))
    name = next(k for k, v in tensors.items() if k.startswith("network.") and v.is_floating_point())
    tensors[name][..., 0] = float("nan")
    save_file(tensors, str(model / TENSOR_FILE))
    return f"model/model.safetensors: tensor '{name}' holds "


def _wrong_shape(model: Path) -> str:
    tensors = load_file(str(model / TENSOR_FILE))
    name = next(k for k, v in tensors.items() if k.startswith("network.") and v.ndim >= 1 and v.shape[0] > 1)
    tensors[name] = tensors[name][:1].clone()
    save_file(tensors, str(model / TENSOR_FILE))
    return "model/model.safetensors: patchcore: network tensors do not fit the architecture"


def _hub_backbone(model: Path) -> str:
    meta = json.loads((model / META_FILE).read_text())
    meta["config"]["backbone"]["name"] = "hf-hub:attacker/evil-model"
    (model / META_FILE).write_text(json.dumps(meta))
    return "model/model.json: config.backbone.name 'hf-hub:attacker/evil-model' points at a hub repository"


def _unbounded_setting(model: Path) -> str:
    meta = json.loads((model / META_FILE).read_text())
    meta["config"]["data"]["batch_size"] = 10**9
    (model / META_FILE).write_text(json.dumps(meta))
    return "model/model.json: data.batch_size: Input should be less than or equal to 4096 (got 1000000000)"


LOAD_CASES = {"NaN in a tensor": _nan_tensor, "tensor of the wrong shape": _wrong_shape,
              "hub backbone name": _hub_backbone, "unbounded setting in model.json": _unbounded_setting}


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_loading_a_model_validates_it(case, command, trained_model, tmp_path, capsys):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained_model.parent / "data", ws / "data")
    model = shutil.copytree(trained_model, ws / "model")
    fragment = LOAD_CASES[case](model)
    image = ws / "data" / "part" / "test" / "good" / "000.png"
    argv = (["predict", "--model", str(model), "--output", str(ws / "pred"), str(image)] if command == "predict"
            else ["evaluate", "--model", str(model), "--data-root", str(ws / "data"), "--category", "part",
                  "--output", str(ws / "eval" / "metrics.json")])
    capsys.readouterr()
    before = snapshot(ws)
    assert main(argv) == 2
    line = error_line(capsys, command)
    assert fragment in line and str(model) in line, line
    assert snapshot(ws) == before


# ---------------------------------------------------------------------------------------------- concurrency


def test_concurrent_model_writers_and_readers_see_whole_versions(tmp_path):
    """4 writers x 40 swaps and 4 readers on one model directory: every read is one version, no writer fails."""
    import adcore.io as io_module

    path = tmp_path / "model"
    write_model_dir(path, {"method": "toy", "version": 0}, {"w": torch.zeros(256)})
    done = threading.Event()
    lock = threading.Lock()
    counts = {"reads": 0, "mixed": 0, "read_errors": 0, "write_errors": 0, "writes": 0}
    errors: list[str] = []

    def writer(k: int) -> None:
        for i in range(40):
            version = k * 1000 + i + 1
            try:
                write_model_dir(path, {"method": "toy", "version": version}, {"w": torch.full((256,), version)})
                with lock:
                    counts["writes"] += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown below
                with lock:
                    counts["write_errors"] += 1
                    errors.append(repr(exc))

    def reader() -> None:
        while not done.is_set() and counts["reads"] < 4000:
            try:
                meta, tensors = read_model_dir(path)
                with lock:
                    counts["reads"] += 1
                    counts["mixed"] += int(float(tensors["w"][0]) != meta["version"])
            except Exception as exc:  # noqa: BLE001
                with lock:
                    counts["read_errors"] += 1
                    errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    threads += [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads[4:]:
        t.join()
    done.set()
    for t in threads[:4]:
        t.join()
    assert counts["mixed"] == 0 and counts["write_errors"] == 0 and counts["writes"] == 160, (counts, errors[:3])
    assert counts["reads"] > 0
    if io_module._renameat2 is not None:  # with an atomic exchange the directory never disappears
        assert counts["read_errors"] == 0, (counts, errors[:3])
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old folders left
    meta, tensors = read_model_dir(path)
    assert float(tensors["w"][0]) == meta["version"]


def test_concurrent_fills_of_one_feature_cache_entry(tmp_path):
    """6 threads fill one (empty) cache entry at once, 12 rounds: no error, everyone gets the right features."""
    from adcore.data.mvtec import Sample
    from adcore.data.transforms import ImageTransform
    from adcore.features import FeatureCache

    class Pooling(torch.nn.Module):
        fingerprint = "pooling-test"

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return [torch.nn.functional.avg_pool2d(x, 8) * self.scale, torch.nn.functional.avg_pool2d(x, 16)]

    rng = np.random.default_rng(0)
    samples = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, 0, "good", None))
    extractor, transform = Pooling(), ImageTransform(32)
    expected = FeatureCache(None).features(extractor, samples, transform, batch_size=2, show_progress=False)
    errors: list[str] = []
    wrong = 0
    lock = threading.Lock()
    for round_ in range(12):
        root = tmp_path / f"cache{round_}"
        barrier = threading.Barrier(6)

        def fill(root: Path = root, barrier: threading.Barrier = barrier) -> None:
            nonlocal wrong
            barrier.wait()
            try:
                got = FeatureCache(root).features(extractor, samples, transform, batch_size=2, show_progress=False)
                same = all(np.array_equal(np.asarray(a), b) for a, b in zip(got.stages, expected.stages, strict=True))
                with lock:
                    wrong += int(not same)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors.append(repr(exc))

        threads = [threading.Thread(target=fill) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [p.name for p in root.iterdir()] == [expected.key]  # one entry, no temporary folders left
    assert not errors and wrong == 0, (errors[:3], wrong)
