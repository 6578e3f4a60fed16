"""Choose the cpu profile on validation only: candidates x categories x seeds, scored on held-out normal images
from ``train/good`` and the same images with synthetic anomalies (never on the test split).

Validation set of a (category, seed): the ``train/good`` images held out by ``train_val_split`` (the same split
``adcore train`` makes with that seed), each once as it is (normal) and once with one synthetic anomaly drawn by
``adcore.synthesis.AnomalyGenerator`` (heterogenous: DTD textures from ``<data-root>/dtd``; homologous: shuffled
normal images), generated once at 256 px so every candidate sees the same images. Image AUROC, pixel AUROC and
AUPRO@0.3 on that set choose; the test split is evaluated too (``--test``), only to report the chosen settings.
Training times use a fresh feature cache per run (a real first training), under whatever load the machine has.

    .venv/bin/python benchmarks/cpu_profile_search.py --method patchcore --categories magnetic_tile pcb \
        --candidate now --candidate d1024 method.patchcore.embedding_dim=1024 --seeds 0 --test

Each result is appended as one JSON line to ``--out`` (default runs/cpu_profile_search.jsonl) and a table is
printed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

SYNTH_SIZE = 256


def validation_set(data_root: Path, category: str, seed: int, val_fraction: float, min_val: int):
    """(images uint8 (N, S, S, 3), masks bool (N, S, S), labels) for the held-out normals and their anomalous twins."""
    import numpy as np
    from PIL import Image

    from adcore.data.mvtec import load_category, read_image, train_val_split
    from adcore.synthesis.generator import AnomalyGenerator
    from adcore.synthesis.textures import TextureSource, is_grayscale

    cat = load_category(data_root, category)
    _, val = train_val_split(cat.train, val_fraction, seed, min_val)
    normals = np.stack([np.asarray(Image.fromarray(read_image(s.path)).resize((SYNTH_SIZE, SYNTH_SIZE),
                                                                             Image.Resampling.BILINEAR))
                        for s in val])
    dtd = data_root / "dtd"
    textures = TextureSource(dtd if dtd.is_dir() else None, SYNTH_SIZE, grayscale=is_grayscale(normals))
    generator = AnomalyGenerator(normals, textures=textures, kinds=("hea", "hoa"))
    rng = np.random.default_rng(1000 + seed)
    anomalous, masks = [], []
    for normal in normals:
        mask = np.zeros(normal.shape[:2], bool)
        while not mask.any():  # a Perlin draw may miss its target area: draw again, a twin must be anomalous
            anomaly = generator.generate(normal, generator.simulated_kinds[int(rng.integers(0, 2))], rng)
            mask = anomaly.mask
        anomalous.append(anomaly.image)
        masks.append(mask)
    images = np.concatenate([normals, np.stack(anomalous)])
    all_masks = np.concatenate([np.zeros((len(normals), SYNTH_SIZE, SYNTH_SIZE), bool), np.stack(masks)])
    labels = np.array([0] * len(normals) + [1] * len(anomalous))
    return images, all_masks, labels


def score_validation(model_dir: Path, images, masks, labels, fpr_limit: float) -> dict[str, float]:
    import torch

    from adcore.methods import load_model
    from adcore.metrics import compute_all

    model = load_model(model_dir)
    transform = model.make_transform()
    scores, maps, gts = [], [], []
    batch = model.settings.data.batch_size
    for start in range(0, len(images), batch):
        x = torch.stack([transform(img) for img in images[start:start + batch]])
        pred = model.predict(x)
        scores.append(pred.scores)
        maps.append(pred.maps)
        gts.extend(transform.mask(m) for m in masks[start:start + batch])
    out = compute_all(torch.cat(scores).numpy(), labels, torch.cat(maps).numpy(), torch.stack(gts).numpy(),
                      fpr_limit=fpr_limit)
    return {"val_image_auroc": out["image_auroc"], "val_pixel_auroc": out["pixel_auroc"],
            "val_aupro": out["pixel_aupro"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--method", required=True)
    parser.add_argument("--categories", nargs="+", default=["magnetic_tile", "pcb"])
    parser.add_argument("--candidate", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                        help="a name and the overrides on top of the cpu profile (repeat for each candidate)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--test", action="store_true", help="also evaluate on the test split (reporting only)")
    parser.add_argument("--out", type=Path, default=Path("runs/cpu_profile_search.jsonl"))
    parser.add_argument("--keep-models", type=Path, default=None, help="keep model directories under this folder")
    args = parser.parse_args()

    from adcore.evaluation import evaluate_model
    from adcore.methods import resolve_settings
    from adcore.training import TrainOptions, train_model

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for category in args.categories:
        for seed in args.seeds:
            probe = resolve_settings(args.method, "cpu", None, [f"train.seed={seed}"])
            val = validation_set(args.data_root, category, seed, probe.data.val_fraction, probe.data.min_val_images)
            for name, *overrides in args.candidate:
                settings = resolve_settings(args.method, "cpu", None, [*overrides, f"train.seed={seed}"])
                work = Path(tempfile.mkdtemp(prefix="adcore_search_"))
                model_dir = (args.keep_models / f"{category}_{name}_s{seed}") if args.keep_models else work / "model"
                t0 = time.perf_counter()
                result = train_model(settings, args.data_root, category, model_dir,
                                     TrainOptions(progress=False, cache_dir=work / "cache"), overwrite=True)
                wall = time.perf_counter() - t0
                meta = json.loads((model_dir / "model.json").read_text())
                row = {"method": args.method, "category": category, "candidate": name, "overrides": overrides,
                       "seed": seed, "train_seconds": round(result.seconds, 1), "train_wall_seconds": round(wall, 1),
                       "n_train": meta["data"]["n_train"], "n_val": meta["data"]["n_val"],
                       "memory_size": meta.get("fit_info", {}).get("memory_size"),
                       **score_validation(model_dir, *val, settings.evaluation.aupro_fpr_limit)}
                if args.test:
                    metrics = evaluate_model(model_dir, args.data_root, category, work / "eval.json", progress=False,
                                             write_artifacts=False)
                    row.update({"test_image_auroc": metrics["image_auroc"], "test_pixel_auroc": metrics["pixel_auroc"],
                                "test_aupro": metrics["pixel_aupro"], "ms_per_image": metrics.get("ms_per_image")})
                shutil.rmtree(work, ignore_errors=True)
                rows.append(row)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)

    keys = ["val_image_auroc", "val_pixel_auroc", "val_aupro", "test_image_auroc", "test_pixel_auroc", "test_aupro"]
    print("\n| category | candidate | seed | train s | " + " | ".join(keys) + " |")
    print("|---|---|---|---|" + "---|" * len(keys))
    for r in rows:
        vals = " | ".join("-" if r.get(k) is None else f"{r[k]:.3f}" for k in keys)
        print(f"| {r['category']} | {r['candidate']} | {r['seed']} | {r['train_seconds']:.1f} | {vals} |")


if __name__ == "__main__":
    main()
