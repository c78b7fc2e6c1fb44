"""Would a FLOPs-prior weight chosen per space, on a few fully trained architectures, beat a fixed one?

A simulation on the ranking suite's committed scores (no training): for each pair, ``C`` of its 100
candidates play the calibration set. The weight ``w`` of :meth:`nas.ghn.GHNRanker.score`
(``z(predicted TSE) - w z(log FLOPs)``) is chosen from ``WEIGHTS`` by Kendall tau against their
seed-0 ground truth, and the ranking with that ``w`` is scored on the other candidates against the
2-seed ground truth, beside the fixed weights 0.5 and 0 and the best weight in hindsight
(``oracle``). Repeated over random splits.

The score with any ``w`` is rebuilt from the committed columns: ``score_ghn_noprior`` is
``-z(predicted TSE)`` and ``score_ghn - score_ghn_noprior`` is ``0.5 z(log FLOPs)``.

Examples:
    python experiments/studies/calibrated_prior.py --calibration 10 20 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[1] / "results"
PAIRS = ("nb201-mnist5k", "macro-digits", "nb201n3-digits", "darts-digits", "my_space-digits",
         "branch_space-digits")
WEIGHTS = (0.0, 0.25, 0.5, 1.0)
FIXED_WEIGHT = 0.5  # the weight the committed ``score_ghn`` column was scored with


def _tau(score: np.ndarray, quality: np.ndarray) -> float:
    return float(kendalltau(score, quality).statistic)


def simulate(pair: str, calibration: int, splits: int, rng: np.random.Generator) -> dict[str, float]:
    """Mean Kendall tau on the non-calibration candidates of ``pair`` over ``splits`` random splits."""
    frame = pd.read_csv(ROOT / pair / "candidates.csv").dropna(subset=["gt_val_loss", "score_ghn", "score_ghn_noprior"])
    z = frame["score_ghn_noprior"].to_numpy()  # higher is better
    flops = (frame["score_ghn"].to_numpy() - z) / FIXED_WEIGHT  # z(log FLOPs)
    seed0, truth = -frame["gt_val_loss_s0"].to_numpy(), -frame["gt_val_loss"].to_numpy()
    out: dict[str, list[float]] = {"calibrated": [], "w=0.5": [], "w=0": [], "oracle": [], "chosen_w": []}
    for _ in range(splits):
        order = rng.permutation(len(frame))
        cal, ev = order[:calibration], order[calibration:]
        taus = [_tau(z[cal] + w * flops[cal], seed0[cal]) for w in WEIGHTS]
        w = WEIGHTS[int(np.nanargmax(taus))]  # ties: the smallest weight
        out["chosen_w"].append(w)
        out["calibrated"].append(_tau(z[ev] + w * flops[ev], truth[ev]))
        out["w=0.5"].append(_tau(z[ev] + 0.5 * flops[ev], truth[ev]))
        out["w=0"].append(_tau(z[ev], truth[ev]))
        out["oracle"].append(max(_tau(z[ev] + v * flops[ev], truth[ev]) for v in WEIGHTS))
    return {name: float(np.mean(values)) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--calibration", type=int, nargs="+", default=[10, 20, 30], help="calibration set sizes")
    parser.add_argument("--splits", type=int, default=200, help="random splits per pair")
    parser.add_argument("--out", type=Path, default=ROOT / "suite" / "calibrated_prior_simulation.csv")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = [{"calibration": c, "pair": p, **simulate(p, c, args.splits, rng)} for c in args.calibration for p in PAIRS]
    table = pd.DataFrame(rows).round(3)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))
    print(table.groupby("calibration")[["calibrated", "w=0.5", "w=0", "oracle"]].mean().round(3).to_string())


if __name__ == "__main__":
    main()
