"""Run the ``nas`` command line with test hooks that count and slow down units of work.

Used as ``python _hooked_nas.py ARGS...`` (same arguments as ``nas``) by the
reliability tests. The library has no work-counting hook of its own, so this
wrapper patches, in this process only:

* ``GHN.evaluate`` (one unit = one batch of candidates scored by the GHN),
* the ranker's short training of one label architecture (one unit = one label),
* ``train`` as imported by the fine-tuning stage and ``train_graph`` as
  imported by the ground-truth cache and the self-check (one unit = one
  network trained),
* the meta-training step iterator, checkpoint writer and resume
  (one unit = one meta-training step; checkpoints and resume points logged),
* ``torch.save`` (optionally slowed down half-way through the bytes, so that a
  kill lands in the middle of a checkpoint write).

Environment:
    NAS_TEST_WORK_LOG: file to which one JSON line per event is appended
        (``{"run", "pid", "kind", "event", ...}``); a single ``O_APPEND`` write
        per line keeps lines whole with several processes and across SIGKILL.
    NAS_TEST_RUN: label of this run in the log.
    NAS_TEST_UNIT_DELAY: seconds each unit sleeps after logging its start (so
        that a kill sent after the start line lands inside the unit).
    NAS_TEST_SLOW_SAVE: when ``1``, ``torch.save`` writes half the bytes,
        logs ``save/mid`` and sleeps ``NAS_TEST_UNIT_DELAY`` before the rest.
    NAS_TEST_FAKE_HOST: host name this process reports (``socket.gethostname``),
        so other processes cannot see that it died and must rely on heartbeats.
    NAS_TEST_BARRIER: ``FOLDER:N``; after its imports the process waits until N
        processes have arrived in FOLDER, so that concurrent workers start together.
    NAS_TEST_AFTER: ``RUN:KIND:EVENT``; then it also waits until the work log holds
        that event (e.g. ``w0:train:start``: another worker has claimed a trial).
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
import sys
import time
from typing import Any

LOG = os.environ.get("NAS_TEST_WORK_LOG")
RUN = os.environ.get("NAS_TEST_RUN", "0")
DELAY = float(os.environ.get("NAS_TEST_UNIT_DELAY", "0") or 0)
SLOW_SAVE = os.environ.get("NAS_TEST_SLOW_SAVE") == "1"
FAKE_HOST = os.environ.get("NAS_TEST_FAKE_HOST")


def emit(kind: str, event: str, **fields: Any) -> None:
    """Append one event line to the work log (no-op without ``NAS_TEST_WORK_LOG``)."""
    if not LOG:
        return
    record = {"run": RUN, "pid": os.getpid(), "kind": kind, "event": event, "t": time.time(), **fields}
    data = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _wrap_training(original: Any, graph_of: Any) -> Any:
    """Emit ``train`` start / done events around ``original(first, data, config, ...)``.

    ``graph_of(first)`` is the trained graph: the model's ``graph`` for ``train``, the argument for ``train_graph``.
    """
    @functools.wraps(original)
    def wrapped(first: Any, data: Any, config: Any = None, *args: Any, **kwargs: Any) -> Any:
        key, seed = getattr(graph_of(first), "key", None), getattr(config, "seed", None)
        emit("train", "start", key=key, seed=seed)
        if DELAY:
            time.sleep(DELAY)
        result = original(first, data, config, *args, **kwargs)
        emit("train", "done", key=key, seed=seed, val_acc=getattr(result, "val_acc", None),
             failed=getattr(result, "failed", None))
        return result

    return wrapped


def install() -> None:
    """Apply the patches (imports the package modules they touch)."""
    if FAKE_HOST:
        socket.gethostname = lambda: FAKE_HOST  # type: ignore[assignment]

    import importlib

    import torch

    # Fine-tuning calls `train`; ground truth and the self-check call `train_graph` (as imported by name there:
    # the ranker's labels, which also go through train_graph, are counted by their own hook below).
    for name in ("nas.campaign._finetune", "nas.campaign._selfcheck", "nas.evaluation.ground_truth"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "train"):
            module.train = _wrap_training(module.train, lambda model: getattr(model, "graph", None))
        if hasattr(module, "train_graph"):
            module.train_graph = _wrap_training(module.train_graph, lambda graph: graph)

    from nas.ghn import _meta_train
    from nas.ghn._model import GHN

    evaluate = GHN.evaluate

    @functools.wraps(evaluate)
    def hooked_evaluate(self: Any, graphs: Any, *args: Any, **kwargs: Any) -> Any:
        keys = [g.key for g in graphs]
        emit("ghn_eval", "start", keys=keys)
        if DELAY:
            time.sleep(DELAY)
        out = evaluate(self, graphs, *args, **kwargs)
        emit("ghn_eval", "done", keys=keys)
        return out

    GHN.evaluate = hooked_evaluate  # type: ignore[method-assign]

    from nas.ghn import _ranker

    label = _ranker._short_training_loss

    @functools.wraps(label)
    def hooked_label(args: Any) -> tuple[float, float]:
        from nas.graph import ArchGraph

        key = ArchGraph.from_json(args[0]).key
        emit("label", "start", key=key)
        if DELAY:
            time.sleep(DELAY)
        tse = label(args)
        emit("label", "done", key=key)
        return tse

    _ranker._short_training_loss = hooked_label

    step_batches = _meta_train._step_batches

    def hooked_step_batches(*args: Any, **kwargs: Any) -> Any:
        for idx in step_batches(*args, **kwargs):
            emit("meta", "step")
            if DELAY:
                time.sleep(DELAY)
            yield idx

    _meta_train._step_batches = hooked_step_batches

    write_checkpoint = _meta_train.write_checkpoint

    def hooked_write_checkpoint(path: Any, payload: dict[str, Any]) -> None:
        step = (payload.get("training") or {}).get("step")
        emit("ckpt", "start", step=step, path=str(path))
        write_checkpoint(path, payload)
        emit("ckpt", "done", step=step, path=str(path))

    _meta_train.write_checkpoint = hooked_write_checkpoint

    restore = _meta_train._State.restore.__func__  # type: ignore[attr-defined]

    def hooked_restore(cls: Any, *args: Any, **kwargs: Any) -> Any:
        state = restore(cls, *args, **kwargs)
        emit("meta", "resume", step=state.step)
        return state

    _meta_train._State.restore = classmethod(hooked_restore)  # type: ignore[assignment]

    if SLOW_SAVE:
        save = torch.save

        @functools.wraps(save)
        def slow_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            half = len(data) // 2
            handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
            try:
                handle.write(data[:half])
                handle.flush()
                emit("save", "mid", path=str(getattr(handle, "name", f)))
                if DELAY:
                    time.sleep(DELAY)
                handle.write(data[half:])
                handle.flush()
            finally:
                if handle is not f:
                    handle.close()

        torch.save = slow_save


def barrier(spec: str, timeout: float = 180.0) -> None:
    """Wait until ``N`` processes have called this with the same ``FOLDER:N``."""
    folder, _, count = spec.rpartition(":")
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < int(count) and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_for_event(run: str, kind: str, event: str, timeout: float = 600.0) -> None:
    """Wait until the work log holds an event ``kind/event`` of run ``run``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if LOG and os.path.exists(LOG):
            with open(LOG) as handle:
                for line in handle:
                    record = json.loads(line)
                    if (record["run"], record["kind"], record["event"]) == (run, kind, event):
                        return
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    install()
    if os.environ.get("NAS_TEST_BARRIER"):
        barrier(os.environ["NAS_TEST_BARRIER"])
    if os.environ.get("NAS_TEST_AFTER") and LOG:
        wait_for_event(*os.environ["NAS_TEST_AFTER"].split(":"))
    from nas.cli import main as nas_main

    emit("process", "start", argv=argv)
    code = nas_main(argv)
    emit("process", "exit", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
