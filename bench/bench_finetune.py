"""Benchmark: fine-tuning from GHN-predicted weights against training from scratch, at equal budget.

For architectures the GHN checkpoint held out of meta-training, trains each
for ``--epochs`` with the campaign's fine-tuning recipe (:func:`nas.training.train`,
the trainer's defaults) starting from:

* ``scratch``: a fresh initialisation;
* ``predicted_raw``: the predicted weights as the GHN outputs them
  (``ghn.materialize(..., rescale=False)``);
* ``predicted``: the predicted weights with the tensors batch norm normalises
  rescaled to a fresh initialisation's norms (``ghn.materialize(...)``, the
  campaign's default);
* ``predicted_convs``: the same, with every batch-norm scale and shift and
  the linear classifier put back to a fresh initialisation (the predicted
  convolutions alone).

``no_sgd`` is the accuracy of the predicted weights before any step. Every
start is trained at each peak learning rate of ``--lrs`` (default: the
trainer's 0.05). Prints the mean validation accuracy per start, budget and
learning rate and writes
``finetune_runs.csv`` (one row per run) and ``finetune_summary.csv``. It
measures; it asserts nothing.

Usage::

    python bench/bench_finetune.py --ghn runs/bench_search/one_time/ghn.pt --archs 8 --epochs 1 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from nas.training import TrainConfig


#: The starts fine-tuning is compared from (see the module docstring).
STARTS = ("scratch", "predicted_raw", "predicted", "predicted_convs")


def _fresh_affine_and_head(net: torch.nn.Module, graph: object) -> torch.nn.Module:
    """Put every batch-norm scale and shift and every linear layer of ``net`` back to a fresh initialisation."""
    from nas.network import Network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = dict(Network(graph).named_parameters())
    modules = dict(net.named_modules())
    with torch.no_grad():
        for name, param in net.named_parameters():
            owner = modules[name.rsplit(".", 1)[0]]
            if isinstance(owner, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Linear)):
                param.copy_(fresh[name])
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ghn", type=Path, required=True, help="a GHN checkpoint (its held-out architectures are used)")
    parser.add_argument("--dataset", default=None, help="dataset (default: the one the GHN was trained on)")
    parser.add_argument("--archs", type=int, default=8)
    parser.add_argument("--epochs", type=float, nargs="+", default=[1.0])
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    parser.add_argument("--lrs", type=float, nargs="+", default=[TrainConfig.lr],
                        help="peak learning rates (default: the trainer's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from nas.data import load_dataset
    from nas.ghn import GHN
    from nas.ghn import read_checkpoint
    from nas.graph import ArchGraph
    from nas.network import Network
    from nas.training import train

    ghn = GHN.load(args.ghn).eval()
    payload = read_checkpoint(args.ghn)
    held_out = [ArchGraph.from_json(t) for t in (payload.get("training") or {}).get("held_out", [])]
    if not held_out:
        raise SystemExit(f"error: GHN checkpoint {args.ghn} records no held-out architectures")
    graphs = held_out[: args.archs]
    data = load_dataset(args.dataset or ghn.space_info.get("dataset", "mnist5k"))
    no_sgd = ghn.evaluate(graphs, data)
    rows = []
    for graph, predicted in zip(graphs, no_sgd):
        rows.append({"key": graph.key, "start": "no_sgd", "epochs": 0.0, "val_acc": predicted["acc"],
                     "val_loss": predicted["loss"], "seconds": 0.0})
        for epochs in args.epochs:
            starts = {
                "scratch": lambda g=graph: Network(g),
                "predicted_raw": lambda g=graph: ghn.materialize(g, data, rescale=False),
                "predicted": lambda g=graph: ghn.materialize(g, data),
                "predicted_convs": lambda g=graph: _fresh_affine_and_head(ghn.materialize(g, data), g),
            }
            for start, make in ((name, starts[name]) for name in args.starts):
                for lr in args.lrs:
                    torch.manual_seed(0)
                    net = make()
                    begin = time.perf_counter()
                    result = train(net, data, TrainConfig(epochs=epochs, lr=lr, seed=0))
                    rows.append({"key": graph.key, "start": start, "epochs": epochs, "lr": lr,
                                 "val_acc": result.val_acc, "val_loss": result.val_loss,
                                 "seconds": time.perf_counter() - begin})
                    print(f"{graph.key[:12]} {start:14s} {epochs:g} epochs, lr {lr:g}: val_acc {result.val_acc:.4f}",
                          flush=True)
    runs = pd.DataFrame(rows)
    summary = runs.groupby(["start", "epochs", "lr"], as_index=False, dropna=False).agg(
        val_acc=("val_acc", "mean"), val_acc_std=("val_acc", "std"), val_loss=("val_loss", "mean"),
        seconds=("seconds", "mean"), n=("key", "count"),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out / "finetune_runs.csv", index=False)
    summary.to_csv(args.out / "finetune_summary.csv", index=False)
    print(f"{len(graphs)} held-out architectures of {args.ghn} on {data.name}")
    print(summary.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
