"""CFA measurements for the issue's closing note: cpu profile on real categories, Table 5 ablation, CFA vs CFA++,
and PatchCore beside it on the same data and backbone.

    .venv/bin/python benchmarks/cfa_ablation.py --data-root ../shared/data --out runs/cfa_bench

Each run trains through ``adcore.training.train_model`` and evaluates through ``adcore.evaluation.evaluate_model``
(the same code as ``adcore train`` / ``adcore evaluate``); results are appended to ``<out>/results.jsonl`` and a
table is printed. Timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RUNS = {
    # name: (method, category, overrides)
    "cfa_mt": ("cfa", "magnetic_tile", []),
    "cfa_pcb": ("cfa", "pcb", []),
    "cfa_none_mt": ("cfa", "magnetic_tile", ["method.cfa.ablation=none"]),
    "cfa_att_mt": ("cfa", "magnetic_tile", ["method.cfa.ablation=att"]),
    "cfapp_mt": ("cfa", "magnetic_tile", ["method.cfa.variant=cfa++"]),
    "cfapp_pcb": ("cfa", "pcb", ["method.cfa.variant=cfa++"]),
    "patchcore_pcb": ("patchcore", "pcb", []),
    "patchcore_mt": ("patchcore", "magnetic_tile", []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", default="runs/cfa_bench")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()

    from adcore.evaluation import evaluate_model
    from adcore.methods import resolve_settings
    from adcore.metrics import METRIC_KEYS
    from adcore.training import TrainOptions, train_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.runs:
        method, category, overrides = RUNS[name]
        t0 = time.perf_counter()
        result = train_model(resolve_settings(method, args.profile, None, overrides), args.data_root, category,
                             out / name, TrainOptions(progress=False), overwrite=True)
        train_wall = time.perf_counter() - t0
        metrics = evaluate_model(out / name, args.data_root, category, out / name / "eval.json", progress=False,
                                 write_artifacts=False)
        meta = json.loads((out / name / "model.json").read_text())
        fit = meta.get("fit_info", {})
        row = {"run": name, "method": method, "category": category, "overrides": overrides,
               "train_seconds": result.seconds, "train_wall_seconds": train_wall,
               "ms_per_image": metrics["ms_per_image"], "memory_size": fit.get("memory_size"),
               "n_train": fit.get("n_train") or fit.get("n_patches"),
               **{k: metrics.get(k) for k in METRIC_KEYS}}
        with open(out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(" | ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
