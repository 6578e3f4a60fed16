"""Save a picture grid of PRN's generated anomalies (EA, HEA, HOA) with their masks for one category.

    .venv/bin/python benchmarks/anomaly_grid.py --data-root ../shared/data --category magnetic_tile \
        --output runs/prn_grid_magnetic_tile.png [--texture-dir ../shared/data/dtd] [--n-seen 10] [--image-size 256]

Each row is one kind; each pair shows the anomalous image (target area outlined in blue) and its mask (white:
the anomaly region the model is trained to find, dark blue: the rest of the target area). Seen anomalies are drawn
from the test split with ``--seed`` exactly as training draws them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adcore.synthesis.grid import anomaly_grid_for_category  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--output", required=True, help="PNG file to write")
    p.add_argument("--texture-dir", default=None, help="texture images for HEA (default: procedural textures)")
    p.add_argument("--n-seen", type=int, default=10, help="seen anomalies drawn from test (EA sources)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--n-per-kind", type=int, default=6)
    p.add_argument("--target-area", choices=("auto", "foreground", "whole"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = anomaly_grid_for_category(a.data_root, a.category, a.output, n_seen=a.n_seen, image_size=a.image_size,
                                    texture_dir=a.texture_dir, seed=a.seed, n_per_kind=a.n_per_kind,
                                    target_area=a.target_area)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
