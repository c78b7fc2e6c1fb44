"""``nas export``: a trained candidate to ONNX, ``torch.export`` and a plain PyTorch module file.

Each export runs on real test images of ``--dataset`` and is kept only if its
logits match the PyTorch network's to within ``--tolerance``
(:mod:`nas.export`). The folder ``--out`` receives ``model.onnx``,
``model.pt2``, ``model.py`` with ``model_weights.pt``, and ``export.json``
(what was written and how closely each export matched).

Examples::

    nas export --arch runs/demo/best.json --weights runs/demo/best.pt --dataset digits --out runs/demo/export
    nas export --arch cand.json --weights trained.pt --format onnx --out deploy
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from nas.cli.basic import _load_data, _read_arch
from nas.cli.options import add_dataset_argument, add_threads_argument, file_kind, seed_value, set_threads

__all__ = ["add_parsers", "run_export"]

logger = logging.getLogger(__name__)

#: The record of what an export folder holds (read to tell its own files from a user's).
RECORD = "export.json"


def _formats(text: str) -> list[str]:
    from nas.export import EXPORT_FORMATS

    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if name not in EXPORT_FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"must be a comma-separated selection of {','.join(EXPORT_FORMATS)}, "
                                         f"but got {text!r}")
    return list(dict.fromkeys(names))


def _check_folder(out: Path, formats: list[str], stem: str) -> None:
    """Refuse to overwrite a file in ``out`` that an earlier ``nas export`` did not write."""
    from nas.export import FILE_ENDINGS

    targets = [out / f"{stem}{s}" for fmt in formats for s in FILE_ENDINGS[fmt]] + [out / RECORD]
    if out.exists() and not out.is_dir():
        raise ValueError(f"`--out` {str(out)!r} is a file; name a folder to write the exports into.")
    ours: set[str] = set()
    record = out / RECORD
    if record.is_file():
        try:
            ours = {Path(f).name for row in json.loads(record.read_text()).get("exports", []) for f in row["files"]}
        except (ValueError, KeyError, TypeError, AttributeError):
            ours = set()
        ours.add(RECORD)
    for target in targets:
        if target.exists() and target.name not in ours:
            raise ValueError(f"`--out` folder {str(out)!r} already holds {target.name}, which `nas export` did not "
                             "write; it is not overwritten: choose another --out folder or delete the file.")


def run_export(args: argparse.Namespace) -> int:
    """Export a trained candidate (``--arch`` with ``--weights``) and check each export on real images."""
    import torch

    from nas._atomic import atomic_write
    from nas.exceptions import ExportError
    from nas.export import export_candidate

    set_threads(args.threads)
    if args.images < 1:
        raise ValueError(f"`--images` must be positive, but got {args.images}.")
    if not args.tolerance > 0:
        raise ValueError(f"`--tolerance` must be positive, but got {args.tolerance}.")
    graph = _read_arch(args.arch)
    weights = Path(args.weights)
    if not weights.is_file():
        raise FileNotFoundError(f"`--weights`: no such file {args.weights!r}.")
    if file_kind(weights) != "state_dict":
        raise ExportError(f"`--weights` {args.weights!r} is not a state_dict (a .pt file of tensors such as "
                          "a campaign's best.pt or `nas train --save`).")
    out = Path(args.out)
    _check_folder(out, args.format, "model")
    data = _load_data(args.dataset, seed=args.data_seed)
    if tuple(graph.input_shape) != tuple(data.input_shape) or graph.num_classes != data.num_classes:
        raise ValueError(
            f"`--arch` {args.arch!r} takes inputs {tuple(graph.input_shape)} with {graph.num_classes} classes, "
            f"but dataset {data.name!r} has {tuple(data.input_shape)} with {data.num_classes}; pass the dataset "
            "the candidate was trained on with --dataset."
        )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    images = data.x_test[: args.images]
    logger.info("exporting %s (%s) as %s; checking on %d %s test images", graph.key[:12], args.weights,
                ", ".join(args.format), len(images), data.name)
    checks = export_candidate(graph, state, images, out, formats=args.format, tolerance=args.tolerance,
                              source=f"`--weights` {args.weights!r}")
    rows = [{"format": c.format, "files": [f.name for f in c.files], "max_abs_diff": c.max_abs_diff,
             "images": c.images, "seconds": round(c.seconds, 2)} for c in checks]
    record: dict[str, Any] = {"key": graph.key, "arch": str(args.arch), "weights": str(args.weights),
                              "dataset": data.name, "tolerance": args.tolerance, "exports": rows}
    previous = out / RECORD
    if previous.is_file():  # keep the rows of formats exported earlier into this folder
        try:
            old = json.loads(previous.read_text())
            if old.get("key") == graph.key:
                done = {row["format"] for row in rows}
                record["exports"] = [r for r in old.get("exports", []) if r.get("format") not in done] + rows
        except (ValueError, AttributeError, TypeError):
            pass
    atomic_write(previous, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
    table = pd.DataFrame([{"format": c.format, "file": str(c.files[0]), "max |logit diff|": f"{c.max_abs_diff:.2g}",
                           "check": f"ok (<= {args.tolerance:g} on {c.images} images)",
                           "seconds": f"{c.seconds:.1f}"} for c in checks])
    print(table.to_string(index=False))
    print(f"wrote {out / RECORD}")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``export`` on the ``nas`` parser's subparsers."""
    from nas.export import EXPORT_FORMATS, TOLERANCE

    p = subparsers.add_parser("export", help="export a trained candidate to ONNX, torch.export and plain PyTorch",
                              description=run_export.__doc__)
    p.add_argument("--arch", required=True, metavar="FILE",
                   help="the architecture: a campaign's best.json, a saved line of `nas sample`, or a graph's JSON")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="its trained state_dict: a campaign's best.pt or the file of `nas train --save`")
    add_dataset_argument(p, help="dataset whose test images check the exports (the candidate's own)")
    p.add_argument("--data-seed", type=seed_value, default=0, help="seed of the dataset split (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the exports into (created if missing)")
    p.add_argument("--format", type=_formats, default=list(EXPORT_FORMATS), metavar="LIST",
                   help=f"comma-separated formats: {','.join(EXPORT_FORMATS)} (default: all)")
    p.add_argument("--images", type=int, default=256, help="test images each export is checked on (default 256)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help=f"largest absolute logit difference allowed (default {TOLERANCE:g})")
    add_threads_argument(p)
    p.set_defaults(func=run_export)
