"""Rankers at few labels: which loss, features or pretraining lift the ranker at 50 / 100 / 200 labels?

Reuses the ranking suite's records (``experiments/results/<pair>/``): its 100 held-out candidates with
their 2-seed 3-epoch ground truth, and the 700 short-training labels (30 SGD steps) of the pair's first
label seed. The labels are cut into three disjoint blocks of 200 (label rows 0-199, 200-399, 400-599, in
sample order); the ranker at ``n`` labels of block ``b`` is fitted on that block's first ``n`` rows, so the
three "label seeds" of a count share no architecture. Each fit is scored by Kendall tau against the
ground truth (higher is better), as in the suite. The variants measured beside today's recipe (``mse``):
a pairwise ranking loss, free per-graph features (log FLOPs, log parameters), the same plus zero-cost
proxy scores, and pretraining the graph network on the free features of 1,000 unlabelled architectures.
None passed the study's rule, so the library dropped them; their code and this script's runs of them
are at commit e8d41e0 (``git show e8d41e0:experiments/studies/few_labels.py``); their rows stay in the
fits files.
The proxy-features round (``--omni``: the ``zc`` features at 150 labels of 30 or 100 steps) ran with that
feature code restored; it did not pass either, so ``--omni`` needs that code back: check out
``nas/ghn/_ranker.py`` and ``nas/ghn/__init__.py`` of commit c4c1541 over this tree, as the rounds ran.

Resumable: every fit is one row of ``experiments/results/few_labels/<pair>_fits.csv``, appended as it finishes;
the proxy features of each pair that the ``zc`` variant read are in ``<pair>_features.csv``.
The rule that decides this study is in ``experiments/results/few_labels/RESULTS.md``, written before
its run.

Examples:
    python experiments/studies/few_labels.py --pairs nb201-mnist5k macro-digits nb201n3-digits darts-digits
    python experiments/studies/few_labels.py --pairs my_space-digits --variants mse pairwise
    python experiments/studies/few_labels.py --report
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

from nas.data import load_dataset
from nas.evaluation import sample_candidates
from nas.ghn import RankerConfig, fit_ranker, untrained_ghn
from nas.graph import ArchGraph
from nas.space import load_space

ROOT = Path(__file__).resolve().parents[1] / "results"
OUT = ROOT / "few_labels"
COUNTS = (50, 100, 200)
BLOCK = 200
BLOCKS = 3
#: Variant -> RankerConfig settings (the others ran at commit e8d41e0).
VARIANTS: dict[str, dict] = {"mse": {}}
COLUMNS = ["pair", "held_out", "variant", "labels", "block", "kendall", "cv_tau", "fit_seconds", "label_seconds"]

logger = logging.getLogger("few_labels")


def _pairs() -> dict:
    """The suite's pairs (``experiments/suite.py``, the one place they are defined)."""
    spec = importlib.util.spec_from_file_location("suite", Path(__file__).resolve().parents[1] / "suite.py")
    suite = importlib.util.module_from_spec(spec)
    sys.modules["suite"] = suite  # dataclasses resolve their module by name
    spec.loader.exec_module(suite)
    return {p.name: p for p in suite.PAIRS}


def _setting(pair) -> tuple:
    """``(space, data, labels, valid, gt)`` of a suite pair: its space and dataset, the first label seed's labels
    (finite ones, in sample order), the candidates whose ground truth trained, and that truth (higher is better)."""
    folder = ROOT / pair.name
    data = load_dataset(pair.dataset, seed=0)
    space = load_space(pair.space, input_shape=data.input_shape, num_classes=data.num_classes, **pair.settings)
    candidates = sample_candidates(space, 100, seed=0)
    truth = pd.read_csv(folder / "candidates.csv").set_index("key")
    labels = pd.read_csv(folder / f"ranker_labels_k30_s{pair.label_seeds[0]}.csv")
    labels = labels[np.isfinite(labels["tse"])].reset_index(drop=True)
    valid = [g for g in candidates if not bool(truth.loc[g.key, "gt_failed"])]
    gt = -truth.loc[[g.key for g in valid], "gt_val_loss"].to_numpy(dtype=np.float64)
    return space, data, labels, valid, gt


def _fit_and_score(ghn, graphs: list[ArchGraph], y: np.ndarray, valid: list[ArchGraph], gt: np.ndarray,
                   config: RankerConfig | None = None, *, init=None, features: np.ndarray | None = None,
                   valid_features: np.ndarray | None = None) -> tuple[float, object]:
    """Fit a ranker on ``graphs`` / ``y`` (no progress bar) and score ``valid``: ``(Kendall tau against gt, ranker)``.

    ``init`` and the raw per-graph ``features`` of the fit and of ``valid`` are passed on only when not ``None``
    (the ``mse`` recipe of ``--omni`` passes empty ``[B, 0]`` ones), so the other rounds run as well on a library
    without the feature code.
    """
    extra = {name: value for name, value in (("init", init), ("features", features)) if value is not None}
    ranker = fit_ranker(ghn, graphs, y, config or RankerConfig(), progress=False, **extra)
    score = ranker.standardised(valid, **({} if valid_features is None else {"features": valid_features}))
    return float(kendalltau(-score, gt).statistic), ranker


def _append(path: Path, rows: dict | list[dict], columns: list[str]) -> None:
    """Append a row (or rows) to the CSV at ``path`` (its header first when the file is new)."""
    pd.DataFrame(rows if isinstance(rows, list) else [rows], columns=columns).to_csv(
        path, mode="a", header=not path.exists(), index=False)


def _has_pair(path: Path, pair) -> bool:
    """Whether the CSV at ``path`` already has a row of ``pair`` (the once-per-pair rounds resume by it)."""
    return path.exists() and bool((pd.read_csv(path)["pair"] == pair.name).any())


def run_pair(pair, variants: list[str]) -> None:
    space, data, labels, valid, gt = _setting(pair)
    if len(labels) < BLOCK * BLOCKS:
        raise SystemExit(f"{pair.name}: {len(labels)} finite labels, need {BLOCK * BLOCKS}")
    label_graphs = [ArchGraph.from_json(j) for j in labels["graph"][: BLOCK * BLOCKS]]
    ghn = untrained_ghn(space, data)
    fits = OUT / f"{pair.name}_fits.csv"
    done = pd.read_csv(fits) if fits.exists() else pd.DataFrame(columns=COLUMNS)
    seconds = labels["seconds"].to_numpy(dtype=np.float64)
    for variant in variants:
        settings = VARIANTS[variant]
        for n in COUNTS:
            for block in range(BLOCKS):
                if ((done["pair"] == pair.name) & (done["variant"] == variant) & (done["labels"] == n)
                        & (done["block"] == block)).any():
                    continue
                rows = list(range(block * BLOCK, block * BLOCK + n))
                graphs = [label_graphs[i] for i in rows]
                tau, ranker = _fit_and_score(ghn, graphs, labels["tse"].to_numpy()[rows], valid, gt,
                                             RankerConfig(**settings))
                sec = seconds[rows]
                row = {"pair": pair.name, "held_out": pair.held_out, "variant": variant, "labels": n,
                       "block": block, "kendall": tau, "cv_tau": float(np.nanmean(ranker.member_tau)),
                       "fit_seconds": ranker.label_info["fit_seconds"],
                       "label_seconds": float(np.nansum(sec)) if np.isfinite(sec).all() else math.nan}
                logger.info("%s %s n=%d block %d: tau %.3f (cv %.3f, fit %.0f s)", pair.name, variant, n, block,
                            tau, row["cv_tau"], row["fit_seconds"])
                _append(fits, row, COLUMNS)
                done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)


#: Labels per purchase and the margins whose stopping points ``--purchases`` records (0.02 is the default).
PURCHASE = 50
MARGINS = (0.01, 0.02, 0.05)
PURCHASE_COLUMNS = ["pair", "held_out", "variant", "labels", "cv_tau", "kendall", "fit_seconds", "label_seconds"]


def run_purchases(pair, variant: str) -> None:
    """The purchase loop of ``nas search`` without its stop: fits at 50, 100, ... labels of the 700-label sample,
    each extending the last, until the smallest margin of :data:`MARGINS` would have stopped (or at 700 labels).

    Rows go to ``<pair>_purchases.csv``; the last fit is kept in ``rankers/`` (not committed) to resume.
    """
    from nas.ghn import GHNRanker

    folder = ROOT / pair.name
    space, data, labels, valid, gt = _setting(pair)
    seconds = labels["seconds"].to_numpy(dtype=np.float64)
    if not np.isfinite(seconds).all():  # labels trained before times were kept: the pair's timed mean per label
        timed = [pd.read_csv(f)["seconds"] for f in folder.glob("ranker_labels_k30_s*.csv")]
        seconds = np.full(len(labels), float(pd.concat(timed).dropna().mean()))
    graphs_all = [ArchGraph.from_json(j) for j in labels["graph"]]
    settings = VARIANTS[variant]
    ghn = untrained_ghn(space, data)
    out = OUT / f"{pair.name}_purchases.csv"
    done = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=PURCHASE_COLUMNS)
    done = done[done["variant"] == variant]
    saved = OUT / "rankers" / f"{pair.name}_{variant}.pt"
    ranker = GHNRanker.load(saved) if len(done) and saved.exists() else None
    if ranker is None:
        done = done.iloc[:0]
    taus = list(done["cv_tau"])
    n = int(done["labels"].max()) if len(done) else 0
    while n < min(len(labels), 700) and not (len(taus) >= 2 and taus[-1] - taus[-2] < min(MARGINS)):
        n = min(n + PURCHASE, len(labels), 700)
        tau, ranker = _fit_and_score(ghn, graphs_all[:n], labels["tse"].to_numpy()[:n], valid, gt,
                                     RankerConfig(**settings), init=ranker)
        row = {"pair": pair.name, "held_out": pair.held_out, "variant": variant, "labels": n, "cv_tau": ranker.cv_tau,
               "kendall": tau, "fit_seconds": ranker.label_info["fit_seconds"],
               "label_seconds": float(seconds[:n].sum())}
        taus.append(ranker.cv_tau)
        saved.parent.mkdir(exist_ok=True)
        ranker.save(saved)
        _append(out, row, PURCHASE_COLUMNS)
        logger.info("%s %s purchases: %d labels, cv tau %.3f, tau %.3f", pair.name, variant, n, ranker.cv_tau,
                    row["kendall"])


#: Labels and SGD steps of the fidelity round (rules in ``RESULTS.md``, "Fewer, longer labels").
FIDELITY_LABELS = 150
FIDELITY_K = 100
FIDELITY_COLUMNS = ["pair", "held_out", "k", "labels", "kendall", "cv_tau", "fit_seconds", "label_seconds"]


def run_fidelity(pair, n: int = FIDELITY_LABELS) -> None:
    """Fit today's ranker on the first ``n`` labels of the pair's sample, once on their 30-step labels and once
    on the same architectures trained for :data:`FIDELITY_K` steps (same training seed).

    The longer labels go to ``<pair>_fidelity_labels.csv`` (key, both TSEs, both times, the most rows any run
    asked for; the training cache with the graphs stays in the pair's uncommitted ``rankers/``), the two fits
    to ``fidelity.csv``.
    """
    from nas.ghn import tse_scores

    space, data, labels, valid, gt = _setting(pair)
    labels = labels.iloc[:n]
    graphs = [ArchGraph.from_json(j) for j in labels["graph"]]
    slim = OUT / f"{pair.name}_fidelity_labels.csv"
    table = pd.read_csv(slim) if slim.exists() else pd.DataFrame()
    if len(table) >= n:
        table = table.iloc[:n]
    else:
        cache = ROOT / pair.name / "rankers" / f"fidelity_k{FIDELITY_K}.csv"
        cache.parent.mkdir(exist_ok=True)
        tse = tse_scores(graphs, data, k=FIDELITY_K, seed=pair.label_seeds[0], cache=cache, progress=False)
        timed = pd.read_csv(cache).set_index("key")["seconds"]
        k30 = labels["seconds"]
        if k30.isna().any():  # labels trained before times were kept: the pair's timed mean per 30-step label
            kept = [pd.read_csv(f)["seconds"] for f in (ROOT / pair.name).glob("ranker_labels_k30_s*.csv")]
            k30 = k30.fillna(float(pd.concat(kept).dropna().mean()))
        table = pd.DataFrame({"key": labels["key"], "tse_k30": labels["tse"], f"tse_k{FIDELITY_K}": tse,
                              "seconds_k30": k30,
                              f"seconds_k{FIDELITY_K}": timed.reindex(labels["key"]).to_numpy()})
        table.to_csv(slim, index=False)
    out = OUT / "fidelity.csv"
    done = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=FIDELITY_COLUMNS)
    ghn = untrained_ghn(space, data)
    for k in (30, FIDELITY_K):
        y = table[f"tse_k{k}"].to_numpy(dtype=np.float64)
        keep = np.isfinite(y)  # a label whose training diverged is dropped, as ensure_ranker does
        if ((done["pair"] == pair.name) & (done["k"] == k) & (done["labels"] == keep.sum())).any():
            continue
        tau, ranker = _fit_and_score(ghn, [g for g, ok in zip(graphs, keep) if ok], y[keep], valid, gt)
        row = {"pair": pair.name, "held_out": pair.held_out, "k": k, "labels": int(keep.sum()),
               "kendall": tau, "cv_tau": ranker.cv_tau,
               "fit_seconds": ranker.label_info["fit_seconds"],
               "label_seconds": float(table[f"seconds_k{k}"].sum(min_count=len(table)))}
        logger.info("%s fidelity k=%d: %d labels, tau %.3f (cv %.3f)", pair.name, k, row["labels"], row["kendall"],
                    row["cv_tau"])
        _append(out, row, FIDELITY_COLUMNS)


#: Label rows of the "next round" (rules in ``RESULTS.md``): 300 labels of 30 steps the fidelity fits never saw.
ROWS = (300, 600)


def run_rows(pair) -> None:
    """Fit today's ranker on the 30-step labels of rows :data:`ROWS` of the pair's sample: ``rows.csv``."""
    out = OUT / "rows.csv"
    if _has_pair(out, pair):
        return
    space, data, labels, valid, gt = _setting(pair)
    rows = labels.iloc[ROWS[0]:ROWS[1]]
    graphs = [ArchGraph.from_json(j) for j in rows["graph"]]
    tau, ranker = _fit_and_score(untrained_ghn(space, data), graphs, rows["tse"].to_numpy(dtype=np.float64), valid, gt)
    row = {"pair": pair.name, "held_out": pair.held_out, "first_row": ROWS[0], "labels": len(rows), "k": 30,
           "kendall": tau, "cv_tau": ranker.cv_tau, "fit_seconds": ranker.label_info["fit_seconds"]}
    _append(out, row, list(row))
    logger.info("%s rows %d-%d: tau %.3f (cv %.3f)", pair.name, ROWS[0], ROWS[1] - 1, tau, ranker.cv_tau)


#: Architectures per pair timed at both step counts by ``--timing``.
TIMING_ARCHS = 12


def run_timing(pair) -> None:
    """CPU-seconds of a 30-step and a :data:`FIDELITY_K`-step label of the pair's first :data:`TIMING_ARCHS`
    label architectures, trained alternately in this process (one torch thread): ``timing.csv``."""
    import time

    from nas.ghn import tse_label

    out = OUT / "timing.csv"
    if _has_pair(out, pair):
        return
    _, data, labels, _, _ = _setting(pair)
    rows = []
    for j in labels["graph"][:TIMING_ARCHS]:
        graph = ArchGraph.from_json(j)
        for k in (30, FIDELITY_K):
            start = time.process_time()
            tse_label(graph, data, k, pair.label_seeds[0])
            rows.append({"pair": pair.name, "held_out": pair.held_out, "key": graph.key, "k": k,
                         "cpu_seconds": time.process_time() - start})
    _append(out, rows, list(rows[0]))
    mean = pd.DataFrame(rows).groupby("k")["cpu_seconds"].mean()
    logger.info("%s timing: %.2f CPU-s at 30 steps, %.2f at %d", pair.name, mean[30], mean[FIDELITY_K], FIDELITY_K)


#: The proxy-features round (rules in ``RESULTS.md``, "Proxy features at 150 labels").
OMNI_LABELS = 150
OMNI_SAMPLES = 2
FREE = ("log_flops", "log_params")
PROXIES = ("snip", "synflow", "naswot")
#: Recipe -> (RankerConfig settings, label step counts); ``zcpair`` is the round after (``RESULTS.md``).
OMNI_RECIPES: dict[str, tuple[dict, tuple[int, ...]]] = {
    "mse": ({}, (30, 100)),
    "zc": ({"features": (*FREE, *PROXIES)}, (30, 100)),
    "zcpair": ({"features": (*FREE, *PROXIES), "loss": "pairwise"}, (100,)),
}
OMNI_COLUMNS = ["pair", "held_out", "recipe", "k", "labels", "sample", "kendall", "cv_tau", "fit_seconds",
                "label_seconds"]
#: Label architectures per pair whose proxies ``--proxy-timing`` times.
PROXY_TIMING_ARCHS = 50


def _features(pair_name: str, graphs: list[ArchGraph], data) -> pd.DataFrame:
    """Free and proxy features of ``graphs``, cached per pair in ``<pair>_features.csv`` (missing keys only)."""
    try:
        from nas.ghn import graph_features
    except ImportError:
        raise SystemExit("--omni needs the ranker's feature code, which left the library after the round; "
                         "check out nas/ghn/_ranker.py and nas/ghn/__init__.py of commit c4c1541 first") from None

    path = OUT / f"{pair_name}_features.csv"
    have = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["key", *FREE, *PROXIES])
    known = set(have["key"])
    missing = [g for g in graphs if g.key not in known]
    if missing:
        new = pd.DataFrame(graph_features(missing, (*FREE, *PROXIES), data), columns=[*FREE, *PROXIES])
        new.insert(0, "key", [g.key for g in missing])
        have = pd.concat([have, new], ignore_index=True) if len(have) else new
        tmp = path.with_suffix(".csv.tmp")
        have.to_csv(tmp, index=False)
        tmp.replace(path)
        logger.info("%s: features of %d graphs", pair_name, len(missing))
    return have.drop_duplicates("key").set_index("key")


def run_omni(pair, recipes: list[str]) -> None:
    """Fit ``recipes`` (of :data:`OMNI_RECIPES`) on :data:`OMNI_SAMPLES` disjoint samples of
    :data:`OMNI_LABELS` label rows, at each recipe's step counts: ``omni.csv``."""
    space, data, labels, valid, gt = _setting(pair)
    table = pd.read_csv(OUT / f"{pair.name}_fidelity_labels.csv")
    if len(table) < OMNI_LABELS * OMNI_SAMPLES or list(table["key"]) != list(labels["key"][: len(table)]):
        raise SystemExit(f"{pair.name}: the fidelity labels do not cover rows 0-{OMNI_LABELS * OMNI_SAMPLES - 1}")
    graphs = [ArchGraph.from_json(j) for j in labels["graph"][: len(table)]]
    feats = _features(pair.name, graphs + valid, data)
    out = OUT / "omni.csv"
    done = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=OMNI_COLUMNS)
    ghn = untrained_ghn(space, data)
    for sample in range(OMNI_SAMPLES):
        rows = np.arange(sample * OMNI_LABELS, (sample + 1) * OMNI_LABELS)
        for k in (30, FIDELITY_K):
            y = table[f"tse_k{k}"].to_numpy(dtype=np.float64)[rows]
            keep = np.isfinite(y)  # a label whose training diverged is dropped, as ensure_ranker does
            fit_graphs = [graphs[i] for i in rows[keep]]
            for recipe in recipes:
                settings, steps = OMNI_RECIPES[recipe]
                names = list(settings.get("features", ()))
                if k not in steps or ((done["pair"] == pair.name) & (done["recipe"] == recipe) & (done["k"] == k)
                        & (done["sample"] == sample)).any():
                    continue
                tau, ranker = _fit_and_score(
                    ghn, fit_graphs, y[keep], valid, gt, RankerConfig(**settings),
                    features=feats.loc[[g.key for g in fit_graphs], names].to_numpy(),
                    valid_features=feats.loc[[g.key for g in valid], names].to_numpy())
                row = {"pair": pair.name, "held_out": pair.held_out, "recipe": recipe, "k": k,
                       "labels": int(keep.sum()), "sample": sample, "kendall": tau,
                       "cv_tau": ranker.cv_tau, "fit_seconds": ranker.label_info["fit_seconds"],
                       "label_seconds": float(table[f"seconds_k{k}"].to_numpy()[rows][keep].sum())}
                logger.info("%s omni %s k=%d sample %d: tau %.3f (cv %.3f)", pair.name, recipe, k, sample,
                            row["kendall"], row["cv_tau"])
                _append(out, row, OMNI_COLUMNS)
                done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)


def run_proxy_timing(pair) -> None:
    """CPU-seconds of each proxy of :data:`PROXIES` on the pair's first :data:`PROXY_TIMING_ARCHS` label
    architectures, scored in this process (one torch thread): ``proxy_timing.csv``."""
    import time

    from nas.evaluation.proxies import ProxyScorer

    out = OUT / "proxy_timing.csv"
    if _has_pair(out, pair):
        return
    _, data, labels, _, _ = _setting(pair)
    graphs = [ArchGraph.from_json(j) for j in labels["graph"][:PROXY_TIMING_ARCHS]]
    rows = []
    for name in PROXIES:
        start = time.process_time()
        ProxyScorer(name).score(graphs, data)
        cpu = time.process_time() - start
        rows.append({"pair": pair.name, "held_out": pair.held_out, "proxy": name, "graphs": len(graphs),
                     "cpu_seconds": cpu, "per_graph": cpu / len(graphs)})
    _append(out, rows, list(rows[0]))
    logger.info("%s proxy timing: %.3f CPU-s per graph for %s", pair.name, sum(r["per_graph"] for r in rows),
                "+".join(PROXIES))


def omni_report(refs: pd.DataFrame, ranked: tuple[int, ...] = (300, 700)) -> list[str]:
    """Markdown lines of the proxy-features round: mean Kendall tau per recipe (development, held out, all) and
    its CPU per pair as the rules count it, beside the 700-label ranker; ``omni_summary.csv`` beside it."""
    fits = pd.read_csv(OUT / "omni.csv")
    timing = pd.read_csv(OUT / "timing.csv").groupby(["pair", "k"])["cpu_seconds"].mean()
    proxy = OUT / "proxy_timing.csv"
    per_graph = pd.read_csv(proxy).groupby("pair")["per_graph"].sum() if proxy.exists() else None
    rows = []
    for (recipe, k), sub in fits.groupby(["recipe", "k"]):
        per_pair = sub.groupby("pair").agg(kendall=("kendall", "mean"), held_out=("held_out", "first"),
                                           samples=("kendall", "size"))
        labels = np.mean([OMNI_LABELS * timing[(p, k)] for p in per_pair.index])
        row = {"recipe": f"{recipe}, 150 x {k}", "pairs": len(per_pair), "samples": int(per_pair["samples"].min()),
               "development": per_pair.loc[~per_pair["held_out"], "kendall"].mean(),
               "held out": per_pair.loc[per_pair["held_out"], "kendall"].mean(), "all": per_pair["kendall"].mean(),
               "label CPU-s": labels}
        for sample, part in sub.groupby("sample"):
            row[f"all, sample {sample}"] = part.groupby("pair")["kendall"].mean().mean()
        for n in ranked:
            extra = 0.0
            if recipe != "mse":
                extra = math.nan if per_graph is None else float(np.mean(
                    [(OMNI_LABELS + n) * per_graph.get(p, math.nan) for p in per_pair.index]))
            row[f"CPU-s, {n} ranked"] = labels + extra
        row["fit s"] = sub["fit_seconds"].mean()
        rows.append(row)
    held = fits.groupby("pair")["held_out"].first()
    ref = refs["ghn_noprior"].reindex(held.index)
    default = np.mean([700 * timing[(p, 30)] for p in held.index])
    rows.append({"recipe": "mse, 700 x 30 (the default)", "pairs": len(held), "samples": 1,
                 "development": ref[~held].mean(), "held out": ref[held].mean(), "all": ref.mean(),
                 "label CPU-s": default, **{f"CPU-s, {n} ranked": default for n in ranked}})
    table = pd.DataFrame(rows)
    table.to_csv(OUT / "omni_summary.csv", index=False)
    per_pair = fits.pivot_table(index="pair", columns=["recipe", "k"], values="kendall")
    per_pair.columns = [f"{r}, 150 x {k}" for r, k in per_pair.columns]
    per_pair["700 x 30"] = ref
    return ["## Proxy features at 150 labels: mean Kendall tau (two label samples) and CPU-s per pair", "",
            table.round(3).to_markdown(index=False), "", "Per pair (mean of the two samples):", "",
            per_pair.round(3).to_markdown(), ""]


def stopping_points(purchases: pd.DataFrame) -> pd.DataFrame:
    """Where each margin of :data:`MARGINS` stops the purchase loop, per pair and variant (the row it keeps)."""
    rows = []
    for (pair, variant), sub in purchases.groupby(["pair", "variant"], sort=False):
        sub = sub.sort_values("labels").reset_index(drop=True)
        for margin in MARGINS:
            stop = len(sub) - 1
            for i in range(1, len(sub)):
                gain = sub.loc[i, "cv_tau"] - sub.loc[i - 1, "cv_tau"]
                if math.isfinite(gain) and gain < margin:  # as ensure_ranker: an undefined tau buys on
                    stop = i
                    break
            r = sub.loc[stop]
            rows.append({"pair": pair, "held_out": bool(r["held_out"]), "variant": variant, "margin": margin,
                         "labels": int(r["labels"]), "kendall": r["kendall"], "cv_tau": r["cv_tau"],
                         "label_seconds": r["label_seconds"], "fit_seconds": sub.loc[:stop, "fit_seconds"].sum()})
    return pd.DataFrame(rows)


def report() -> pd.DataFrame:
    fits = pd.concat([pd.read_csv(p) for p in sorted(OUT.glob("*_fits.csv"))], ignore_index=True)
    table = fits.groupby(["pair", "held_out", "variant", "labels"], as_index=False).agg(
        kendall=("kendall", "mean"), kendall_sd=("kendall", "std"), blocks=("kendall", "size"),
        cv_tau=("cv_tau", "mean"), fit_seconds=("fit_seconds", "mean"))
    suite = pd.read_csv(ROOT / "suite" / "suite.csv")  # the suite's own figures
    refs = suite[suite["method"].isin(["ghn_noprior", "short_training"])][["pair", "method", "kendall"]]
    refs = refs.pivot(index="pair", columns="method", values="kendall")
    wide = table.pivot_table(index=["variant", "labels"], columns="pair", values="kendall")
    wide["mean"] = wide.mean(axis=1)
    table.to_csv(OUT / "summary.csv", index=False)
    text = ["## Mean Kendall tau over 3 label blocks", "", wide.round(3).to_markdown(), "",
            "## References (700 labels, short training of each candidate)", "", refs.round(3).to_markdown(), ""]
    bought = sorted(OUT.glob("*_purchases.csv"))
    if bought:
        stops = stopping_points(pd.concat([pd.read_csv(p) for p in bought], ignore_index=True))
        stops = stops.join(refs["ghn_noprior"].rename("ranker_700"), on="pair")
        stops.to_csv(OUT / "stopping_points.csv", index=False)
        means = stops.groupby(["variant", "margin", "held_out"])[["labels", "kendall", "ranker_700", "label_seconds"]]
        text += ["## Labels bought in purchases of 50: where each margin stops", "",
                 stops.round(3).to_markdown(index=False), "", "Means by held-out status:", "",
                 means.mean().round(3).to_markdown(), ""]
    if (OUT / "fidelity.csv").exists():
        text += fidelity_report(refs)
    if (OUT / "omni.csv").exists():
        text += omni_report(refs)
    (OUT / "summary.md").write_text("\n".join(text))
    _figure(table, refs, OUT / "kendall_by_labels")
    print("\n".join(text))
    return table


def _label_cpu_700(pair) -> float:
    """Label CPU-s of the 700 30-step labels the suite's ranker was fitted on (the pair's timed mean where a
    label's time was not kept)."""
    folder = ROOT / pair.name
    sec = pd.read_csv(folder / f"ranker_labels_k30_s{pair.label_seeds[0]}.csv", usecols=["seconds"])["seconds"]
    if sec.isna().any():
        kept = [pd.read_csv(f, usecols=["seconds"])["seconds"] for f in folder.glob("ranker_labels_k30_s*.csv")]
        sec = sec.fillna(float(pd.concat(kept).dropna().mean()))
    return float(sec.iloc[:700].sum())


def fidelity_report(refs: pd.DataFrame) -> list[str]:
    """Markdown lines of the fidelity rounds: Kendall tau and label CPU-s per pair, labels x steps, beside the
    700-label ranker of 30-step labels; ``fidelity_summary.csv`` beside it."""
    fits = pd.read_csv(OUT / "fidelity.csv")
    fits["recipe"] = fits["labels"].map(lambda n: f"{(n + 25) // 50 * 50}") + " x " + fits["k"].astype(str)
    tau = fits.pivot_table(index="pair", columns="recipe", values="kendall")
    cpu = fits.pivot_table(index="pair", columns="recipe", values="label_seconds")
    tau["700 x 30"] = refs["ghn_noprior"].reindex(tau.index)
    pairs = _pairs()
    cpu["700 x 30"] = [_label_cpu_700(pairs[p]) for p in cpu.index]
    held = fits.groupby("pair")["held_out"].first()
    wide = tau.round(3).astype(str) + " (" + cpu.round(0).astype("Int64").astype(str) + ")"
    wide.insert(0, "held out", held.reindex(wide.index).map({True: "yes", False: ""}))
    means = pd.DataFrame({"development": tau[~held.reindex(tau.index)].mean(), "held out": tau[held.reindex(
        tau.index)].mean(), "all": tau.mean(), "pairs": tau.notna().sum(),
        "label CPU-s (mean)": cpu.mean()}).T.round(3)
    pd.concat({"kendall": tau, "label_seconds": cpu}, axis=1).to_csv(OUT / "fidelity_summary.csv")
    return ["## Fewer, longer labels: Kendall tau (label CPU-s), labels x SGD steps per label", "",
            "Label CPU-s here are the times recorded when each label was trained (other sessions, other loads);",
            "the proxy-features table below uses `timing.csv`, both step counts timed alike in one process.", "",
            wide.to_markdown(), "", "Means (a mean covers the pairs with a value in its column):", "",
            means.to_markdown(), ""]


def _figure(table: pd.DataFrame, refs: pd.DataFrame, path: Path) -> None:
    """Mean Kendall tau over the development pairs against the label count, one line per variant, beside the
    700-label ranker and the purchase loop's stopping point (margin 0.02) on the same pairs."""
    from matplotlib.figure import Figure

    from nas.evaluation import save_figure

    dev = table[~table["held_out"]]
    pairs = sorted(dev["pair"].unique())
    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.subplots()
    for variant, sub in dev.groupby("variant"):
        wide = sub.pivot(index="labels", columns="pair", values="kendall")
        if set(wide.columns) != set(pairs) or wide.isna().any().any():
            continue  # a variant run on fewer pairs is not comparable on this mean
        ax.plot(wide.index, wide.mean(axis=1), marker="o", label=f"{variant} (3 label samples per point)")
    ax.axhline(refs.loc[pairs, "ghn_noprior"].mean(), color="black", ls="--", lw=1,
               label="700 labels of 30 steps (the default)")
    stops = OUT / "stopping_points.csv"
    if stops.exists():
        st = pd.read_csv(stops)
        st = st[(st["margin"] == 0.02) & st["pair"].isin(pairs)]
        if len(st) == len(pairs):
            ax.plot(st["labels"].mean(), st["kendall"].mean(), marker="*", ms=12, ls="none", color="tab:red",
                    label="labels bought 50 at a time (margin 0.02)")
    fidelity = OUT / "fidelity.csv"
    if fidelity.exists():  # the fidelity rounds: one label sample per pair, 150 and 300 labels
        fid = pd.read_csv(fidelity)
        fid = fid[fid["pair"].isin(pairs)]
        for k, marker, color in ((30, "s", "tab:gray"), (100, "D", "tab:purple")):
            wide = fid[fid["k"] == k].pivot_table(index="labels", columns="pair", values="kendall")
            wide = wide[wide.notna().sum(axis=1) == len(pairs)]
            if len(wide):
                ax.plot(wide.index, wide.mean(axis=1), marker=marker, ls=":", color=color,
                        label=f"labels of {k} SGD steps (fidelity rounds, 1 sample)")
    omni = OUT / "omni.csv"
    if omni.exists():  # the proxy-features round: 150 labels, two label samples per pair
        fits = pd.read_csv(omni)
        fits = fits[(fits["recipe"] == "zc") & fits["pair"].isin(pairs)]
        for k, marker in ((30, "^"), (100, "v")):
            per_pair = fits[fits["k"] == k].groupby("pair")["kendall"].mean()
            if len(per_pair) == len(pairs):
                ax.plot(OMNI_LABELS, per_pair.mean(), marker=marker, ms=8, ls="none", color="tab:green",
                        label=f"+ proxy features, {k}-step labels (2 samples)")
    ax.set_xlabel("labels (short trainings of 30 SGD steps unless marked)")
    ax.set_ylabel(f"Kendall tau vs 3-epoch training\n(mean of {len(pairs)} pairs; higher is better)")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--pairs", nargs="+", default=[])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--report", action="store_true", help="only summarise the fits")
    parser.add_argument("--purchases", action="store_true",
                        help="run the purchase loop (50 labels at a time) of the first --variants instead")
    parser.add_argument("--fidelity", action="store_true",
                        help=f"fit on --fidelity-labels labels of 30 and of {FIDELITY_K} SGD steps instead")
    parser.add_argument("--rows", action="store_true",
                        help=f"fit on the 30-step labels of rows {ROWS[0]}-{ROWS[1] - 1} instead (the next round)")
    parser.add_argument("--timing", action="store_true",
                        help=f"time {TIMING_ARCHS} labels of each pair at 30 and {FIDELITY_K} steps instead")
    parser.add_argument("--omni", action="store_true",
                        help=f"fit with and without proxy features on {OMNI_SAMPLES} samples of {OMNI_LABELS} "
                             f"labels of 30 and {FIDELITY_K} steps instead")
    parser.add_argument("--omni-recipes", nargs="+", default=["mse", "zc"], choices=list(OMNI_RECIPES),
                        help="the recipes --omni fits (default: mse zc, the first proxy-features round)")
    parser.add_argument("--proxy-timing", action="store_true",
                        help=f"time the proxies on {PROXY_TIMING_ARCHS} label architectures of each pair instead")
    parser.add_argument("--fidelity-labels", type=int, default=FIDELITY_LABELS, metavar="N",
                        help=f"labels of the fidelity fits (default {FIDELITY_LABELS})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    pairs = _pairs()
    unknown = [p for p in args.pairs if p not in pairs]
    if unknown:
        raise SystemExit(f"unknown pairs {unknown}; valid: {', '.join(pairs)}")
    if not args.report:
        for name in args.pairs:
            if args.omni:
                run_omni(pairs[name], args.omni_recipes)
            elif args.proxy_timing:
                run_proxy_timing(pairs[name])
            elif args.rows:
                run_rows(pairs[name])
            elif args.timing:
                run_timing(pairs[name])
            elif args.fidelity:
                run_fidelity(pairs[name], args.fidelity_labels)
            elif args.purchases:
                run_purchases(pairs[name], args.variants[0])
            else:
                run_pair(pairs[name], args.variants)
    report()


if __name__ == "__main__":
    main()
