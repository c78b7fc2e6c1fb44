"""Benchmark of the graph hypernetwork (nas.ghn).

Measures, for a search space and a dataset:

1. **predict throughput**: graphs per second of ``GHN.predict`` (one batched
   forward pass, no gradient) for batches of 1, 8, 64 and 256 candidates, with
   the graph cache warm (the figure a search sees once candidates are known) and
   cold (graph tensors, shortest paths and parameter lists included);
2. **meta-training step**: seconds per step of ``meta_train`` with the default
   recipe and the peak memory (process peak RSS and Python ``tracemalloc`` peak
   on CPU, ``torch.cuda.max_memory_allocated`` on GPU); and the data-parallel
   rows: ``nas train-ghn`` under ``torchrun`` with 1 and ``--ddp`` processes
   (gloo on CPU; nccl with one process per GPU on a multi-GPU machine), seconds
   per step from the difference of a 1-step and a ``1 + --step-repeats``-step
   run (start-up excluded), and the speed-up over 1 process;
3. **quality**: mean validation accuracy of the held-out architectures of a
   meta-trained GHN with predicted weights (no SGD), against the same
   architectures trained with ``nas.training.train`` defaults (3 epochs),
   averaged over 2 seeds; their ratio; and Kendall's tau between the
   predicted-weight validation loss and the trained validation loss. Trained
   results are cached in ``bench/results/ghn_trained_<space>_<dataset>.json``
   and reused by later runs.

Results are printed as tables and written to ``bench/results/ghn_*.csv``.

Examples::

    python bench/bench_ghn.py --ghn runs/ghn_default/ghn.pt          # use a trained GHN
    python bench/bench_ghn.py --steps 300 --archs 8                  # short: meta-train 300 steps
    python bench/bench_ghn.py --skip-quality --device all            # throughput and step time, CPU and CUDA
    python bench/bench_ghn.py --skip-quality --skip-throughput --ddp 2   # the data-parallel rows alone
    python bench/bench_ghn.py --ghn experiments/results/nb201-mnist5k/ghn/ghn.pt --archs 100 \
        --ground-truth experiments/results/nb201-mnist5k/ground_truth.sqlite   # the experiment's 100 held-out
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy.stats import kendalltau

from nas.data import Dataset, load_dataset
from nas.ghn import GHN, GHNConfig, MetaTrainConfig, meta_train
from nas.graph import ArchGraph
from nas.space import SearchSpace, load_space
from nas.training import TrainConfig, train_graph

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (1, 8, 64, 256)

logger = logging.getLogger("bench_ghn")


def machine() -> str:
    """One line naming the machine and the software."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads{gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_throughput(space: SearchSpace, device: torch.device, *, repeats: int) -> list[dict[str, Any]]:
    """Graphs per second of ``predict`` for each batch size, warm and cold cache."""
    graphs = [c.graph for c in space.sample_many(max(BATCHES) * (repeats + 1), seed=123)]
    rows = []
    torch.manual_seed(0)
    ghn = GHN(GHNConfig(), space_info=space.describe()).to(device).eval()
    with torch.no_grad():
        ghn.predict(graphs[:8])  # first-call overheads
        for n in BATCHES:
            times: dict[str, list[tuple[float, float]]] = {"warm": [], "cold": []}
            for r in range(repeats):
                batch = graphs[r * n : (r + 1) * n]
                ghn._entries.clear()
                for cache in ("cold", "warm"):  # the cold call fills the cache the warm one uses
                    _sync(device)
                    cpu, start = time.process_time(), time.perf_counter()
                    ghn.predict(batch)
                    _sync(device)
                    times[cache].append((time.perf_counter() - start, time.process_time() - cpu))
            for cache, pairs in times.items():
                wall = statistics.median(w for w, _ in pairs)
                cpu = statistics.median(c for _, c in pairs)
                rows.append({"device": str(device), "cache": cache, "batch": n, "seconds": wall,
                             "cpu_seconds": cpu, "graphs_per_s": n / wall})
    return rows


def bench_meta_step(space: SearchSpace, data: Dataset, device: torch.device, *, steps: int) -> dict[str, Any]:
    """Seconds per meta-training step (default recipe) and peak memory."""

    def run(steps: int) -> None:
        config = MetaTrainConfig(steps=steps, eval_every=10**6, num_held_out=0, device=str(device))
        meta_train(space, data, config, progress=False)

    run(1)  # warm-up: imports, first allocations
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = time.process_time()
    start = time.perf_counter()
    run(steps)
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    cpu_seconds = (time.process_time() - cpu) / steps
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()  # separately: tracing slows Python down, so it is kept out of the timing
    run(1)
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    config = MetaTrainConfig()
    out = {
        "device": str(device),
        "steps": steps,
        "meta_batch": config.meta_batch,
        "batch_size": config.batch_size,
        "seconds_per_step": seconds,
        "cpu_seconds_per_step": cpu_seconds,
        "archs_per_s": config.meta_batch / seconds,
        "peak_rss_mib": rss_after / 1024,
        "rss_growth_mib": (rss_after - rss_before) / 1024,
        "python_peak_mib": py_peak / 2**20,
    }
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def bench_ddp_step(space: str, dataset: str, device: torch.device, processes: int, *, steps: int,
                   folder: Path) -> dict[str, Any]:
    """Seconds per meta-training step of ``nas train-ghn`` under ``torchrun`` with ``processes`` processes."""

    def run(n: int, tag: str) -> float:
        out = folder / f"ddp_{device.type}_{processes}_{tag}.pt"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "nas", "train-ghn", "--space", space, "--dataset", dataset, "--device", device.type,
               "--ghn-steps", str(n), "--eval-every", str(10**6), "--num-held-out", "0", "--no-progress",
               "--out", str(out)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return time.perf_counter() - start

    short, long = run(1, "short"), run(1 + steps, "long")
    seconds = (long - short) / steps
    meta_batch = MetaTrainConfig().meta_batch
    return {"device": str(device), "processes": processes, "steps": steps, "meta_batch": meta_batch,
            "seconds_per_step": seconds, "archs_per_s": meta_batch / seconds}


def held_out_graphs(path: Path) -> list[ArchGraph]:
    """The held-out architectures a meta-training checkpoint recorded."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    training = payload.get("training") or {}
    return [ArchGraph.from_json(text) for text in training.get("held_out", [])]


def trained_results(
    graphs: list[ArchGraph], data: Dataset, space: SearchSpace, seeds: tuple[int, ...]
) -> dict[str, dict[str, float]]:
    """Mean val accuracy/loss of each graph trained with ``TrainConfig()`` (cached in a JSON file)."""
    path = RESULTS / f"ghn_trained_{space.name}_{data.name.replace(':', '_').replace('/', '_')}.json"
    cache: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    config = TrainConfig()
    tag = json.dumps({"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                      "settings": space.describe()}, sort_keys=True)
    cache.setdefault(tag, {})
    runs = cache[tag]
    for i, graph in enumerate(graphs):
        for seed in seeds:
            key = f"{graph.key}/{seed}"
            if key in runs:
                continue
            result = train_graph(graph, data, TrainConfig(seed=seed))
            runs[key] = {"val_acc": result.val_acc, "val_loss": result.val_loss, "wall_time": result.wall_time}
            logger.info("trained %d/%d seed %d: val acc %.4f", i + 1, len(graphs), seed, result.val_acc)
            RESULTS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    out = {}
    for graph in graphs:
        rs = [runs[f"{graph.key}/{s}"] for s in seeds]
        out[graph.key] = {
            "val_acc": statistics.fmean(r["val_acc"] for r in rs),
            "val_loss": statistics.fmean(r["val_loss"] for r in rs),
        }
    return out


def cached_results(path: Path, graphs: list[ArchGraph], data: Dataset,
                   seeds: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Mean val accuracy/loss of each graph from a ground-truth cache (``nas correlate``'s SQLite file).

    The runs were made with the same trainer and budget (``TrainConfig()``: 3 epochs); graphs
    without every seed in the cache are left out.
    """
    from nas.evaluation.ground_truth import GroundTruthCache

    table = GroundTruthCache(path).table(graphs, data, TrainConfig(), seeds=list(seeds))
    table = table[table["failed"] == 0] if "failed" in table else table
    means = table.groupby("key")[["val_acc", "val_loss"]].mean()
    counts = table.groupby("key").size()
    return {k: {"val_acc": float(means.at[k, "val_acc"]), "val_loss": float(means.at[k, "val_loss"])}
            for k in means.index if counts[k] == len(seeds)}


def bench_quality(ghn: GHN, graphs: list[ArchGraph], data: Dataset, space: SearchSpace,
                  device: torch.device, ground_truth: Path | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Predicted-weight vs trained accuracy on held-out architectures, and Kendall's tau."""
    if ground_truth is not None:
        trained = cached_results(ground_truth, graphs, data, seeds=(0, 1))
        graphs = [g for g in graphs if g.key in trained]
    else:
        trained = trained_results(graphs, data, space, seeds=(0, 1))
    start = time.perf_counter()
    predicted = ghn.evaluate(graphs, data, device=device)
    evaluate_seconds = time.perf_counter() - start
    table = pd.DataFrame(
        {
            "key": [g.key[:12] for g in graphs],
            "params": [g.num_params() for g in graphs],
            "pred_acc": [p["acc"] for p in predicted],
            "pred_loss": [p["loss"] for p in predicted],
            "trained_acc": [trained[g.key]["val_acc"] for g in graphs],
            "trained_loss": [trained[g.key]["val_loss"] for g in graphs],
        }
    )
    tau = kendalltau(table["pred_loss"], table["trained_loss"], nan_policy="omit").statistic
    summary = {
        "archs": len(graphs),
        "pred_acc_mean": table["pred_acc"].mean(),
        "trained_acc_mean": table["trained_acc"].mean(),
        "ratio_pred_over_trained": table["pred_acc"].mean() / table["trained_acc"].mean(),
        "kendall_tau_loss": float(tau),
        "evaluate_seconds": evaluate_seconds,
    }
    return summary, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="nb201", help="search space (default nb201)")
    parser.add_argument("--dataset", default="mnist5k", help="dataset (default mnist5k)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "all"],
                        help="cpu, cuda, or all (cpu, plus cuda when available) for throughput and step time")
    parser.add_argument("--ghn", type=Path, default=None,
                        help="meta-trained GHN checkpoint for the quality part (default: meta-train one)")
    parser.add_argument("--steps", type=int, default=MetaTrainConfig().steps,
                        help="meta-training steps when --ghn is not given (default: the recipe's)")
    parser.add_argument("--archs", type=int, default=16, help="held-out architectures compared (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats per batch size (default 5)")
    parser.add_argument("--step-repeats", type=int, default=5, help="meta-training steps timed (default 5)")
    parser.add_argument("--ground-truth", type=Path, default=None,
                        help="a nas correlate ground-truth cache (SQLite) holding 3-epoch runs of the held-out "
                        "architectures, read instead of training them")
    parser.add_argument("--ddp", type=int, default=2, metavar="N",
                        help="processes of the data-parallel CPU row (default 2; 0 skips the data-parallel rows; "
                        "on CUDA one process per GPU)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    data = load_dataset(args.dataset)
    space = load_space(args.space, input_shape=data.input_shape, num_classes=data.num_classes)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        parser.error("--device cuda: CUDA is not available")
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(f"command: {command}\nmachine: {machine()}\n")

    if not args.skip_throughput:
        rows = [r for d in devices for r in bench_throughput(space, d, repeats=args.repeats)]
        table = pd.DataFrame(rows)
        table.to_csv(RESULTS / "ghn_throughput.csv", index=False)
        print("predict throughput (graphs/s, median of repeats)")
        print(table.pivot_table(index=["device", "cache"], columns="batch", values="graphs_per_s").round(1), "\n")

    if not args.skip_step:
        steps = pd.DataFrame([bench_meta_step(space, data, d, steps=args.step_repeats) for d in devices])
        steps.to_csv(RESULTS / "ghn_meta_step.csv", index=False)
        print("meta-training step (default recipe)")
        print(steps.round(3).to_string(index=False), "\n")
        if args.ddp:
            rows = []
            with tempfile.TemporaryDirectory() as tmp:
                for d in devices:
                    most = torch.cuda.device_count() if d.type == "cuda" else args.ddp
                    for n in sorted({1, most}):
                        rows.append(bench_ddp_step(args.space, args.dataset, d, n, steps=args.step_repeats,
                                                   folder=Path(tmp)))
            ddp = pd.DataFrame(rows)
            one = ddp[ddp["processes"] == 1].set_index("device")["seconds_per_step"]
            ddp["speedup_vs_1"] = [one[d] / s for d, s in zip(ddp["device"], ddp["seconds_per_step"])]
            ddp.to_csv(RESULTS / "ghn_meta_step_ddp.csv", index=False)
            print("data-parallel meta-training step (torchrun -m nas train-ghn; start-up excluded)")
            print(ddp.round(3).to_string(index=False), "\n")

    if not args.skip_quality:
        device = devices[-1] if devices else torch.device("cpu")
        path = args.ghn
        if path is None:
            path = RESULTS / f"ghn_{space.name}_{args.dataset}_{args.steps}.pt"
            start = time.perf_counter()
            meta_train(space, data, MetaTrainConfig(steps=args.steps, device=str(device)), out=path)
            logger.info("meta-training: %.0f s", time.perf_counter() - start)
        ghn = GHN.load(path, map_location=device)
        ghn.check_compatible(space)
        graphs = held_out_graphs(path)[: args.archs]
        if not graphs:
            graphs = [c.graph for c in space.sample_many(args.archs, seed=MetaTrainConfig().held_out_seed)]
            logger.warning("%s records no held-out architectures; using a fresh seeded sample", path)
        unseen = all(g.key in set(ghn.held_out_keys) for g in graphs)
        summary, table = bench_quality(ghn, graphs, data, space, device, ground_truth=args.ground_truth)
        summary.update({"ghn": str(path), "held_out_never_trained_on": unseen,
                        "meta_steps": (ghn.training_state or {}).get("step"),
                        "meta_seconds": (ghn.training_state or {}).get("elapsed")})
        table.to_csv(RESULTS / "ghn_quality_archs.csv", index=False)
        pd.DataFrame([summary]).to_csv(RESULTS / "ghn_quality.csv", index=False)
        print("predicted weights (no SGD) vs trained (3 epochs, 2 seeds) on held-out architectures")
        print(table.round(4).to_string(index=False))
        print(pd.Series(summary).to_string(), "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
