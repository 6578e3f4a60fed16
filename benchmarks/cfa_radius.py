"""The radius r of CFA over a full-length training run: does L_rep ever become non-zero?

L_rep (Eq. 2) is max(0, r^2 - D - alpha) over the hard negatives: with r starting at 1e-5 and alpha = 0.1 it is
zero until r^2 exceeds alpha + D, i.e. r > sqrt(0.1) ~ 0.32 at least. This trains CFA at the paper's length
(30 epochs, batch 4) on one category and prints r after each epoch and the number of optimisation steps in which
L_rep was non-zero (the epoch history's ``r`` and ``rep_steps``), and, on a fixed probe of training images, how
far the hard negatives (the (K+1)..(K+J)-th nearest memory items) are: their smallest and median squared distance
D_neg and the share of (patch, negative) pairs with r^2 - D_neg - alpha > 0, i.e. inside the repelling margin.

    .venv/bin/python benchmarks/cfa_radius.py --data-root ../shared/data --category magnetic_tile
    .venv/bin/python benchmarks/cfa_radius.py --category magnetic_tile \
        --set data.image_size=128 --set data.crop_size=112

The cpu profile's features (offline EfficientNet-Lite0) are the default; ``--profile paper`` needs the hub weights.
A JSON line with the whole trajectory is printed last.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--probe", type=int, default=32, help="training images probed for hard-negative distances")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import torch

    from adcore.data.mvtec import load_category
    from adcore.methods import create_model, resolve_settings
    from adcore.methods.base import FitData, TrainOptions
    from adcore.methods.cfa.loss import nearest, split_neighbours

    overrides = [f"method.cfa.epochs={args.epochs}", f"method.cfa.batch_size={args.batch_size}", *args.overrides]
    settings = resolve_settings("cfa", args.profile, None, overrides)
    model = create_model(settings)
    category = load_category(args.data_root, args.category)
    train = category.train[: args.max_train] if args.max_train else category.train
    steps_per_epoch = -(-len(train) // settings.method.batch_size)
    print(f"cfa on {args.category}: {len(train)} training images, {args.epochs} epochs x {steps_per_epoch} steps, "
          f"backbone {settings.backbone.name}, image {settings.data.image_size}/{settings.data.crop_size}, "
          f"r0 = {settings.method.r_init}, alpha = {settings.method.alpha}", flush=True)

    cfg = settings.method
    probe_options = TrainOptions(progress=False)
    probe = model.read_features(train[: args.probe], model.make_transform(), probe_options) if args.probe else None
    negatives: list[dict[str, float]] = []

    @torch.no_grad()
    def hard_negatives(r: float) -> dict[str, float]:
        """Smallest / median squared distance to the hard negatives on the probe, and the share inside r^2 - alpha."""
        view = model.check_is_fitted().view("main")
        dists = []
        for _, stages in probe.batches(cfg.batch_size, device=model.device):
            phi = view.descriptor(stages)
            phi = phi.permute(0, 2, 3, 1).reshape(-1, phi.shape[1])
            dists.append(split_neighbours(nearest(phi, view.bank, cfg.k + cfg.j), cfg.k, cfg.j)[1].flatten().cpu())
        d = torch.cat(dists).double()
        return {"neg_min": float(d.min()), "neg_median": float(d.median()),
                "inside_margin": float((r * r - d - cfg.alpha > 0).double().mean())}

    def on_epoch(epoch: int, losses: dict[str, float]) -> None:
        neg = hard_negatives(losses["r"]) if probe is not None else {}
        negatives.append(neg)
        extra = (f"  D_neg min {neg['neg_min']:.4g} median {neg['neg_median']:.4g}, pairs inside r^2 - alpha: "
                 f"{neg['inside_margin']:.2%}" if neg else "")
        print(f"epoch {epoch + 1:3d}  r = {losses['r']:.6g}  r^2 = {losses['r'] ** 2:.6g}  "
              f"L_att = {losses['att']:.6g}  L_rep = {losses['rep']:.6g}  steps with L_rep > 0: "
              f"{int(losses['rep_steps'])}/{steps_per_epoch}{extra}  ({losses['epoch_seconds']:.1f} s)", flush=True)

    t0 = time.perf_counter()
    model.fit(FitData(train=train, val=[], transform=model.make_transform(), category_name=args.category),
              TrainOptions(progress=False, on_epoch=on_epoch))
    history = model.fit_info["history"]
    rep_steps = int(sum(h["rep_steps"] for h in history))
    print(f"total steps with L_rep > 0: {rep_steps} of {steps_per_epoch * len(history)}; "
          f"final r = {history[-1]['r']:.6g}; {time.perf_counter() - t0:.0f} s", flush=True)
    print(json.dumps({"category": args.category, "profile": args.profile, "overrides": overrides,
                      "n_train": len(train), "steps_per_epoch": steps_per_epoch, "rep_steps_total": rep_steps,
                      "r": [h["r"] for h in history], "rep": [h["rep"] for h in history],
                      "rep_steps": [int(h["rep_steps"]) for h in history], "att": [h["att"] for h in history],
                      "hard_negatives": negatives}))


if __name__ == "__main__":
    main()
