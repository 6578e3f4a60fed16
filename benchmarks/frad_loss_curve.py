"""FRAD's loss curve: train the cpu profile on one category and print, per epoch, the optimiser steps so far, the
training loss and the reconstruction loss on the held-out normal validation images (the split ``adcore train``
makes from ``train/good``; no test image is read). Says after how many steps the validation loss has flattened:
the first epoch from which it never falls more than ``--tol`` (relative) below its value there.

    .venv/bin/python benchmarks/frad_loss_curve.py --category magnetic_tile --set method.frad.min_steps=600
    .venv/bin/python benchmarks/frad_loss_curve.py --demo --category widget --set method.frad.min_steps=300

``--demo`` generates the demo dataset (as ``adcore quickstart`` does) in a temporary folder and uses it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def flattened_at(values: list[float], tol: float) -> int:
    """Index of the first value v such that no later value is below v * (1 - tol)."""
    for i, v in enumerate(values):
        if min(values[i:]) >= v * (1.0 - tol):
            return i
    return len(values) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--demo", action="store_true", help="use the generated demo dataset instead of --data-root")
    parser.add_argument("--category", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override on top of the cpu profile (repeatable)")
    parser.add_argument("--tol", type=float, default=0.02, help="relative tolerance of 'flattened'")
    parser.add_argument("--out", type=Path, default=None, help="also write the curve as JSON here")
    args = parser.parse_args()

    from adcore.data.demo import generate_demo_dataset
    from adcore.methods import resolve_settings
    from adcore.training import TrainOptions, train_model

    settings = resolve_settings("frad", "cpu", None, [*args.overrides, f"train.seed={args.seed}"])
    with tempfile.TemporaryDirectory(prefix="frad_curve_") as tmp:
        work = Path(tmp)
        root = generate_demo_dataset(work / "data") if args.demo else args.data_root
        result = train_model(settings, root, args.category, work / "model",
                             TrainOptions(progress=False, cache_dir=work / "cache"))
        n_train = json.loads((work / "model" / "model.json").read_text())["data"]["n_train"]
    history = result.history
    print(f"frad cpu profile on {args.category} (seed {args.seed}, {n_train} training images, overrides "
          f"{args.overrides or 'none'}): {len(history)} epochs, {history[-1]['steps']:.0f} steps, "
          f"{result.seconds:.1f} s")
    print("| epoch | steps | train loss | train loss_rec | val loss_rec | epoch s |")
    print("|---|---|---|---|---|---|")
    for epoch, h in enumerate(history, 1):
        val = h.get("val_loss_rec")
        print(f"| {epoch} | {h['steps']:.0f} | {h['loss']:.4f} | {h['loss_rec']:.4f} | "
              f"{'-' if val is None else f'{val:.4f}'} | {h['epoch_seconds']:.2f} |")
    vals = [h["val_loss_rec"] for h in history if "val_loss_rec" in h]
    if vals:
        i = flattened_at(vals, args.tol)
        print(f"validation loss: first {vals[0]:.4f}, last {vals[-1]:.4f}, min {min(vals):.4f}; flattened (within "
              f"{args.tol:.0%}) from epoch {i + 1}, step {history[i]['steps']:.0f}")
    if args.out is not None:
        from adcore.io import atomic_write_json

        atomic_write_json(args.out, {"category": args.category, "seed": args.seed, "overrides": args.overrides,
                                     "n_train": n_train, "seconds": result.seconds, "history": history})


if __name__ == "__main__":
    main()
