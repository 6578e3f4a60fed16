"""Three promotion-gate decisions on constructed per-image scores: a tie, a clear win and a noisy win.

``python benchmarks/gate_decisions.py [--resamples 2000]``. 100 test images (80 normal, 20 anomalous); a model's
scores are N(0, 1) for normal images and N(separation, 1) for anomalous ones, seeded. Each challenger goes through
components.gate exactly as in ``register`` (paired stratified bootstrap, seed 0, margin 0, tolerance 0.02), and
the old rule (point estimate, margin 0, ``>=``) is printed beside it.
"""

from __future__ import annotations

import argparse

import numpy as np

from components.gate import GateSettings, decide, paired_interval

LABELS = np.r_[np.zeros(80, np.int64), np.ones(20, np.int64)]


def scores(separation: float, seed: int) -> np.ndarray:
    return LABELS * separation + np.random.default_rng(seed).normal(size=len(LABELS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    gate = GateSettings(resamples=args.resamples)
    champion = scores(1.5, seed=0)
    cases = {
        "tie (champion retrained: its scores jittered by N(0, 0.05))":
            champion + np.random.default_rng(1).normal(scale=0.05, size=len(LABELS)),
        "clear win (separation 3.5 vs 1.5)": scores(3.5, seed=2),
        "noisy win (same separation 1.5, another draw)": scores(1.5, seed=3),
    }
    print(f"gate: {gate.metric}, margin {gate.margin}, tolerance {gate.tolerance}, {gate.resamples} resamples, "
          f"seed {gate.seed}; {len(LABELS)} images ({int(LABELS.sum())} anomalous)\n")
    for name, challenger in cases.items():
        interval = paired_interval(LABELS, challenger, champion, gate)
        ok, reasons = decide({gate.metric: interval.challenger}, {gate.metric: interval.champion}, interval, gate,
                             champion_label="champion v1")
        old = "promote" if interval.challenger >= interval.champion else "reject"
        print(f"{name}\n  challenger {interval.challenger:.4f}  champion {interval.champion:.4f}  "
              f"difference {interval.describe()}\n  gate: {'PROMOTED' if ok else 'REJECTED'}  (old rule: {old})\n"
              f"  reason: {reasons[0]}\n")


if __name__ == "__main__":
    main()
