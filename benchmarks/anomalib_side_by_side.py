"""Our PatchCore, CFA and reverse distillation against anomalib's at equal settings, on the same input tensors,
scored by the same metrics.

anomalib is not a dependency of the project: it runs in its own virtual environment (``--anomalib-python``,
default ``$ADCORE_ANOMALIB_PYTHON`` or /work/anomalib-venv/bin/python, made with ``python3.11 -m venv`` and
``pip install torch==2.14.1 torchvision==0.29.1 anomalib==2.7.0 timm==1.0.31``). Without it this script prints
why and exits 0 (skipped).

Equal settings: both sides get the same backbone weights file (the frozen backbone of our trained model, the cpu
profile's offline EfficientNet-Lite0 unless ``--set backbone...`` says otherwise, saved as safetensors and loaded
into anomalib's timm extractor by parameter name), the same stages (PatchCore: strides 8, 16 = Lite0 ``blocks.2``,
``blocks.4``; CFA: strides 4, 8, 16), the same training images (``train/good`` less our validation split) and test
images, preprocessed once by our transform and handed to anomalib as tensors, the same coreset ratio (our
``coreset_min`` set to 0, as anomalib has none), epochs, batch size, K, J, gamma_c, gamma_d. Both sides' test
scores and maps are scored by ``adcore.metrics.compute_all``. anomalib's torch models are driven directly (the
Lightning module's steps, without its Engine): PatchCore = collect embeddings, ``subsample_embedding``; CFA =
``initialize_centroid``, then AdamW (lr 1e-3, wd 5e-4, amsgrad) on ``CfaLoss`` as its ``training_step`` /
``configure_optimizers``. anomalib's CFA accepts only torchvision backbones by name, so its extractor and the
descriptor's 1x1 CoordConv are swapped for the same Lite0 stages and a CoordConv of the matching width.

Reverse distillation (``--methods rd``): ours is N-Net's reverse-only switch (``method.nnet.branch=reverse
method.nnet.fpm=false method.nnet.nfs=false method.nnet.ffc=false`` = RD4AD) against anomalib's
``ReverseDistillation``. anomalib builds RD's bottleneck and decoder only for ResNet names and the only offline
ImageNet weights are EfficientNet-Lite's, so both sides use ``resnet18`` layer1..layer3 with the SAME random weights
(``backbone.weights=random``: our teacher's state dict, loaded into anomalib's encoder by parameter name): absolute
figures are low, the comparison is of the two implementations. Each side keeps its own RD defaults: ours the cpu
profile's (Adam lr 0.005, betas (0.5, 0.999), per-position cosine loss, decoder ``method.nnet.decoder_blocks``
bottleneck blocks per stage, maps summed, blur sigma 4 at the input size), anomalib's its Lightning module's (Adam
lr 0.005, betas (0.5, 0.99) on bottleneck + decoder, RD4AD's code's cosine of each flattened map, de-ResNet18 with 2
basic blocks per stage, maps added, blur sigma 4); same epochs, batch size, images.

    .venv/bin/python benchmarks/anomalib_side_by_side.py --data-root ../shared/data --methods rd \
        --categories magnetic_tile --seeds 0

Times: ours = ``adcore train`` fit (decoding, backbone, coreset / epochs, calibration); anomalib = its fit on
ready tensors (no decoding). Under load they are labelled so by the caller.

    .venv/bin/python benchmarks/anomalib_side_by_side.py --data-root ../shared/data --methods patchcore \
        --categories pcb magnetic_tile --seeds 0 1 2 --coreset-ratio 0.01
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_ANOMALIB_PYTHON = "/work/anomalib-venv/bin/python"
# Lite0 stage names (timm feature_info modules) for the strides our methods use.
LITE0_LAYERS = {4: "blocks.1", 8: "blocks.2", 16: "blocks.4"}
#: ResNet stage names for the same strides (reverse distillation)
RESNET_LAYERS = {4: "layer1", 8: "layer2", 16: "layer3"}
#: our reverse-only N-Net switch = RD4AD (fpm, nfs, ffc off)
RD_OVERRIDES = ["method.nnet.branch=reverse", "method.nnet.fpm=false", "method.nnet.nfs=false",
                "method.nnet.ffc=false", "backbone.name=resnet18", "backbone.weights=random"]


# ------------------------------------------------------------------------------------------------ anomalib side
def worker(spec_path: Path) -> None:
    """Runs inside the anomalib venv: fit anomalib's model on the given tensors, write test scores and maps."""
    import numpy as np
    import timm
    import torch
    from safetensors.torch import load_file

    spec = json.loads(spec_path.read_text())
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    weights = load_file(spec["weights"])
    train = torch.from_numpy(np.load(spec["train"])).float()
    test = torch.from_numpy(np.load(spec["test"])).float()
    layers = [(RESNET_LAYERS if spec["method"] == "rd" else LITE0_LAYERS)[s] for s in spec["strides"]]

    def load_weights(module: torch.nn.Module) -> None:
        missing, unexpected = module.load_state_dict(weights, strict=False)
        needed = [k for k in missing if k.split(".")[0] != "blocks" or int(k.split(".")[1]) <= max(
            int(name.split(".")[1]) for name in layers)]
        if needed or unexpected:
            raise SystemExit(f"anomalib worker: weights do not fit: missing {needed[:3]}, unexpected {unexpected[:3]}")

    t0 = time.perf_counter()
    if spec["method"] == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=layers, backbone=spec["backbone"], pre_trained=False, num_neighbors=9)
        load_weights(model.feature_extractor.feature_extractor)
        model.train()
        with torch.no_grad():
            for batch in train.split(spec["batch_size"]):
                model(batch)
            model.subsample_embedding(spec["coreset_ratio"])
        info = {"memory_size": int(model.memory_bank.shape[0])}
    elif spec["method"] == "rd":
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
        from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

        model = ReverseDistillationModel(backbone=spec["backbone"], input_size=tuple(train.shape[-2:]),
                                         layers=layers, anomaly_map_mode="add", pre_trained=False)
        missing, unexpected = model.encoder.feature_extractor.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise SystemExit(f"anomalib worker: weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        loss_fn = ReverseDistillationLoss()
        # As anomalib's ReverseDistillation.configure_optimizers.
        optimizer = torch.optim.Adam(list(model.decoder.parameters()) + list(model.bottleneck.parameters()),
                                     lr=0.005, betas=(0.5, 0.99))
        generator = torch.Generator().manual_seed(spec["seed"])
        for _ in range(spec["epochs"]):
            model.train()
            for idx in torch.randperm(len(train), generator=generator).split(spec["batch_size"]):
                if len(idx) < spec["batch_size"]:  # the last short batch is dropped, as on our side
                    continue
                loss = loss_fn(*model(train[idx]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        info = {"memory_size": None}
    else:
        from anomalib.models.image.cfa import torch_model as cfa_torch
        from anomalib.models.image.cfa.loss import CfaLoss

        class StageDict(torch.nn.Module):
            """Our Lite0 stages under the names anomalib's CFA expects for a ResNet (layer1..layer3)."""

            def __init__(self) -> None:
                super().__init__()
                probe = timm.create_model(spec["backbone"], pretrained=False, features_only=True)
                names = [i["module"] for i in probe.feature_info.info]
                self.body = timm.create_model(spec["backbone"], pretrained=False, features_only=True,
                                              out_indices=[names.index(n) for n in layers])
                load_weights(self.body)
                self.body.eval().requires_grad_(False)

            def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
                return {f"layer{i + 1}": f for i, f in enumerate(self.body(x))}

        cfa_torch.get_feature_extractor = lambda backbone, return_nodes: StageDict()
        model = cfa_torch.CfaModel(backbone="resnet18", gamma_c=spec["gamma_c"], gamma_d=spec["gamma_d"],
                                   num_nearest_neighbors=spec["k"], num_hard_negative_features=spec["j"],
                                   radius=spec["r_init"])
        channels = sum(model.feature_extractor.body.feature_info.channels())
        model.descriptor.layer = cfa_torch.CoordConv2d(channels, channels // spec["gamma_d"], kernel_size=1)
        batches = list(train.split(spec["batch_size"]))
        model.initialize_centroid([type("B", (), {"image": b})() for b in batches])
        loss_fn = CfaLoss(spec["k"], spec["j"], spec["r_init"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4, amsgrad=True)
        generator = torch.Generator().manual_seed(spec["seed"])
        for _ in range(spec["epochs"]):
            model.train()
            for idx in torch.randperm(len(train), generator=generator).split(spec["batch_size"]):
                loss = loss_fn(model(train[idx]))
                optimizer.zero_grad()
                loss.backward(retain_graph=True)  # as anomalib's Cfa.backward: its radius is a non-leaf tensor
                optimizer.step()
        info = {"memory_size": int(model.memory_bank.shape[1])}
    fit_seconds = time.perf_counter() - t0

    model.eval()
    scores, maps = [], []
    t1 = time.perf_counter()
    with torch.no_grad():
        for batch in test.split(spec["batch_size"]):
            out = model(batch)
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map.reshape(len(batch), *batch.shape[-2:]))
    predict_seconds = time.perf_counter() - t1
    np.save(spec["out_scores"], torch.cat(scores).numpy())
    np.save(spec["out_maps"], torch.cat(maps).numpy().astype(np.float32))
    import anomalib

    Path(spec["out_info"]).write_text(json.dumps({**info, "fit_seconds": fit_seconds,
                                                  "ms_per_image": 1000 * predict_seconds / len(test),
                                                  "anomalib": anomalib.__version__}))


# ------------------------------------------------------------------------------------------------ our side
def anomalib_available(python: str) -> str | None:
    """None when ``python`` runs and imports anomalib; otherwise why not."""
    if not Path(python).exists():
        return f"no anomalib environment at {python} (set --anomalib-python or ADCORE_ANOMALIB_PYTHON)"
    probe = subprocess.run([python, "-c", "import anomalib, safetensors; print(anomalib.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{python} cannot import anomalib: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def run_pair(args, method: str, category: str, seed: int, work: Path) -> list[dict]:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from adcore.data.dataset import make_loader
    from adcore.data.mvtec import load_category, read_image, train_val_split
    from adcore.methods import load_model, resolve_settings
    from adcore.metrics import compute_all
    from adcore.training import TrainOptions, train_model

    our_method = "nnet" if method == "rd" else method
    overrides = [f"train.seed={seed}", *(RD_OVERRIDES if method == "rd" else []), *args.overrides.get(method, [])]
    if method == "patchcore":
        overrides += [f"method.patchcore.coreset_ratio={args.coreset_ratio}", "method.patchcore.coreset_min=0"]
    if method == "cfa" and args.cfa_epochs is not None:
        overrides.append(f"method.cfa.epochs={args.cfa_epochs}")
    settings = resolve_settings(our_method, "cpu", None, overrides)
    result = train_model(settings, args.data_root, category, work / "ours",
                         TrainOptions(progress=False, cache_dir=work / "cache"), overwrite=True)
    model = load_model(work / "ours")
    transform = model.make_transform()
    cat = load_category(args.data_root, category)
    train, _ = train_val_split(cat.train, settings.data.val_fraction, seed, settings.data.min_val_images)
    np.save(work / "train.npy", torch.stack([transform(read_image(s.path)) for s in train]).numpy())

    images, masks, labels, our_scores, our_maps = [], [], [], [], []
    t0 = time.perf_counter()
    for batch in make_loader(cat.test, transform, settings.data.batch_size):
        pred = model.predict(batch["image"])
        our_scores.append(pred.scores)
        our_maps.append(pred.maps)
        images.append(batch["image"])
        masks.append(batch["mask"])
        labels.append(batch["label"])
    ours_ms = 1000 * (time.perf_counter() - t0) / len(cat.test)
    np.save(work / "test.npy", torch.cat(images).numpy())
    masks_np, labels_np = torch.cat(masks).numpy(), torch.cat(labels).numpy()
    save_file({k: v.contiguous() for k, v in model.backbone.body.state_dict().items()},
              str(work / "weights.safetensors"))

    cfg = settings.method
    spec = {"method": method, "backbone": settings.backbone.name, "strides": list(model.backbone.strides),
            "weights": str(work / "weights.safetensors"), "train": str(work / "train.npy"),
            "test": str(work / "test.npy"), "seed": seed, "batch_size": settings.data.batch_size,
            "out_scores": str(work / "a_scores.npy"), "out_maps": str(work / "a_maps.npy"),
            "out_info": str(work / "a_info.json"), "threads": torch.get_num_threads()}
    if method == "patchcore":
        spec.update(coreset_ratio=cfg.coreset_ratio)
    elif method == "rd":
        spec.update(epochs=cfg.epochs)
    else:
        spec.update(batch_size=cfg.batch_size, epochs=cfg.epochs, k=cfg.k, j=cfg.j, gamma_c=cfg.gamma_c,
                    gamma_d=cfg.gamma_d, r_init=cfg.r_init)
    (work / "spec.json").write_text(json.dumps(spec))
    subprocess.run([args.anomalib_python, __file__, "--worker", str(work / "spec.json")], check=True)
    info = json.loads((work / "a_info.json").read_text())

    fpr = settings.evaluation.aupro_fpr_limit
    meta = json.loads((work / "ours" / "model.json").read_text())
    rows = []
    for side, scores, maps, seconds, ms, memory in (
        ("adcore", torch.cat(our_scores).numpy(), torch.cat(our_maps).numpy(), result.seconds, ours_ms,
         meta.get("fit_info", {}).get("memory_size")),
        (f"anomalib {info['anomalib']}", np.load(work / "a_scores.npy"), np.load(work / "a_maps.npy"),
         info["fit_seconds"], info["ms_per_image"], info["memory_size"]),
    ):
        m = compute_all(scores, labels_np, maps, masks_np, fpr_limit=fpr)
        rows.append({"method": method, "category": category, "seed": seed, "side": side,
                     "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"], "aupro": m["pixel_aupro"],
                     "pixel_ap": m["pixel_ap"], "fit_seconds": round(seconds, 1), "ms_per_image": round(ms, 1),
                     "memory_size": memory, "input_px": int(transform.output_size), "n_train": len(train)})
    return rows


def summarise(rows: list[dict]) -> str:
    import numpy as np

    keys = ["image_auroc", "pixel_auroc", "aupro", "pixel_ap", "fit_seconds"]
    lines = ["| method | category | side | seeds | " + " | ".join(keys) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["category"], r["side"]), []).append(r)
    for (method, category, side), rs in groups.items():
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rs], dtype=float)
            fmt = "{:.1f}" if k == "fit_seconds" else "{:.3f}"
            cells.append(fmt.format(v.mean()) + (" ± " + fmt.format(v.std(ddof=1)) if len(v) > 1 else ""))
        lines.append(f"| {method} | {category} | {side} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--methods", nargs="+", default=["patchcore", "cfa"], choices=["patchcore", "cfa", "rd"])
    parser.add_argument("--categories", nargs="+", default=["magnetic_tile", "pcb"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--coreset-ratio", type=float, default=0.1, help="PatchCore, both sides (issue: 10%%)")
    parser.add_argument("--cfa-epochs", type=int, default=None, help="CFA epochs, both sides (default: cpu profile)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="extra override for one method's cpu profile, e.g. cfa:data.image_size=192")
    parser.add_argument("--anomalib-python", default=os.environ.get("ADCORE_ANOMALIB_PYTHON", DEFAULT_ANOMALIB_PYTHON))
    parser.add_argument("--out", type=Path, default=Path("runs/anomalib_side_by_side.jsonl"))
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="JSONL",
                        help="only print the table (mean ± sample std over seeds) of earlier runs' JSON lines")
    args = parser.parse_args()
    if args.summarise:
        print(summarise([json.loads(line) for path in args.summarise for line in path.read_text().splitlines()
                         if line.strip()]))
        return
    args.overrides = {}
    for item in args.sets:
        method, _, override = item.partition(":")
        args.overrides.setdefault(method, []).append(override)

    reason = anomalib_available(args.anomalib_python)
    if reason:
        print(f"skipped: {reason}")
        return
    if not (args.data_root / "magnetic_tile").is_dir() and not (args.data_root / "pcb").is_dir():
        print(f"skipped: no data at {args.data_root} (see ../shared/data/README.md)")
        return

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods:
        for category in args.categories:
            for seed in args.seeds:
                work = Path(tempfile.mkdtemp(prefix="adcore_vs_anomalib_"))
                try:
                    pair = run_pair(args, method, category, seed, work)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                with args.out.open("a") as f:
                    for row in pair:
                        f.write(json.dumps(row) + "\n")
                        print(json.dumps(row), flush=True)
                rows.extend(pair)
    print()
    print(summarise(rows))


if __name__ == "__main__":
    main()
