"""Ablations and before/after tables with several seeds: variants x seeds on one category, mean and spread.

Each run trains through ``adcore.training.train_model`` and evaluates through ``adcore.evaluation.evaluate_model``
(the code of ``adcore train`` / ``adcore evaluate``). Runs of a category share one feature cache (``--cache``), so the
frozen backbone's pass over the training images is paid once per (backbone, size) and the timings are the head's.
A variant is a name, then ``KEY=VALUE`` overrides on top of the profile; ``method=NAME`` trains another method
(PatchCore beside PRN), ``exclude_seen_from=VARIANT`` evaluates it without the seen anomalies of that variant's
model with the same seed (PRN's reduced test split), and ``model=PATH`` evaluates a model trained earlier instead of
training one (``{seed}`` in PATH is replaced by the seed; its train seconds are then those recorded in the model).

    .venv/bin/python benchmarks/ablation.py --method prn --category magnetic_tile --seeds 0 1 2 \\
        --variant full --variant no_mp method.prn.use_mp=false \\
        --variant patchcore method=patchcore exclude_seen_from=full --out runs/prn_ablation.jsonl

Results are appended as JSON lines (``--out``), one per (variant, seed); finished (variant, seed) pairs already in
the file are skipped, so an interrupted table resumes. ``--table-only`` prints the table of the file: per variant the
mean and the sample standard deviation over seeds of image AUROC, pixel AUROC, AUPRO and the train seconds.
The test split reports; nothing here chooses a setting (choose on validation: ``cpu_profile_search.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")


def parse_variant(spec: list[str], default_method: str) -> dict:
    name, *items = spec
    variant = {"name": name, "method": default_method, "exclude_seen_from": None, "model": None, "overrides": []}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {name}: {item!r} is not KEY=VALUE")
        if key in ("method", "exclude_seen_from", "model"):
            variant[key] = value
        else:
            variant["overrides"].append(item)
    return variant


def done_runs(path: Path) -> dict[tuple[str, int], dict]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["variant"], r["seed"]): r for r in rows}


def table(rows: list[dict], order: list[str] | None = None) -> str:
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    names = [n for n in (order or []) if n in by_variant] + [n for n in by_variant if n not in (order or [])]

    def cell(values: list[float], fmt: str = "{:.3f}") -> str:
        if len(values) == 1:
            return fmt.format(values[0])
        return fmt.format(statistics.mean(values)) + " ± " + fmt.format(statistics.stdev(values))

    lines = ["| variant | seeds | image AUROC | pixel AUROC | AUPRO@0.3 | pixel AP | train s | test images |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        rs = sorted(by_variant[name], key=lambda r: r["seed"])
        metrics = " | ".join(cell([r[k] for r in rs]) for k in KEYS)
        lines.append(f"| {name} | {','.join(str(r['seed']) for r in rs)} | {metrics} | "
                     f"{cell([r['train_seconds'] for r in rs], '{:.0f}')} | {rs[0]['n_test']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--method", required=True, help="method of the variants without method=...")
    parser.add_argument("--category", required=True)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--models", type=Path, default=None, help="keep models here (default: next to --out)")
    parser.add_argument("--cache", type=Path, default=None, help="feature cache (default: next to --out)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()

    variants = [parse_variant(v, args.method) for v in args.variant]
    if args.table_only:
        print(table(list(done_runs(args.out).values()), [v["name"] for v in variants]))
        return
    if not variants:
        raise SystemExit("--variant: give at least one")

    from adcore.evaluation import evaluate_model
    from adcore.methods import load_model, resolve_settings
    from adcore.training import TrainOptions, train_model

    args.out.parent.mkdir(parents=True, exist_ok=True)
    models = args.models or args.out.with_suffix("") / "models"
    cache = args.cache or args.out.with_suffix("") / "cache"
    done = done_runs(args.out)
    for seed in args.seeds:
        for v in variants:
            if (v["name"], seed) in done:
                continue
            if v["model"]:
                model_dir = Path(v["model"].replace("{seed}", str(seed)))
                meta = json.loads((model_dir / "model.json").read_text())
                seconds = wall = float(meta.get("fit_info", {}).get("train_seconds") or meta.get("train_seconds") or 0)
            else:
                settings = resolve_settings(v["method"], args.profile, None, [*v["overrides"], f"train.seed={seed}"])
                model_dir = models / f"{args.category}_{v['name']}_s{seed}"
                t0 = time.perf_counter()
                seconds = train_model(settings, args.data_root, args.category, model_dir,
                                      TrainOptions(progress=False, cache_dir=cache), overwrite=True).seconds
                wall = time.perf_counter() - t0
            exclude: list[str] = []
            if v["exclude_seen_from"]:
                other = models / f"{args.category}_{v['exclude_seen_from']}_s{seed}"
                exclude = list(load_model(other, device="cpu").fit_info.get("seen_anomalies") or [])
            eval_json = models / f"{args.category}_{v['name']}_s{seed}_eval.json"
            metrics = evaluate_model(model_dir, args.data_root, args.category, eval_json, progress=False,
                                     write_artifacts=False, exclude=exclude)
            fit_info = json.loads((model_dir / "model.json").read_text()).get("fit_info", {})
            row = {"variant": v["name"], "method": v["method"], "category": args.category, "seed": seed,
                   "profile": args.profile, "overrides": v["overrides"], "exclude_seen_from": v["exclude_seen_from"],
                   "train_seconds": round(seconds, 1), "train_wall_seconds": round(wall, 1),
                   "n_test": metrics["n_images"],
                   "history_length": len(fit_info.get("history") or []),
                   "last_loss": (fit_info.get("history") or [{}])[-1].get("loss"),
                   **{k: metrics[k] for k in KEYS}}
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(table(list(done_runs(args.out).values()), [v["name"] for v in variants]))


if __name__ == "__main__":
    main()
