"""The ranking suite: one protocol over several space / dataset pairs.

Per pair (:data:`PAIRS`): 100 candidates (sample seed 0) held out of everything
else, each trained with 2 seeds for 3 epochs (the ground truth, cached in
``experiments/results/<pair>/ground_truth.sqlite``); the noise ceiling (seed 0
against seed 1); every baseline of ``nas correlate``; the GHN's predicted-weight
loss (``ghn_plain``, a GHN meta-trained with the candidates held out); and the
campaign's ranker (``ghn``: fitted from random weights) at 100, 300 and 700
labels of 30 SGD steps, the same fitted from the GHN's weights (``ghn_meta``),
each with and without the FLOPs prior, beside a ridge regression on op counts
fitted on the same labels.
The rankers at ``Protocol.few`` labels are fitted on 3 label seeds, for the paired
bootstrap that settles what GHN initialisation adds.

Everything resumes: ground truth, labels (``ranker_labels_k30_s<seed>.csv``)
and each method's scores (``scores.csv``) are kept per pair, so a rerun trains
nothing twice; fitted rankers and the GHN live in ``rankers/`` and ``ghn/``
(not committed; a fresh clone fits them again, and the committed scores are
kept unless ``--rescore``).

Outputs in ``experiments/results/``: ``<pair>/candidates.csv``, ``summary.csv``,
``summary.json`` (per pair, as ``nas correlate``), and ``suite/suite.csv``,
``suite/suite.md``, ``suite/ghn_role.csv``, ``suite/kendall_by_pair.png|pdf``.
The protocol, the chosen defaults and the pass rule are in
``experiments/results/suite/RESULTS.md``.

Examples:
    python experiments/suite.py --pairs nb201-mnist5k macro-digits      # development pairs
    python experiments/suite.py --report                                # tables and figure only
    python experiments/suite.py --smoke --out /tmp/suite                # minutes: tiny budgets, 2 pairs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nas.data import load_dataset
from nas.evaluation import (
    DEFAULT_METHODS,
    RANKER_METHODS,
    LabelRecipe,
    correlate,
    ranker_methods,
    sample_candidates,
    summarize,
    write_results,
)
from nas.evaluation.correlate import CorrelationResult
from nas.evaluation.metrics import kendall_difference, ranking_scores
from nas.ghn import RANKER_K, RANKER_LABELS, MetaTrainConfig, meta_train
from nas.space import load_space

logger = logging.getLogger("experiments.suite")

ROOT = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Pair:
    """One space / dataset pair of the suite.

    Attributes:
        name: Folder under the results root.
        space: Space spec for :func:`nas.space.load_space`.
        dataset: Dataset name.
        settings: Space settings.
        held_out: A pair no default was chosen on (run once, after the defaults were fixed).
        label_seeds: Label sample seeds; the first labels ``Protocol.label_counts``, all ``Protocol.few``.
        round: The round of ``RESULTS.md`` the pair was added in (round 2: the prior's weight chosen per
            pair; round 3: no prior and short training, without the GHN-initialised rankers, settled by then).
    """

    name: str
    space: str
    dataset: str
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    held_out: bool = False
    label_seeds: tuple[int, ...] = (1, 2, 3)
    round: int = 1


PAIRS: tuple[Pair, ...] = (
    Pair("nb201-mnist5k", "nb201", "mnist5k"),
    Pair("macro-digits", "macro", "digits"),
    Pair("nb201n3-digits", "nb201", "digits", {"N": 3}),
    Pair("darts-digits", "darts", "digits"),
    # Held out: label seeds never used before on any pair.
    Pair("my_space-digits", "examples/my_space.py:MySpace", "digits", held_out=True, label_seeds=(101, 102, 103)),
    Pair("branch_space-digits", "examples/branch_space.py:BranchSpace", "digits", held_out=True,
         label_seeds=(101, 102, 103)),
    # Round 2's held-out pairs: spaces written after round 2's prior recipe was fixed, new label seeds.
    Pair("mobile_space-digits", "examples/mobile_space.py:MobileSpace", "digits", held_out=True,
         label_seeds=(201, 202, 203), round=2),
    Pair("resnet_space-digits", "examples/resnet_space.py:ResNetSpace", "digits", held_out=True,
         label_seeds=(201, 202, 203), round=2),
    # Round 3's held-out pairs: spaces written after round 3's choices, one new label seed.
    Pair("inception_space-digits", "examples/inception_space.py:InceptionSpace", "digits", held_out=True,
         label_seeds=(301,), round=3),
    Pair("dense_space-digits", "examples/dense_space.py:DenseSpace", "digits", held_out=True,
         label_seeds=(301,), round=3),
)

@dataclasses.dataclass(frozen=True, kw_only=True)
class Protocol:
    """Budgets of one suite run.

    Attributes:
        archs: Held-out candidates per pair (sample seed 0).
        epochs: Ground-truth training epochs (2 seeds).
        ghn_steps: GHN meta-training steps.
        label_counts: Ranker label counts fitted on the first label seed.
        few: Label count fitted on every label seed (the few-label comparison).
        default_labels: Label count of the ``ghn`` row (the campaign's recipe).
    """

    archs: int = 100
    epochs: float = 3.0
    ghn_steps: int = MetaTrainConfig().steps
    label_counts: tuple[int, ...] = (100, 300, RANKER_LABELS)
    few: int = 100
    default_labels: int = RANKER_LABELS


FULL = Protocol()
#: Minutes on 2 cores: checks the pipeline, measures nothing.
SMOKE = Protocol(archs=8, epochs=0.2, ghn_steps=20, label_counts=(6, 8), few=6, default_labels=8)
#: Baselines: every default method of ``nas correlate`` but the GHN rows.
BASELINES = [m for m in DEFAULT_METHODS if m not in ("ghn", "ghn_plain")]
ZERO_COST = ["synflow", "snip", "grad_norm", "jacob_cov", "naswot"]


def _suffix(n: int, proto: Protocol) -> str:
    return "" if n == proto.default_labels else f"_n{n}"


def _ranker_rows(pair: Pair, proto: Protocol) -> list[tuple[str, list[str], LabelRecipe]]:
    """(suffix, methods, recipe) of every ranker row of ``pair``: all ablations at the default count."""
    first = pair.label_seeds[0]
    rows: list[tuple[str, list[str], LabelRecipe]] = []
    for n in proto.label_counts:
        methods = ["ghn", "ghn_w05", "ghn_noprior", "ghn_meta", "ghn_meta_noprior", "opcount_ranker",
                   "opcount_ranker_flops"]
        if n != proto.default_labels:
            methods = ["ghn", "ghn_meta", "opcount_ranker_flops"]
        if pair.round >= 3:
            methods = [m for m in methods if not m.startswith("ghn_meta")]
        rows.append((_suffix(n, proto), methods, LabelRecipe(labels=n, k=RANKER_K, seed=first)))
    for s in pair.label_seeds[1:]:
        rows.append((f"_n{proto.few}_s{s}", ["ghn", "ghn_meta"], LabelRecipe(labels=proto.few, k=RANKER_K, seed=s)))
    return rows


def _few_names(pair: Pair, kind: str, proto: Protocol) -> list[str]:
    """Score columns of the ``proto.few``-label rankers of every label seed."""
    return [f"{kind}{_suffix(proto.few, proto)}", *[f"{kind}_n{proto.few}_s{s}" for s in pair.label_seeds[1:]]]


class ScoreStore:
    """Per-pair cache of each method's scores and cost (``scores.csv``): a method scored once is not scored again."""

    def __init__(self, path: Path, keys: list[str]) -> None:
        self.path = path
        self.keys = keys
        if path.exists():
            frame = pd.read_csv(path)
            if list(frame["key"]) != keys:
                raise RuntimeError(f"{path} holds other candidates; delete it to score again.")
            self.frame = frame
        else:
            self.frame = pd.DataFrame({"key": keys})
        self.costs: dict[str, float] = {}
        meta = path.with_suffix(".json")
        if meta.exists():
            self.costs = json.loads(meta.read_text())

    def has(self, method: str) -> bool:
        return f"score_{method}" in self.frame.columns

    def put(self, result: CorrelationResult) -> None:
        for column in [c for c in result.frame.columns if c.startswith("score_")]:
            self.frame[column] = result.frame[column].to_numpy()
        for name, row in result.summary_json["methods"].items():
            if row.get("seconds_per_candidate") is not None and f"score_{name}" in result.frame.columns:
                self.costs[name] = row["seconds_per_candidate"]
        tmp = self.path.with_suffix(".csv.tmp")
        self.frame.to_csv(tmp, index=False)
        tmp.replace(self.path)
        meta = self.path.with_suffix(".json")
        meta.with_suffix(".json.tmp").write_text(json.dumps(self.costs, indent=1, sort_keys=True) + "\n")
        meta.with_suffix(".json.tmp").replace(meta)


def run_pair(pair: Pair, root: Path, proto: Protocol, *, workers: int = 1, rescore: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run the protocol on one pair; returns its ``summary.json``."""
    out = root / pair.name
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(pair.dataset, seed=0)
    space = load_space(pair.space, input_shape=data.input_shape, num_classes=data.num_classes, **pair.settings)
    graphs = sample_candidates(space, proto.archs, seed=0)
    keys = [g.key for g in graphs]
    store = ScoreStore(out / "scores.csv", keys)

    ghn_path = out / "ghn" / "ghn.pt"
    ghn_path.parent.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    ghn = meta_train(space, data, MetaTrainConfig(steps=proto.ghn_steps), out=ghn_path, held_out=graphs, resume=True,
                     progress=progress).eval()
    logger.info("%s: GHN ready (%.0f s this run)", pair.name, time.perf_counter() - t0)

    costs_once: dict[str, Any] = {}
    scorers: list[Any] = []
    for suffix, methods, recipe in _ranker_rows(pair, proto):
        built, cost = ranker_methods(space, data, ghn=ghn, methods=methods, out=out, exclude=keys, recipe=recipe,
                                     suffix=suffix, workers=workers, progress=progress)
        if cost is not None:
            costs_once[suffix or "default"] = cost.to_dict()
        scorers += [s for s in built if rescore or not store.has(s.name)]
    todo = scorers + [m for m in [*BASELINES, "ghn_plain"] if rescore or not store.has(m)]
    result = correlate(space, data, archs=graphs, epochs=proto.epochs, seeds=2, scorers=todo or ["random"],
                       cache_path=out / "ground_truth.sqlite", ghn={"ghn_plain": ghn}, seed=0, progress=progress,
                       workers=workers)
    store.put(result)

    frame = result.frame[[c for c in result.frame.columns if not c.startswith("score_")]].copy()
    for column in [c for c in store.frame.columns if c.startswith("score_")]:
        frame[column] = store.frame[column].to_numpy()
    summary, summary_json = summarize(frame, store.costs, seeds=[0, 1],
                                      ground_truth=result.summary_json["ground_truth"])
    summary_json["pair"] = dataclasses.asdict(pair)
    summary_json["protocol"] = dataclasses.asdict(proto)
    summary_json["ranker"] = _estimate_missing_label_seconds(costs_once)
    ghn_state = ghn.training_state or {}
    summary_json["ghn_seconds"] = ghn_state.get("elapsed")
    final = CorrelationResult(frame, summary, summary_json)
    write_results(final, out, figures=False)
    _ghn_role(pair, frame, proto).to_csv(out / "ghn_role.csv", index=False)
    return summary_json


def _estimate_missing_label_seconds(costs: dict[str, Any]) -> dict[str, Any]:
    """Label seconds of a recipe whose labels were trained before times were kept: the pair's timed mean per label.

    The estimate (``label_seconds_estimated`` labels) also enters that recipe's ``one_time_seconds``.
    """
    timed = [(c["label_seconds"], c["labelled"] - c["label_seconds_estimated"]) for c in costs.values()
             if c["label_seconds"] is not None and c["labelled"] > c["label_seconds_estimated"]]
    per_label = sum(s for s, _ in timed) / sum(n for _, n in timed) if timed else None
    for cost in costs.values():
        if cost["label_seconds"] is None and per_label is not None:
            cost["label_seconds"] = per_label * cost["labelled"]
            cost["label_seconds_estimated"] = cost["labelled"]
            for name, (kind, _) in RANKER_METHODS.items():
                fit, extra = cost["fit_seconds"].get(kind), cost["ghn_seconds"] if kind == "ghn" else 0.0
                if fit is not None and extra is not None:
                    cost["one_time_seconds"][name] = cost["label_seconds"] + fit + extra
    return costs


def _ghn_role(pair: Pair, frame: pd.DataFrame, proto: Protocol) -> pd.DataFrame:
    """Paired bootstrap of GHN-initialised minus random-weight rankers (with the prior), by label count."""
    valid = frame[~frame["gt_failed"]]
    truth = -valid["gt_val_loss"].to_numpy(dtype=np.float64)

    def scores(name: str) -> np.ndarray:
        return ranking_scores(valid[f"score_{name}"].to_numpy(dtype=np.float64))

    rows = []
    few_a, few_b = _few_names(pair, "ghn_meta", proto), _few_names(pair, "ghn", proto)
    present = [(a, b) for a, b in zip(few_a, few_b) if f"score_{a}" in valid and f"score_{b}" in valid]
    if present:
        est = kendall_difference([scores(a) for a, _ in present], [scores(b) for _, b in present], truth)
        rows.append({"pair": pair.name, "labels": proto.few, "label_seeds": len(present), **est._asdict()})
    for n in proto.label_counts:
        if n == proto.few:
            continue
        a, b = f"ghn_meta{_suffix(n, proto)}", f"ghn{_suffix(n, proto)}"
        if f"score_{a}" in valid and f"score_{b}" in valid:
            est = kendall_difference([scores(a)], [scores(b)], truth)
            rows.append({"pair": pair.name, "labels": n, "label_seeds": 1, **est._asdict()})
    return pd.DataFrame(rows, columns=["pair", "labels", "label_seeds", "value", "lo", "hi"])


# --------------------------------------------------------------------------- report

#: Methods shown in the suite's figure and short table.
HEADLINE = ["ghn", "ghn_w05", "ghn_noprior", "ghn_meta", "ghn_n100", "opcount_ranker_flops", "ghn_plain",
            "short_training", "flops", "best_zero_cost"]

#: Round 2's rule R2a: the ``ghn`` row (recorded in rounds 2 and 3 with the prior's weight chosen per pair)
#: within this of the better fixed weight (0.5 or none).
R2A_MARGIN = 0.02
#: Round 3's margin (R3a, R3c): how far below the compared row a method may rank and still hold.
R3_MARGIN = 0.02


def report(root: Path, pairs: list[Pair]) -> pd.DataFrame:
    """Collect every finished pair into ``suite/suite.csv``, ``suite.md``, ``ghn_role.csv`` and the figure."""
    rows, roles = [], []
    for pair in pairs:
        path = root / pair.name / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text())
        if "protocol" not in s:
            continue  # a correlation run of another protocol (e.g. an earlier nas correlate run in that folder)
        ceiling = s["noise_ceiling"]["kendall"]
        once = s.get("ranker", {})
        for method, m in s["methods"].items():
            if m.get("kendall") is None:
                continue
            rows.append({
                "pair": pair.name, "held_out": pair.held_out, "method": method,
                "kendall": m["kendall"], "kendall_lo": m["kendall_lo"], "kendall_hi": m["kendall_hi"],
                "spearman": m["spearman"], "top10_precision": m["top10_precision"],
                "noise_ceiling": ceiling, "ratio_to_ceiling": m["kendall"] / ceiling if ceiling else math.nan,
                "seconds_per_candidate": m["seconds_per_candidate"],
                "one_time_seconds": _one_time(method, once),
            })
        role = root / pair.name / "ghn_role.csv"
        if role.exists():
            roles.append(pd.read_csv(role))
    table = pd.DataFrame(rows)
    if table.empty:
        raise SystemExit(f"no finished pair under {root}")
    zc = table[table["method"].isin(ZERO_COST)].sort_values("kendall").groupby("pair").tail(1)
    best = zc.assign(method="best_zero_cost")
    table = pd.concat([table, best], ignore_index=True)
    suite = root / "suite"
    suite.mkdir(exist_ok=True)
    table.to_csv(suite / "suite.csv", index=False)
    if roles:
        pd.concat(roles, ignore_index=True).to_csv(suite / "ghn_role.csv", index=False)
    wide = table[table["method"].isin(HEADLINE)].pivot(index="pair", columns="method", values="kendall")
    wide = wide[[m for m in HEADLINE if m in wide.columns]]
    ceil = table.groupby("pair")["noise_ceiling"].first()
    wide.insert(0, "ceiling", ceil)
    (suite / "suite.md").write_text(wide.round(3).to_markdown() + "\n")
    verdict(table, pd.concat(roles, ignore_index=True) if roles else None).to_csv(suite / "verdict.csv", index=False)
    rounds = {p.name: p.round for p in PAIRS}
    if any(rounds.get(p) == 3 for p in table["pair"]):
        round3 = round3_verdict(table, rounds)
        round3.to_csv(suite / "round3.csv", index=False)
        (suite / "round3.md").write_text(round3.round(3).to_markdown(index=False) + "\n")
    _figure(table, suite)
    return table


def verdict(table: pd.DataFrame, roles: pd.DataFrame | None, *, method: str = "ghn") -> pd.DataFrame:
    """The pass rules of ``RESULTS.md``, per pair: the default ranker against 0.9 x the ceiling and the best
    zero-cost proxy, whether GHN initialisation lifts the ranker at few labels (>= 0.05, CI above 0), and
    (round 2, on the records of rounds 2 and 3, whose ``ghn`` row chose its prior's weight per pair) whether
    that weight is within ``R2A_MARGIN`` of the better fixed one (``calibration_holds``)."""
    rows = []
    for pair, sub in table.groupby("pair", sort=False):
        by = sub.set_index("method")
        if method not in by.index:
            continue
        tau, ceiling = by.loc[method, "kendall"], by.loc[method, "noise_ceiling"]
        best = by.loc["best_zero_cost", "kendall"] if "best_zero_cost" in by.index else math.nan
        row = {"pair": pair, "held_out": bool(by.loc[method, "held_out"]), "method": method, "kendall": tau,
               "noise_ceiling": ceiling, "at_0.9_ceiling": bool(tau >= 0.9 * ceiling),
               "best_zero_cost": best, "beats_zero_cost": bool(tau >= best)}
        fixed = [by.loc[m, "kendall"] for m in ("ghn_w05", "ghn_noprior") if m in by.index]
        if len(fixed) == 2:
            row.update(best_fixed_weight=max(fixed), calibration_holds=bool(tau >= max(fixed) - R2A_MARGIN))
        few = roles[(roles["pair"] == pair) & (roles["label_seeds"] > 1)] if roles is not None else pd.DataFrame()
        if len(few):
            lift = few.iloc[0]
            row.update(ghn_lift=lift["value"], ghn_lift_lo=lift["lo"], ghn_lift_hi=lift["hi"],
                       ghn_lifts=bool(lift["value"] >= 0.05 and lift["lo"] > 0))
        rows.append(row)
    return pd.DataFrame(rows)


def round3_verdict(table: pd.DataFrame, rounds: dict[str, int]) -> pd.DataFrame:
    """Round 3's rules (``RESULTS.md``), one row per pair.

    R3a, on the round-3 pairs: no prior (``ghn_noprior``) becomes the default if it is within
    ``R3_MARGIN`` of the fixed weight 0.5 (``ghn_w05``) on each; the per-pair weight of the round-3
    records' ``ghn`` row stays only if it beats no prior by more than the margin on one of them and
    trails it by no more on either.
    R3b: the R3a default at 0.9x the noise ceiling on 6 of the pairs (one of round 3 among them)
    and at or above the best zero-cost proxy on every pair. R3c: short training (``short_training``)
    within the margin of the R3a default on each round-3 pair.
    Every row repeats the pair-level verdicts (``r3a_*``, ``r3b``, ``r3c``).
    """
    wide = table.pivot(index="pair", columns="method", values="kendall")
    ceiling = table.groupby("pair")["noise_ceiling"].first()
    new = [p for p in wide.index if rounds.get(p) == 3]
    noprior = bool(all(wide.loc[p, "ghn_noprior"] >= wide.loc[p, "ghn_w05"] - R3_MARGIN for p in new))
    default = "ghn_noprior" if noprior else "ghn_w05"
    gain = [wide.loc[p, "ghn"] - wide.loc[p, "ghn_noprior"] for p in new]
    chosen_stays = bool(any(g > R3_MARGIN for g in gain) and all(g >= -R3_MARGIN for g in gain))
    at_09 = wide[default] >= 0.9 * ceiling
    beats = wide[default] >= wide["best_zero_cost"]
    r3b = bool(at_09.sum() >= 6 and at_09[new].any() and beats.all())
    r3c = bool(all(wide.loc[p, "short_training"] >= wide.loc[p, default] - R3_MARGIN for p in new))
    rows = []
    for pair in wide.index:
        rows.append({
            "pair": pair, "round": rounds.get(pair), "noise_ceiling": ceiling[pair],
            "ghn_w05": wide.loc[pair, "ghn_w05"],
            "ghn_noprior": wide.loc[pair, "ghn_noprior"], "ghn_calibrated": wide.loc[pair, "ghn"],
            "short_training": wide.loc[pair, "short_training"], "best_zero_cost": wide.loc[pair, "best_zero_cost"],
            "default": default, "default_x_ceiling": wide.loc[pair, default] / ceiling[pair],
            "default_at_0.9_ceiling": bool(at_09[pair]), "default_beats_zero_cost": bool(beats[pair]),
            "r3a_noprior": noprior, "r3a_calibration_stays": chosen_stays, "r3b": r3b, "r3c": r3c,
        })
    return pd.DataFrame(rows)


def _one_time(method: str, once: dict[str, Any]) -> float | None:
    """One-time seconds of a ranker row from its recipe's cost record (``None`` for other methods)."""
    for name in sorted(RANKER_METHODS, key=len, reverse=True):
        if method == name or method.startswith(name + "_n"):
            key = "default" if method == name else method[len(name):]
            record = once.get(key)
            if not record:
                return None
            return record["one_time_seconds"].get(name)
    return None


def _figure(table: pd.DataFrame, out: Path) -> None:
    import matplotlib
    from matplotlib.figure import Figure

    from nas.evaluation import save_figure

    pairs = list(dict.fromkeys(table["pair"]))
    methods = [m for m in HEADLINE if m in set(table["method"])]
    fig = Figure(figsize=(max(6.0, 1.5 * len(pairs) + 2), 4.2))
    ax = fig.subplots()
    width = 0.8 / len(methods)
    colors = matplotlib.colormaps["tab10"]
    for j, method in enumerate(methods):
        sub = table[table["method"] == method].set_index("pair").reindex(pairs)
        x = np.arange(len(pairs)) + (j - (len(methods) - 1) / 2) * width
        err = np.vstack([sub["kendall"] - sub["kendall_lo"], sub["kendall_hi"] - sub["kendall"]])
        ax.bar(x, sub["kendall"], width, color=colors(j), label=method.replace("_", " "),
               yerr=np.nan_to_num(err), capsize=1.5, error_kw={"lw": 0.6})
    ceiling = table.groupby("pair")["noise_ceiling"].first().reindex(pairs)
    for i, c in enumerate(ceiling):
        ax.hlines(c, i - 0.45, i + 0.45, colors="black", linestyles="--", lw=1.2,
                  label="noise ceiling (seed vs seed)" if i == 0 else None)
    held = table.groupby("pair")["held_out"].first().reindex(pairs)
    ax.set_xticks(np.arange(len(pairs)), [f"{p}\n(held out)" if h else p for p, h in zip(pairs, held)], fontsize=8)
    ax.set_ylabel("Kendall tau vs 3-epoch training (95% CI)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7, ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, out / "kendall_by_pair")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--pairs", nargs="+", default=None, help="pair names (default: every pair)")
    parser.add_argument("--out", type=Path, default=ROOT, help="results root (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="processes training labels and ground truth")
    parser.add_argument("--rescore", action="store_true", help="score every method again")
    parser.add_argument("--report", action="store_true", help="only rebuild the suite tables and figure")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budgets (8 candidates, 0.2 epochs, 20 GHN steps) on --pairs or two pairs: "
                             "checks the pipeline")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    names = {p.name: p for p in PAIRS}
    unknown = [n for n in (args.pairs or []) if n not in names]
    if unknown:
        raise SystemExit(f"unknown pairs {unknown}; valid: {', '.join(names)}")
    chosen = [names[n] for n in args.pairs] if args.pairs else list(PAIRS)
    if args.smoke and not args.pairs:
        chosen = [names["my_space-digits"], names["macro-digits"]]
    if not args.report:
        for pair in chosen:
            t0 = time.perf_counter()
            run_pair(pair, args.out, SMOKE if args.smoke else FULL, workers=args.workers,
                     rescore=args.rescore or args.smoke, progress=not args.no_progress)
            logger.info("%s done in %.0f s", pair.name, time.perf_counter() - t0)
    report(args.out, chosen if args.smoke else list(PAIRS))
    print((args.out / "suite" / "suite.md").read_text())


if __name__ == "__main__":
    main()
