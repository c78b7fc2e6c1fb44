"""A corpus of bad inputs: each gives one error line naming the problem, exit code 2, no traceback,
and leaves existing files and storage as they were.

Most cases call ``nas.cli.main`` in this process against a private copy of a
finished tiny campaign (``--out`` points at it, so the existing campaign
database, tables and weights are in the snapshot compared before and after).
Cases that would otherwise fail on the campaign's identity check use a fresh
``--study`` name in that same storage, so that the check under test is the one
that has to refuse. Disk-full cases run in a subprocess with a file-size limit.

No ``nas`` command reads an architecture graph from a JSON file the user
gives, so the graph-level cases (cycle, unknown op, mismatched shapes, ...) are
tested on :meth:`ArchGraph.from_json`, the one reader of graph JSON, which must
raise :class:`~nas.exceptions.GraphError` with a one-line message. (A campaign
stores each candidate's choices and key, not its graph: the choices rebuild it.)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import (
    SEARCH_ARGS,
    SPACE_FILE,
    TINY,
    CliResult,
    assert_one_line_error,
    base_env,
    run_inprocess,
    snapshot,
)

from nas.exceptions import GraphError


@dataclass
class Ctx:
    """What a case may use: its folder, a finished campaign copy and a good GHN checkpoint."""

    tmp: Path
    campaign: Path
    ghn: Path
    ranker: Path

    def search(self, *extra: str, ghn: str | None = None, study: str | None = None) -> list[str]:
        """``nas search`` of the finished campaign, with ``extra`` flags replacing or adding to its own."""
        argv = ["search", *SEARCH_ARGS, "--ghn", ghn or str(self.ghn), "--out", str(self.campaign)]
        if study:
            argv += ["--study", study]
        pairs = list(extra)
        while pairs:
            flag, value = pairs.pop(0), pairs.pop(0)
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        return argv


@dataclass
class Case:
    """One bad input: how to build the command, and words its error line must contain."""

    name: str
    argv: Callable[[Ctx], list[str]]
    needles: tuple[str, ...]


# ------------------------------------------------------------------ inputs built on disk


def _space(attr: str) -> str:
    return f"{SPACE_FILE}:{attr}"


def _empty_folder(ctx: Ctx) -> str:
    (ctx.tmp / "empty").mkdir()
    return str(ctx.tmp / "empty")


def _truncated_mnist(ctx: Ctx) -> str:
    folder = ctx.tmp / "mnist"
    folder.mkdir()
    # A valid header that promises 60000 images of 28x28, followed by 100 bytes.
    (folder / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 60000, 28, 28) + bytes(100))
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"\x00\x00\x08\x01")
    return str(folder)


def _file(ctx: Ctx, name: str, data: bytes) -> str:
    path = ctx.tmp / name
    path.write_bytes(data)
    return str(path)


def _truncated_ckpt(ctx: Ctx) -> str:
    data = ctx.ghn.read_bytes()
    return _file(ctx, "truncated.pt", data[: len(data) // 2])


def _foreign_ckpt(ctx: Ctx) -> str:
    torch.save({"model": {"weight": torch.zeros(3, 3)}, "epoch": 4}, ctx.tmp / "foreign.pt")
    return str(ctx.tmp / "foreign.pt")


class _Payload:
    """Unpickling this runs a shell command (the attack that weights_only=True refuses)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _pickled_code_ckpt(ctx: Ctx) -> str:
    payload = torch.load(ctx.ghn, weights_only=True)
    payload["config"] = _Payload(ctx.tmp / "PWNED")
    torch.save(payload, ctx.tmp / "code.pt")
    return str(ctx.tmp / "code.pt")


def _other_space_ckpt(ctx: Ctx) -> str:
    from nas.ghn import GHN, GHNConfig

    info = {"space": "nb201", "input_shape": [1, 28, 28], "num_classes": 10, "settings": {}, "dataset": "mnist5k"}
    GHN(GHNConfig(hidden=8, layers=1), space_info=info).save(ctx.tmp / "nb201.pt")
    return str(ctx.tmp / "nb201.pt")


def _newer_ckpt(ctx: Ctx) -> str:
    payload = torch.load(ctx.ghn, weights_only=True)
    payload["version"] = 99
    torch.save(payload, ctx.tmp / "newer.pt")
    return str(ctx.tmp / "newer.pt")


def _under_a_file(ctx: Ctx) -> str:
    (ctx.tmp / "a-file").write_text("not a folder")
    return str(ctx.tmp / "a-file" / "out")


def _folder_png(ctx: Ctx) -> str:
    (ctx.tmp / "cell.png").mkdir()
    return str(ctx.tmp / "cell.png")


def _copy(source: Path, target: Path) -> str:
    shutil.copy(source, target)
    return str(target)


def _edited_ckpt(source: Path, target: Path, **info: object) -> str:
    """A copy of the checkpoint ``source`` whose identity (``space_info``) has ``info`` changed."""
    payload = torch.load(source, weights_only=True)
    payload["space_info"] = {**payload["space_info"], **info}
    torch.save(payload, target)
    return str(target)


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file of ``array``: type ``code`` (0x08 uint8, 0x0D float32), big-endian dims and values."""
    dtype = {0x08: ">u1", 0x0D: ">f4"}[code]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def _mnist_folder(ctx: Ctx, name: str, *, size: int = 8, labels: np.ndarray | None = None,
                  images: np.ndarray | None = None, code: int = 0x08) -> str:
    """An MNIST folder of 60 train and 20 test images in IDX files, with the given labels or images."""
    folder = ctx.tmp / name
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        x = rng.integers(0, 256, size=(n, size, size)) if images is None else images[:n]
        y = (np.arange(n) % 10) if labels is None else labels[:n]
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(x, code))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(y))
    return f"mnist:{folder}"


def _cifar_folder(ctx: Ctx, labels: list[object]) -> str:
    """A CIFAR-10 folder (pickle batches) of 10 images per batch, with ``labels`` in every batch."""
    import pickle

    folder = ctx.tmp / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"labels": labels, b"data": rng.integers(0, 256, size=(10, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return f"cifar10:{folder}"


def _deep_json(ctx: Ctx) -> str:
    return _file(ctx, "deep.json", b"[" * 100_000 + b"]" * 100_000)


def _sqlite_of_something_else(ctx: Ctx) -> str:
    path = ctx.tmp / "ground_truth.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, val_acc REAL)")
        conn.execute("INSERT INTO runs VALUES ('abc', 0.5)")
    conn.close()
    return f"sqlite:///{path}"


def _exiting_space_file(ctx: Ctx) -> str:
    path = ctx.tmp / "exits_at_import.py"
    path.write_text("import sys\nsys.exit(3)\n")
    return f"{path}:Space"


def _fit_ranker(ctx: Ctx) -> list[str]:
    return ["fit-ranker", "--space", TINY, "--dataset", "digits", "--ghn", str(ctx.ghn), "--ranker-labels", "4",
            "--ranker-k", "1"]


#: Longest a refused input may take (every case fails before any one-time cost).
CASE_SECONDS = 20

PG_UNREACHABLE = "postgresql://nas:hunter2secret@127.0.0.1:1/nas"

CASES: list[Case] = [
    # -- numbers out of range
    Case("trials-zero", lambda c: c.search("--trials", "0"), ("--trials", "0")),
    Case("trials-negative", lambda c: c.search("--trials", "-3"), ("--trials", "-3")),
    Case("trials-not-a-number", lambda c: c.search("--trials", "many"), ("--trials", "many")),
    Case("label-batch-negative", lambda c: c.search("--label-batch", "-5"), ("--label-batch", "-5")),
    Case("label-margin-negative", lambda c: c.search("--label-margin", "-0.1"), ("--label-margin", "-0.1")),
    Case("label-seconds-nan", lambda c: c.search("--label-seconds", "nan"), ("--label-seconds", "nan")),
    Case("fit-ranker-label-margin-negative", lambda c: [*_fit_ranker(c), "--out", str(c.tmp / "r.pt"),
                                                        "--label-margin", "-1"], ("--label-margin", "-1")),
    Case("top-k-zero", lambda c: c.search("--top-k", "0"), ("--top-k", "0")),
    Case("top-k-negative", lambda c: c.search("--top-k", "-2"), ("--top-k", "-2")),
    Case("top-k-above-space-size", lambda c: c.search("--top-k", "7"), ("top_k", "7", "6 candidates")),
    Case("finetune-epochs-zero", lambda c: c.search("--finetune-epochs", "0"), ("--finetune-epochs", "0")),
    Case("finetune-epochs-negative", lambda c: c.search("--finetune-epochs", "-1"), ("--finetune-epochs", "-1")),
    Case("batch-size-zero", lambda c: c.search("--batch-size", "0"), ("--batch-size", "0")),
    Case("grace-below-heartbeat", lambda c: c.search("--grace-period", "1"), ("grace", "heartbeat")),
    Case("unknown-sampler", lambda c: c.search("--sampler", "annealing"), ("sampler", "annealing", "tpe")),
    Case("unknown-objectives", lambda c: c.search("--objectives", "speed"), ("objectives", "speed")),
    Case("space-arg-without-equals", lambda c: c.search("--space-arg", "width"), ("--space-arg", "width")),
    Case("train-ghn-steps-zero", lambda c: ["train-ghn", "--space", TINY, "--dataset", "digits", "--out",
                                            str(c.tmp / "g.pt"), "--ghn-steps", "0"], ("steps", "0")),
    Case("train-epochs-zero", lambda c: ["train", "--space", TINY, "--dataset", "digits", "--epochs", "0"],
         ("epochs", "0")),
    Case("correlate-one-arch", lambda c: ["correlate", "--space", TINY, "--dataset", "digits", "--out",
                                          str(c.tmp / "corr"), "--archs", "1"], ("--archs", "1")),
    Case("correlate-seeds-zero", lambda c: ["correlate", "--space", TINY, "--dataset", "digits", "--out",
                                            str(c.tmp / "corr"), "--train-seeds", "0"], ("--train-seeds", "0")),
    Case("correlate-unknown-method", lambda c: ["correlate", "--space", TINY, "--dataset", "digits", "--out",
                                                str(c.tmp / "corr"), "--methods", "oracle"], ("oracle",)),
    Case("sample-n-zero", lambda c: ["sample", "--space", TINY, "-n", "0"], ("-n", "0")),
    Case("seed-negative", lambda c: ["sample", "--space", TINY, "--seed", "-1"], ("--seed", "-1", "[0, 4294967295]")),
    Case("seed-above-2-32", lambda c: ["train", "--space", TINY, "--dataset", "digits", "--seed", str(2**64)],
         ("--seed", str(2**64))),
    Case("search-seed-negative", lambda c: c.search("--seed", "-5", study="seed-neg"), ("--seed", "-5")),
    Case("data-seed-not-a-number", lambda c: ["train-ghn", "--space", TINY, "--dataset", "digits", "--out",
                                              str(c.tmp / "g.pt"), "--data-seed", "one"], ("--data-seed", "one")),
    Case("threads-absurd", lambda c: ["train", "--space", TINY, "--dataset", "digits", "--threads", "1000000"],
         ("--threads", "1000000")),
    Case("sample-n-above-space-size", lambda c: ["sample", "--space", TINY, "-n", "1000000"],
         ("1000000 distinct", "has only 6")),
    # -- datasets
    Case("unknown-dataset", lambda c: c.search("--dataset", "imagenet"), ("imagenet", "digits")),
    Case("dataset-folder-missing", lambda c: c.search("--dataset", f"mnist:{c.tmp / 'nowhere'}"),
         ("nowhere", "does not exist")),
    Case("dataset-folder-empty", lambda c: c.search("--dataset", f"mnist:{_empty_folder(c)}"), ("empty",)),
    Case("dataset-file-truncated", lambda c: c.search("--dataset", f"mnist:{_truncated_mnist(c)}"),
         ("train-images-idx3-ubyte", "truncated")),
    # -- search spaces (fresh study names: the space itself must be refused, not the stored settings)
    Case("unknown-space", lambda c: c.search("--space", "nasbench999"), ("nasbench999", "nb201")),
    Case("space-file-missing", lambda c: c.search("--space", f"{c.tmp / 'nope.py'}:Space"), ("nope.py", "does not exist")),
    Case("space-attribute-missing", lambda c: c.search("--space", _space("Missing")), ("Missing",)),
    Case("space-not-a-space", lambda c: c.search("--space", _space("NOT_A_SPACE")), ("NOT_A_SPACE",)),
    Case("space-build-raises", lambda c: c.search("--space", _space("RaisingSpace"), study="s-raise"),
         ("build()", "ZeroDivisionError")),
    Case("space-build-exits", lambda c: c.search("--space", _space("ExitingSpace"), study="s-exit"),
         ("build()", "sys.exit(0)")),
    Case("sample-space-build-exits", lambda c: ["sample", "--space", _space("ExitingSpace")], ("sys.exit(0)",)),
    Case("space-empty-choices", lambda c: c.search("--space", _space("EmptySpace"), study="s-empty"),
         ("choices", "empty")),
    Case("space-build-returns-nothing", lambda c: c.search("--space", _space("NoneSpace"), study="s-none"),
         ("NoneType",)),
    # -- GHN checkpoints
    Case("checkpoint-missing", lambda c: c.search(ghn=str(c.tmp / "nope.pt"), study="g-missing"), ("nope.pt",)),
    Case("checkpoint-empty-file", lambda c: c.search(ghn=_file(c, "empty.pt", b""), study="g-empty"), ("empty.pt",)),
    Case("checkpoint-corrupt", lambda c: c.search(ghn=_file(c, "noise.pt", os.urandom(4096)), study="g-noise"),
         ("noise.pt",)),
    Case("checkpoint-truncated", lambda c: c.search(ghn=_truncated_ckpt(c), study="g-trunc"), ("truncated.pt",)),
    Case("checkpoint-foreign", lambda c: c.search(ghn=_foreign_ckpt(c), study="g-foreign"),
         ("foreign.pt", "not a ghn-nas")),
    Case("checkpoint-pickled-code", lambda c: c.search(ghn=_pickled_code_ckpt(c), study="g-code"),
         ("code.pt", "cannot be read safely")),
    Case("checkpoint-other-space", lambda c: c.search(ghn=_other_space_ckpt(c), study="g-other"),
         ("nb201.pt", "space 'nb201'", "space 'tiny'")),
    Case("checkpoint-newer-version", lambda c: c.search(ghn=_newer_ckpt(c), study="g-newer"), ("newer.pt", "99")),
    Case("train-ghn-resume-other-space", lambda c: ["train-ghn", "--space", "nb201", "--dataset", "digits", "--out",
                                                    str(c.ghn), "--ghn-steps", "2"], ("tiny_ghn.pt", "nb201")),
    # -- storage
    Case("storage-no-scheme", lambda c: c.search("--storage", "campaign.db"), ("campaign.db", "scheme")),
    Case("storage-unknown-scheme", lambda c: c.search("--storage", "redis://localhost/0"), ("redis://",)),
    Case("storage-in-memory", lambda c: c.search("--storage", "sqlite:///:memory:"), ("memory",)),
    Case("storage-journal-is-a-folder", lambda c: c.search("--storage", f"journal://{c.tmp}"), ("folder",)),
    Case("storage-under-a-file", lambda c: c.search("--storage", f"sqlite:///{_under_a_file(c)}/c.db"), ("a-file",)),
    Case("storage-unreachable-postgres", lambda c: c.search("--storage", PG_UNREACHABLE), ("127.0.0.1:1",)),
    Case("study-exists-with-other-settings", lambda c: c.search("--finetune-epochs", "2"),
         ("different settings", "epochs")),
    Case("worker-unknown-study", lambda c: ["worker", "--storage", f"sqlite:///{c.campaign / 'campaign.db'}",
                                            "--study", "nosuch"], ("nosuch", "no campaign")),
    # -- output
    Case("out-under-a-regular-file", lambda c: c.search("--out", _under_a_file(c), study="o-file"), ("a-file",)),
    # draw writes atomically (a temporary file, then a rename), so a target that cannot be replaced fails cleanly
    Case("draw-onto-a-folder", lambda c: ["draw", "--space", TINY, "--out", _folder_png(c)], ("is a folder",)),
    Case("draw-unknown-suffix", lambda c: ["draw", "--space", TINY, "--out", str(c.tmp / "cell.txt")], ("cell.txt",)),
    # -- outputs never overwrite an input or a file of another kind
    Case("fit-ranker-out-is-its-ghn", lambda c: [*_fit_ranker(c), "--out", str(c.ghn)],
         ("--out", "the input `--ghn`", "destroy")),
    Case("fit-ranker-out-is-a-ghn", lambda c: [*_fit_ranker(c), "--out", _copy(c.ghn, c.tmp / "other_ghn.pt")],
         ("other_ghn.pt", "is a GHN checkpoint, not a ranker checkpoint")),
    Case("fit-ranker-out-is-a-csv", lambda c: [*_fit_ranker(c), "--out", _file(c, "table.csv", b"a,b\n1,2\n")],
         ("--out", "must end in .pt", "table.csv")),
    Case("train-ghn-out-is-another-file", lambda c: ["train-ghn", "--space", TINY, "--dataset", "digits", "--out",
                                                     _file(c, "notes.pt", b"my notes"), "--ghn-steps", "2"],
         ("notes.pt", "another kind", "not overwritten")),
    Case("train-save-over-a-ghn", lambda c: ["train", "--space", TINY, "--dataset", "digits", "--epochs", "0.01",
                                             "--save", str(c.ghn)], ("--save", "is a GHN checkpoint")),
    Case("draw-over-a-non-image", lambda c: ["draw", "--space", TINY, "--out", _file(c, "cell.png", b"text")],
         ("cell.png", "another kind")),
    # -- storage URLs with awkward passwords: refused or masked whole
    Case("storage-password-with-unescaped-at",
         lambda c: c.search("--storage", "postgresql://nas:hunter2secret@x@127.0.0.1:1/nas"), ("unescaped '@'", "%40")),
    Case("storage-password-with-slash",
         lambda c: c.search("--storage", "postgresql://nas:hunter2secret/x@127.0.0.1:1/nas"),
         ("nas:***@127.0.0.1:1",)),
    # -- checkpoints serve only the space, settings, dataset and split they were built for
    Case("checkpoint-other-space-settings",
         lambda c: c.search(ghn=_edited_ckpt(c.ghn, c.tmp / "s.pt", settings={"C": 8}), study="i-settings"),
         ("s.pt", "settings", "{'C': 8}")),
    Case("checkpoint-other-space-name",
         lambda c: c.search(ghn=_edited_ckpt(c.ghn, c.tmp / "n.pt", space="nb201"), study="i-space"),
         ("n.pt", "space 'nb201'", "'tiny'")),
    Case("checkpoint-other-dataset",
         lambda c: c.search(ghn=_edited_ckpt(c.ghn, c.tmp / "d.pt", dataset="mnist5k"), study="i-dataset"),
         ("d.pt", "dataset 'mnist5k'", "'digits'")),
    Case("checkpoint-other-split",
         lambda c: c.search(ghn=_edited_ckpt(c.ghn, c.tmp / "seed.pt", data_seed=7), study="i-split"),
         ("seed.pt", "data_seed 7", "data_seed 0")),
    Case("ranker-other-space-settings",
         lambda c: c.search("--ranker", _edited_ckpt(c.ranker, c.tmp / "r.pt", settings={"C": 8}), study="i-rs"),
         ("ranker checkpoint", "r.pt", "settings")),
    Case("ranker-other-dataset",
         lambda c: c.search("--ranker", _edited_ckpt(c.ranker, c.tmp / "rd.pt", dataset="mnist5k"), study="i-rd"),
         ("ranker checkpoint", "rd.pt", "mnist5k")),
    Case("fit-ranker-from-ghn-of-other-dataset",
         lambda c: ["fit-ranker", "--space", TINY, "--dataset", "digits", "--ghn",
                    _edited_ckpt(c.ghn, c.tmp / "g5k.pt", dataset="mnist5k"), "--out", str(c.tmp / "r.pt")],
         ("g5k.pt", "mnist5k")),
    Case("correlate-with-ghn-of-other-split",
         lambda c: ["correlate", "--space", TINY, "--dataset", "digits", "--out", str(c.tmp / "corr"), "--archs", "5",
                    "--methods", "ghn_plain", "--ghn", _edited_ckpt(c.ghn, c.tmp / "g7.pt", data_seed=7)], ("g7.pt", "data_seed")),
    Case("out-folder-of-another-campaign", lambda c: c.search(study="another-campaign"),
         ("holds the results of campaign", "another-campaign", "--out")),
    # -- spaces that a study would refuse later, or that cannot be allocated: refused before any cost
    Case("space-dynamic-choice-list", lambda c: c.search("--space", _space("DynamicSpace"), study="s-dyn"),
         ("'width'", "[8, 16]", "[2, 4]")),
    Case("sample-dynamic-choice-list", lambda c: ["sample", "--space", _space("DynamicSpace"), "-n", "2"],
         ("'width'", "own name")),
    Case("space-too-wide-to-allocate", lambda c: c.search("--space", _space("WideSpace"), study="s-wide"),
         ("parameters", "MAX_PARAMS")),
    Case("space-arg-absurd-width", lambda c: c.search("--space", "nb201", "--space-arg", "C=1000000",
                                                      study="s-width"), ("parameters", "MAX_PARAMS")),
    Case("sample-absurd-width", lambda c: ["sample", "--space", "nb201", "--space-arg", "C=1000000"],
         ("parameters",)),
    Case("train-ghn-10000-node-chain", lambda c: ["train-ghn", "--space", _space("ChainSpace"), "--dataset", "digits",
                                                  "--out", str(c.tmp / "g.pt"), "--ghn-steps", "2"],
         ("10,005 nodes", "MAX_NODES")),
    Case("space-file-exits-at-import", lambda c: c.search("--space", _exiting_space_file(c), study="s-exit-import"),
         ("exits_at_import.py", "sys.exit(3)")),
    # -- datasets checked before training
    Case("dataset-images-nan", lambda c: ["train-ghn", "--space", TINY, "--dataset",
                                          _mnist_folder(c, "nan", images=np.full((60, 8, 8), np.nan), code=0x0D),
                                          "--out", str(c.tmp / "g.pt"), "--ghn-steps", "2"], ("NaN",)),
    Case("dataset-one-class", lambda c: c.search("--dataset", _mnist_folder(c, "one", labels=np.zeros(60, int)),
                                                 study="d-one"), ("single class",)),
    Case("dataset-1x1-images", lambda c: ["train", "--space", TINY, "--dataset", _mnist_folder(c, "tiny", size=1)],
         ("1x1", "at least 4x4")),
    Case("dataset-cifar-labels-strings", lambda c: ["train", "--space", TINY, "--dataset",
                                                    _cifar_folder(c, [str(i % 10) for i in range(10)])],
         ("data_batch_1", "labels", "str")),
    Case("dataset-cifar-labels-none", lambda c: ["train", "--space", TINY, "--dataset", _cifar_folder(c, [None] * 10)],
         ("data_batch_1", "labels", "NoneType")),
    # -- files and flags that were silently misread
    Case("arch-json-nested-100000-deep", lambda c: ["train", "--dataset", "digits", "--arch", _deep_json(c)],
         ("deep.json", "nested too deeply")),
    Case("train-arch-with-space", lambda c: ["train", "--dataset", "digits", "--arch", str(c.campaign / "best.json"),
                                             "--space", "darts"], ("--space", "--arch")),
    Case("storage-is-another-sqlite-database", lambda c: c.search("--storage", _sqlite_of_something_else(c)),
         ("ground_truth.sqlite", "not an Optuna storage", "runs")),
    Case("storage-is-not-a-database", lambda c: c.search("--storage", f"sqlite:///{_file(c, 'notes.db', b'x' * 200)}"),
         ("notes.db", "not a SQLite database")),
]


@pytest.fixture
def ctx(tmp_path: Path, campaign_copy: Path, tiny_ghn: Path, tiny_ranker: Path, rel_tmp: Path) -> Ctx:
    ghn = tmp_path / "tiny_ghn.pt"
    shutil.copy(tiny_ghn, ghn)
    return Ctx(tmp=tmp_path, campaign=campaign_copy, ghn=ghn, ranker=tiny_ranker)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(case: Case, ctx: Ctx) -> None:
    argv = case.argv(ctx)  # builds the bad input on disk first
    before = snapshot(ctx.tmp)
    start = time.monotonic()
    result = run_inprocess(argv)
    seconds = time.monotonic() - start
    line = assert_one_line_error(result, *case.needles)
    # A limit on endless work, not a speed test: the slowest case takes a few seconds.
    assert seconds < CASE_SECONDS, f"took {seconds:.0f} s (a check that fails later must fail before any cost): {line}"
    assert "hunter2secret" not in result.err + result.out
    assert not (ctx.tmp / "PWNED").exists(), "unpickling the checkpoint ran its code"
    assert snapshot(ctx.tmp) == before, f"files or storage changed after: {line}"


# ------------------------------------------------------------------ limits that follow from the space's size


def test_more_trials_than_candidates_stops_once_every_candidate_is_scored(tmp_path: Path, tiny_ghn: Path) -> None:
    """``--trials 100000`` on a space of 6 candidates is legitimate: the rank stage stops when all 6 are scored."""
    import optuna

    start = time.monotonic()
    result = run_inprocess(["search", *SEARCH_ARGS, "--trials", "100000", "--ghn", str(tiny_ghn), "--out",
                            str(tmp_path / "out")])
    seconds = time.monotonic() - start
    assert result.code == 0, result.err[-3000:]
    storage = f"sqlite:///{tmp_path / 'out' / 'campaign.db'}"
    (name,) = [n for n in optuna.get_all_study_names(storage) if n.endswith("-rank")]
    study = optuna.load_study(study_name=name, storage=storage)
    assert 6 <= len(study.trials) < 200
    assert seconds < 120, f"took {seconds:.0f} s"


# ------------------------------------------------------------------ disk full mid-run


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _run_limited(argv: list[str], tmp: Path, limit: int) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from nas.cli import main; sys.exit(main())", *argv],
        env=base_env(tmp), capture_output=True, text=True, timeout=480, preexec_fn=_file_size_limit(limit),
        stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("limit", [16_000, 120_000], ids=["when-creating-storage", "during-ranking"])
def test_disk_full_during_a_campaign_is_one_line(limit: int, tmp_path: Path, tiny_ghn: Path) -> None:
    """Files may not grow past ``limit`` bytes: the storage cannot be created, or fills up mid-run."""
    out = tmp_path / "out"
    result = _run_limited(["search", *SEARCH_ARGS, "--trials", "400", "--ghn", str(tiny_ghn), "--out", str(out)],
                          tmp_path, limit)
    assert_one_line_error(result, "campaign.db")


def test_disk_full_during_meta_training_checkpoint_is_one_line(tmp_path: Path) -> None:
    result = _run_limited(["train-ghn", "--space", TINY, "--dataset", "digits", "--out", str(tmp_path / "g.pt"),
                           "--ghn-steps", "2", "--eval-every", "1", "--hidden", "8", "--layers", "1",
                           "--num-held-out", "1", "--no-progress"], tmp_path, 4096)
    assert_one_line_error(result)
    assert not (tmp_path / "g.pt").exists()


# ------------------------------------------------------------------ NaN and exploding losses


def test_nan_ghn_fails_the_rank_trials_and_stops_with_one_line(tmp_path: Path, tiny_ghn: Path) -> None:
    """Ranking by a GHN whose predictions are NaN scores nothing: every rank trial fails, the run stops (no endless
    loop). (The default ranker starts from random weights and does not use the GHN's.)"""
    from nas.ghn import GHN

    ghn = GHN.load(tiny_ghn)
    with torch.no_grad():
        for param in ghn.parameters():
            param.fill_(float("nan"))
    ghn.save(tmp_path / "nan.pt")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from nas.cli import main; sys.exit(main())",
             "search", *SEARCH_ARGS, "--rank-by", "loss", "--ghn", str(tmp_path / "nan.pt"), "--out",
             str(tmp_path / "out")],
            env=base_env(tmp_path), capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("`nas search` with a NaN GHN did not stop within 90 s (the rank stage asks for new trials "
                    "forever when every candidate fails)", pytrace=False)
    assert_one_line_error(CliResult(proc.returncode, proc.stdout, proc.stderr))


def test_a_search_whose_every_fine_tune_diverges_exits_1_with_one_line(tmp_path: Path, tiny_ghn: Path) -> None:
    """Ranking works but every fine-tune diverges: the run ends, says so in one line, and exits 1, not 0."""
    result = run_inprocess(["search", *SEARCH_ARGS, "--trials", "30", "--finetune-lr", "1e12", "--ghn",
                            str(tiny_ghn), "--out", str(tmp_path / "out")])
    lines = [line for line in result.err.splitlines() if ": error:" in line]
    assert result.code == 1 and "Traceback" not in result.err, result.err[-3000:]
    assert len(lines) == 1 and "all 3 fine-tuned candidates failed" in lines[0] and "finetuned.csv" in lines[0]
    assert (tmp_path / "out" / "finetuned.csv").is_file() and not (tmp_path / "out" / "best.json").exists()


def test_exploding_finetune_loss_fails_the_trial_and_the_campaign_goes_on(tmp_path: Path, tiny_ghn: Path) -> None:
    """Fine-tuning with an absurd learning rate diverges: each trial is FAIL with a reason, the rest still runs."""
    import optuna
    from optuna.trial import TrialState

    from nas.campaign import Campaign

    campaign = Campaign(
        space=TINY, dataset="digits", ghn=str(tiny_ghn), trials=30, top_k=3, finetune_epochs=1, sampler="random",
        out=tmp_path / "out", finetune_lr=1e12, progress=False,
    )
    result = campaign.run()
    ft = optuna.load_study(study_name=f"{campaign.study_name}-finetune", storage=campaign.storage_url)
    trials = ft.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL] * 3  # all three were tried, none stopped the campaign
    assert all("diverged" in str(t.user_attrs.get("error", "")) or t.user_attrs.get("failed") for t in trials)
    assert len(result.finetuned) == 3 and result.finetuned["failed"].all() and result.best is None
    assert (tmp_path / "out" / "finetuned.csv").exists()
    # Running again does not retrain the diverged candidates: their failure is a result, not a crash.
    again = Campaign(
        space=TINY, dataset="digits", ghn=str(tiny_ghn), trials=30, top_k=3, finetune_epochs=1, sampler="random",
        out=tmp_path / "out", finetune_lr=1e12, progress=False,
    ).run()
    assert again.finetune_stats is not None and again.finetune_stats.finetuned == 0
    assert len(ft.get_trials(deepcopy=False)) == 3


# ------------------------------------------------------------------ graph JSON (library level)


def _graph(nodes: list[dict], *, version: int = 1, shape: list[int] | None = None) -> str:
    return json.dumps({"format_version": version, "input_shape": shape or [1, 8, 8], "nodes": nodes})


_IN = {"op": "input", "inputs": []}
_POOL_LIN = [{"op": "global_avg_pool", "inputs": [1]}, {"op": "linear", "inputs": [2], "attrs": {"out_features": 10}}]

BAD_GRAPHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cyclic": (_graph([_IN, {"op": "relu", "inputs": [0, 2]}, {"op": "relu", "inputs": [1]},
                       {"op": "global_avg_pool", "inputs": [2]}, {"op": "linear", "inputs": [3], "attrs": {"out_features": 10}},
                       {"op": "output", "inputs": [4]}]), ("cycle",)),
    "unknown-op": (_graph([_IN, {"op": "teleport", "inputs": [0]}, *_POOL_LIN, {"op": "output", "inputs": [3]}]),
                   ("teleport",)),
    "sum-of-mismatched-shapes": (_graph([_IN, {"op": "conv", "inputs": [0], "attrs": {"out_channels": 4, "kernel": 3}},
                                         {"op": "sum", "inputs": [0, 1]}, {"op": "global_avg_pool", "inputs": [2]},
                                         {"op": "linear", "inputs": [3], "attrs": {"out_features": 10}},
                                         {"op": "output", "inputs": [4]}]), ("node 2",)),
    "node-unreachable": (_graph([_IN, {"op": "relu", "inputs": [0]}, {"op": "global_avg_pool", "inputs": [0]},
                                 {"op": "linear", "inputs": [2], "attrs": {"out_features": 10}},
                                 {"op": "output", "inputs": [3]}]), ("node 1",)),
    "dangling-input": (_graph([_IN, {"op": "relu", "inputs": [7]}, *_POOL_LIN, {"op": "output", "inputs": [3]}]),
                       ("7",)),
    "no-output": (_graph([_IN, {"op": "relu", "inputs": [0]}, *_POOL_LIN]), ("output",)),
    "newer-format": (_graph([_IN, {"op": "relu", "inputs": [0]}, *_POOL_LIN, {"op": "output", "inputs": [3]}],
                            version=2), ("format version 2",)),
    "not-json": ("{nodes: [", ("parse",)),
    "empty": (_graph([]), ("empty",)),
}


@pytest.mark.parametrize("name", list(BAD_GRAPHS))
def test_bad_graph_json_raises_one_line_graph_error(name: str) -> None:
    from nas.graph import ArchGraph

    text, needles = BAD_GRAPHS[name]
    with pytest.raises(GraphError) as info:
        ArchGraph.from_json(text)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle.lower() in message.lower(), message
