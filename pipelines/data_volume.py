"""``python -m pipelines.data_volume MANIFEST [--methods 5]``: dataset bytes one night moves, before and after
per-category dataset artifacts, computed from a fetch manifest (``manifest.json``: every file with its size).

Before (one dataset artifact of every category): fetch downloads the whole source and uploads it to the pipeline
root, then every features pod (one per category) and every train, evaluate and register pod (one per category and
method) downloads the whole artifact: ``D x (2 + C + 3 C M)``.
After (one artifact per category; register downloads only to re-evaluate a champion): each category's fetch
downloads and uploads only that category, its features pod and its M train and M evaluate pods download it:
``sum_c d_c x (3 + 2 M)`` plus ``d_c`` per re-evaluation. An unchanged night (cached fetch, features, train,
evaluate) moves no dataset bytes at all. Both totals depend only on the total size, not on how it is spread over
categories, so ``--total-bytes`` gives the figure for a data set whose manifest is not at hand.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from adcore.errors import ConfigError

GIB = 1024**3


def category_bytes(manifest: str | Path) -> dict[str, int]:
    """Bytes per category (first path component) of a fetch manifest."""
    try:
        files = json.loads(Path(manifest).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{manifest}: not a fetch manifest ({type(exc).__name__}: {exc})") from None
    out: dict[str, int] = {}
    for entry in files:
        top = entry["path"].split("/", 1)[0]
        if "/" in entry["path"]:
            out[top] = out.get(top, 0) + int(entry["size"])
    if not out:
        raise ConfigError(f"{manifest}: lists no files under a category folder")
    return out


def night_bytes(per_category: dict[str, int], methods: int, reevaluations: int = 0) -> dict[str, Any]:
    """Dataset bytes moved per night, before and after; ``reevaluations``: register steps that must re-evaluate."""
    total, n = sum(per_category.values()), len(per_category)
    before = total * (2 + n + 3 * n * methods)
    largest = max(per_category.values())
    after = total * (3 + 2 * methods) + reevaluations * largest  # a re-evaluation: at most the largest category
    return {"categories": n, "methods": methods, "dataset_bytes": total, "before_bytes": before,
            "before_copies": before / total, "after_bytes": after, "after_copies": after / total,
            "after_unchanged_night_bytes": 0, "reduction": before / after}


def scratch_size(manifest: str | Path) -> str:
    """Size limit of a per-category pod's /tmp: the feature cache copy and the register step's download, sized as
    twice the largest category plus 4 GiB for checkpoints and temporary files (a kfp quantity, e.g. ``12Gi``)."""
    largest = max(category_bytes(manifest).values())
    return f"{math.ceil((2 * largest + 4 * GIB) / GIB)}Gi"


def _fmt(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.2f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.data_volume", description=__doc__.splitlines()[0])
    parser.add_argument("manifest", nargs="?", default="", help="a fetch manifest.json")
    parser.add_argument("--methods", type=int, default=5)
    parser.add_argument("--total-bytes", type=float, default=0, help="instead of a manifest: this total ...")
    parser.add_argument("--categories", type=int, default=15, help="... over this many categories")
    parser.add_argument("--reevaluations", type=int, default=0, help="register steps re-evaluating a champion")
    args = parser.parse_args(argv)
    try:
        if args.manifest:
            per_category = category_bytes(args.manifest)
            source = args.manifest
        elif args.total_bytes > 0:
            per_category = {f"c{i}": int(args.total_bytes / args.categories) for i in range(args.categories)}
            source = f"{_fmt(args.total_bytes)} over {args.categories} categories"
        else:
            raise ConfigError("give a manifest.json or --total-bytes")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    r = night_bytes(per_category, args.methods, args.reevaluations)
    print(f"{source}: {r['categories']} categories x {r['methods']} methods, dataset {_fmt(r['dataset_bytes'])}")
    print(f"  before: {_fmt(r['before_bytes'])} per night ({r['before_copies']:.0f} copies of the dataset)")
    print(f"  after:  {_fmt(r['after_bytes'])} per night ({r['after_copies']:.0f} copies), "
          f"{r['reduction']:.1f}x less; an unchanged night: {r['after_unchanged_night_bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
