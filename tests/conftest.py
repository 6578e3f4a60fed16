"""Shared test fixtures: a small demo dataset (once per session) and a builder for tiny hand-made categories."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package need not be installed to run the tests from a checkout
    sys.path.insert(0, str(ROOT))

#: Real data sets (research data, never copied into the repo); tests that need it skip when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: Sizes of the session demo dataset: small so it builds in well under a second.
DEMO_FIXTURE_SIZES = {"n_train": 16, "n_test_good": 6, "n_test_defect": 3, "image_size": 64, "seed": 0}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The demo dataset (categories 'tile' and 'widget', 64 px) generated once per session. Treat as read-only."""
    from adcore.data.demo import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **DEMO_FIXTURE_SIZES)


def make_tiny_category(
    root: Path,
    name: str = "part",
    *,
    n_train: int = 4,
    n_test_good: int = 2,
    defects: tuple[str, ...] = ("scratch",),
    n_defect: int = 2,
    size: tuple[int, int] = (40, 30),
    masks: bool = True,
    mode: str = "RGB",
    suffix: str = ".png",
    seed: int = 0,
) -> Path:
    """Write a small MVTec-layout category under ``root/name`` and return that folder.

    Images are seeded noise of ``size`` = (width, height) in PIL ``mode``; each anomalous image has a bright
    square whose mask is ``ground_truth/<defect>/<stem>_mask.png`` (when ``masks``).
    """
    rng = np.random.default_rng(seed)
    width, height = size
    cat = Path(root) / name

    def write(folder: Path, stem: str, square: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), np.uint8)
        if square:
            y, x = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
            arr[y:y + 8, x:x + 8] = 250
            mask[y:y + 8, x:x + 8] = 255
        image = Image.fromarray(arr)
        image = image.convert(mode) if mode != "RGB" else image
        image.save(folder / f"{stem}{suffix}")
        if square and masks:
            gt = cat / "ground_truth" / folder.name
            gt.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(gt / f"{stem}_mask.png")

    for i in range(n_train):
        write(cat / "train" / "good", f"{i:03d}", False)
    for i in range(n_test_good):
        write(cat / "test" / "good", f"{i:03d}", False)
    for defect in defects:
        for i in range(n_defect):
            write(cat / "test" / defect, f"{i:03d}", True)
    return cat


@pytest.fixture
def tiny_category(tmp_path) -> Callable[..., Path]:
    """Builder for tiny categories: ``tiny_category(name="part", defects=("scratch",), masks=True, ...)``.

    Writes under this test's ``tmp_path`` (the dataset root, ``cat.parent``); see ``make_tiny_category``.
    """

    def build(name: str = "part", root: Path | None = None, **kwargs) -> Path:
        return make_tiny_category(root or tmp_path, name, **kwargs)

    return build


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint (moto's server) on 127.0.0.1, shared by the session; each test file uses its own
    bucket."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def fit_and_auroc(demo_root):
    """``fit_and_auroc(settings, category) -> (model, image AUROC)``: fit on a demo category's train/good, score
    its test split. The demo-accuracy checks of every method go through it."""
    from adcore.data.dataset import make_loader
    from adcore.data.mvtec import load_category
    from adcore.methods import create_model
    from adcore.methods.base import FitData, TrainOptions
    from adcore.metrics import image_auroc

    def run(settings, category: str = "tile"):
        import torch

        model = create_model(settings)
        cat = load_category(demo_root, category)
        transform = model.make_transform()
        model.fit(FitData(train=cat.train, val=[], transform=transform), TrainOptions(progress=False))
        scores, labels = [], []
        for batch in make_loader(cat.test, transform, batch_size=16):
            scores.append(model.predict(batch["image"]).scores)
            labels.append(batch["label"])
        return model, image_auroc(torch.cat(scores).numpy(), torch.cat(labels).numpy())

    return run
