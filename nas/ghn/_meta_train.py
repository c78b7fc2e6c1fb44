"""Meta-training a GHN on architectures sampled from a search space.

Each step samples ``meta_batch`` architectures from the space (random
sampling, never a held-out one), predicts all their weights in one batched
forward pass, runs every network on the same batch of training images in
train mode (batch-norm with batch statistics, as GHN-2) and backpropagates the
mean cross-entropy into the GHN (AdamW, gradient clipping, warmup + cosine
schedule). Every ``eval_every`` steps, the mean validation accuracy of the
held-out architectures with predicted weights is logged, with Kendall's tau
against reference losses when given, and the whole state (model, optimizer,
scheduler, step, random generators) is written atomically to the checkpoint;
running the same call again resumes from it.

Data-parallel: under ``torch.distributed`` (``torchrun --nproc-per-node N -m nas
train-ghn ...``; the command starts the process group, ``gloo`` on CPU and
``nccl`` on GPU) every process samples the same meta-batch and the same images,
runs its own share of the architectures (``graphs[rank::world]``), and the
gradients are summed over processes before the optimiser step, so the update
is that of one process on the whole meta-batch. Rank 0 alone evaluates, logs
and writes checkpoints; every process resumes from the same checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.stats import kendalltau
from torch.func import functional_call
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from nas.exceptions import CheckpointError, SpaceError
from nas.ghn._checkpoint import read_checkpoint, write_checkpoint
from nas.ghn._identity import check_identity, identity
from nas.ghn._model import GHN, GHNConfig
from nas.graph import ArchGraph

if TYPE_CHECKING:
    from nas.data import Dataset
    from nas.space import SearchSpace

__all__ = ["MetaTrainConfig", "meta_train", "snapshot_path"]

logger = logging.getLogger(__name__)

_SCHEDULES = ("cosine", "constant")
_AMP = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Settings that may change when a run is resumed (everything else must match the checkpoint).
_RESUMABLE = frozenset({"steps", "eval_every", "device"})


@dataclasses.dataclass(kw_only=True)
class MetaTrainConfig:
    """Settings of :func:`meta_train`. The defaults are the recipe for nb201 on mnist5k.

    Args:
        steps: Optimisation steps.
        meta_batch: Architectures sampled per step.
        batch_size: Training images per step (shared by the step's architectures).
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        grad_clip: Clip the GHN's gradient norm to this; ``None`` disables clipping.
        schedule: ``"cosine"`` (linear warmup, then cosine decay to 0) or
            ``"constant"`` (linear warmup, then constant).
        warmup_steps: Steps of linear warmup.
        eval_every: Evaluate the held-out architectures and checkpoint every
            this many steps (and after the last step).
        num_held_out: Architectures sampled (with ``held_out_seed``) and held out
            of training for validation.
        held_out_seed: Seed of the held-out sample.
        bn_images: Training images used for batch-norm statistics when the
            held-out architectures are evaluated.
        seed: Seed of the GHN's initialisation, of architecture sampling and of
            the image batches.
        device: Device to train on.
        amp: ``None``, ``"bf16"`` or ``"fp16"``: autocast precision of the forward pass.
        max_tries: Draws allowed to find one architecture that is not held out.
        snapshot_every: Also keep a frozen copy of the GHN every this many steps
            (next to ``out``, see :func:`snapshot_path`); 0 keeps none.

    Raises:
        ValueError: A setting is out of range.
    """

    steps: int = 1200
    meta_batch: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-5
    grad_clip: float | None = 5.0
    schedule: str = "cosine"
    warmup_steps: int = 100
    eval_every: int = 300
    num_held_out: int = 32
    held_out_seed: int = 20_211_206
    bn_images: int = 256
    seed: int = 0
    device: str = "cpu"
    amp: str | None = None
    max_tries: int = 1000
    snapshot_every: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "meta_batch", "batch_size", "eval_every", "bn_images", "max_tries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, but got {value!r}.")
        for name in ("warmup_steps", "num_held_out", "held_out_seed", "seed", "snapshot_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, but got {value!r}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"`lr` must be positive, but got {self.lr!r}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"`weight_decay` must be non-negative, but got {self.weight_decay!r}.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"`grad_clip` must be positive or None, but got {self.grad_clip!r}.")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"`schedule` must be one of {_SCHEDULES}, but got {self.schedule!r}.")
        if self.amp not in _AMP:
            raise ValueError(f"`amp` must be None, 'bf16' or 'fp16', but got {self.amp!r}.")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"`device` is not a valid torch device: {self.device!r}.") from err


def _lr_factor(steps: int, warmup: int, schedule: str) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _sample_held_out(space: SearchSpace, n: int, seed: int) -> list[ArchGraph]:
    """``n`` distinct architectures drawn with ``seed`` (fewer if the space is smaller)."""
    size = space.size()
    if size is not None and n >= size:
        logger.warning("space %r has %d architectures; holding out %d of them, not %d.", space.name, size,
                       max(size - 1, 0), n)
        n = max(size - 1, 0)
    if n == 0:
        return []
    found: list[ArchGraph] = []
    try:
        for cand in space.iter_samples(n, seed=seed):
            found.append(cand.graph)
    except SpaceError:  # the space has fewer: keep what the draws found, leave at least one to train on
        found = found[: max(0, len(found) - 1)]
        logger.warning("space %r gave only %d distinct architectures for %d held-out ones; holding out %d.",
                       space.name, len(found) + 1, n, len(found))
    return found


def _sample_training(space: SearchSpace, rng: np.random.Generator, exclude: set[str], tries: int) -> ArchGraph:
    for _ in range(tries):
        graph = space.sample(rng).graph
        if graph.key not in exclude:
            return graph
    raise SpaceError(
        f"space {space.name!r}: {tries} draws in a row were held-out architectures; hold out fewer (num_held_out)."
    )


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP[amp])


def _world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_processes(ghn: GHN) -> None:
    """Sum every gradient of ``ghn`` over the processes (a parameter unused by one process counts as 0).

    The gradients travel as one flat buffer: one collective call per step, not one per tensor.
    """
    params = list(ghn.parameters())
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # (total parameters,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _evaluate(
    ghn: GHN,
    data: Dataset,
    held_out: Sequence[ArchGraph],
    reference: Sequence[tuple[ArchGraph, float]],
    config: MetaTrainConfig,
) -> dict[str, float]:
    was_training = ghn.training
    ghn.eval()
    out: dict[str, float] = {}
    if held_out:
        res = ghn.evaluate(held_out, data, bn_images=config.bn_images, device=config.device)
        out["held_out_acc"] = float(np.nanmean([r["acc"] for r in res]))
        out["held_out_loss"] = float(np.nanmean([r["loss"] for r in res]))
    if reference:
        res = ghn.evaluate([g for g, _ in reference], data, bn_images=config.bn_images, device=config.device)
        if len(reference) >= 2:
            tau = kendalltau([r["loss"] for r in res], [loss for _, loss in reference], nan_policy="omit").statistic
            out["tau"] = float(tau)
    ghn.train(was_training)
    return out


class _State:
    """Everything meta-training carries from step to step (and into checkpoints)."""

    def __init__(self, ghn: GHN, config: MetaTrainConfig) -> None:
        self.ghn = ghn
        self.optimizer = AdamW(ghn.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = LambdaLR(self.optimizer, _lr_factor(config.steps, config.warmup_steps, config.schedule))
        self.sampler_rng = np.random.default_rng(config.seed)
        self.batch_rng = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.elapsed = 0.0
        self.loss_ema = math.nan
        self.loss_sum, self.loss_count = 0.0, 0
        self.held_out: list[ArchGraph] = []

    def payload(self, config: MetaTrainConfig, extra_held_out: Sequence[ArchGraph]) -> dict[str, Any]:
        payload = self.ghn.checkpoint_payload()
        payload["training_state"] = {"step": self.step, "steps": config.steps, "elapsed": self.elapsed}
        payload["training"] = {
            "config": dataclasses.asdict(config),
            "step": self.step,
            "elapsed": self.elapsed,
            "loss_ema": self.loss_ema,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler_rng": self.sampler_rng.bit_generator.state,
            "batch_rng": self.batch_rng.get_state(),
            "held_out": [g.to_json() for g in self.held_out],
        }
        return payload

    @classmethod
    def restore(
        cls, path: Path, config: MetaTrainConfig, ghn_config: GHNConfig | None, space: SearchSpace, data: Dataset
    ) -> _State:
        payload = read_checkpoint(path)
        training = payload.get("training")
        if not isinstance(training, dict):
            raise CheckpointError(
                f"GHN checkpoint {str(path)!r} holds no meta-training state to resume; pass resume=False "
                "(--no-resume) to start over or choose another path."
            )
        check_identity(payload["space_info"], space, data, where=f"GHN checkpoint {str(path)!r}")
        if ghn_config is not None and not _same(payload["config"], dataclasses.asdict(ghn_config)):
            raise CheckpointError(
                f"GHN checkpoint {str(path)!r} has GHN settings {payload['config']}, not "
                f"{dataclasses.asdict(ghn_config)}; pass resume=False (--no-resume) or choose another path."
            )
        saved = training.get("config", {})
        mine = dataclasses.asdict(config)
        differ = sorted(k for k in mine if k not in _RESUMABLE and not _same(saved.get(k), mine[k]))
        if differ:
            diffs = ", ".join(f"{k} {saved.get(k)!r} vs {mine[k]!r}" for k in differ)
            raise CheckpointError(
                f"GHN checkpoint {str(path)!r} was meta-trained with other settings ({diffs}); "
                "pass resume=False (--no-resume) or choose another path."
            )
        ghn = GHN.from_payload(payload, path=path).to(config.device)
        state = cls(ghn, config)
        try:
            state.optimizer.load_state_dict(training["optimizer"])
            state.scheduler.load_state_dict(training["scheduler"])
            state.sampler_rng.bit_generator.state = training["sampler_rng"]
            state.batch_rng.set_state(training["batch_rng"])
            state.held_out = [ArchGraph.from_json(text) for text in training["held_out"]]
            state.step = int(training["step"])
            state.elapsed = float(training.get("elapsed", 0.0))
            state.loss_ema = float(training.get("loss_ema", math.nan))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"GHN checkpoint {str(path)!r} has a damaged training state: {err}") from None
        return state


def _step_batches(data: Dataset, config: MetaTrainConfig, generator: torch.Generator) -> Iterator[torch.Tensor]:
    N = data.x_train.shape[0]  # training images
    while True:
        yield torch.randint(N, (min(config.batch_size, N),), generator=generator)


def snapshot_path(path: str | Path, step: int) -> Path:
    """Where ``meta_train`` keeps the snapshot of step ``step`` of the checkpoint ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.step{step:06d}{path.suffix}")


def meta_train(
    space: SearchSpace,
    data: Dataset,
    config: MetaTrainConfig | None = None,
    *,
    ghn_config: GHNConfig | None = None,
    out: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    held_out: Sequence[ArchGraph] = (),
    reference: Sequence[tuple[ArchGraph, float]] = (),
) -> GHN:
    """Meta-train a GHN on architectures sampled from ``space``.

    Args:
        space: The search space; its input shape and classes must match ``data``.
        data: The dataset (training images for steps, validation for evaluations).
        config: Meta-training settings (default: the nb201/mnist5k recipe).
        ghn_config: Model settings (default :class:`GHNConfig`; on resume, the
            checkpoint's when not given).
        out: Checkpoint file, written atomically every ``eval_every`` steps and
            at the end.
        resume: Continue from ``out`` when it exists; ``False`` starts over.
        progress: Show a tqdm bar with the loss and architectures per second.
        held_out: Extra architectures never sampled for training and evaluated
            with the sampled held-out ones.
        reference: ``(graph, trained val loss)`` pairs; every evaluation logs
            Kendall's tau between their predicted-weight and reference losses.
            They are never sampled for training either.

    Returns:
        The meta-trained GHN in eval mode, with ``history`` (one record per
        evaluation) and ``training_state`` set.

    Raises:
        ValueError: The space and dataset disagree on input shape or classes.
        CheckpointError: ``out`` cannot be resumed (corrupt, or written with
            other settings).
    """
    config = config or MetaTrainConfig()
    rank, world = _world()
    if config.meta_batch < world:
        raise ValueError(f"`meta_batch` ({config.meta_batch}) must be at least the number of processes ({world}): "
                         "each process meta-trains on its share of every meta-batch.")
    if tuple(space.input_shape) != tuple(data.input_shape) or space.num_classes != data.num_classes:
        raise ValueError(
            f"space {space.name!r} is for input {tuple(space.input_shape)} with {space.num_classes} classes, "
            f"but dataset {data.name!r} has {tuple(data.input_shape)} with {data.num_classes}."
        )
    space.check_choices()  # what a study would refuse later is refused before the meta-training
    device = torch.device(config.device)
    space_info = identity(space, data)
    path = Path(out) if out is not None else None

    if path is not None and resume and path.exists():
        state = _State.restore(path, config, ghn_config, space, data)
        logger.info("resuming meta-training from %s at step %d/%d", path, state.step, config.steps)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            ghn = GHN(ghn_config or GHNConfig(), space_info=space_info)
        state = _State(ghn.to(device), config)
        state.held_out = _sample_held_out(space, config.num_held_out, config.held_out_seed)
    ghn = state.ghn
    extra = [g for g in held_out if g.key not in {h.key for h in state.held_out}]
    evaluate_on = [*state.held_out, *extra]
    exclude = {g.key for g in evaluate_on} | {g.key for g, _ in reference}
    if state.step > 0 and not exclude <= set(ghn.held_out_keys):
        raise CheckpointError(
            f"GHN checkpoint {str(path)!r} did not hold out all the given held-out/reference architectures "
            "(it may have trained on them); pass resume=False (--no-resume) or choose another path."
        )
    ghn.held_out_keys = sorted(exclude)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    batches = _step_batches(data, config, state.batch_rng)
    if rank == 0:
        logger.info(
            "meta-training a GHN of %d parameters on %s / %s: %d steps of %d architectures x %d images, %d held "
            "out%s", ghn.num_parameters(), space.name, data.name, config.steps, config.meta_batch, config.batch_size,
            len(evaluate_on), f"; {world} processes, {math.ceil(config.meta_batch / world)} architectures each"
            if world > 1 else "",
        )
    progress = progress and rank == 0
    path = path if rank == 0 else None  # rank 0 alone writes checkpoints

    ghn.train()
    session_start, session_steps = time.perf_counter(), 0
    last_time = session_start
    skipped = 0
    with tqdm(total=config.steps, initial=min(state.step, config.steps), desc="meta-train", unit="step",
              disable=not progress, dynamic_ncols=True) as bar:
        while state.step < config.steps:
            graphs = [
                _sample_training(space, state.sampler_rng, exclude, config.max_tries) for _ in range(config.meta_batch)
            ]
            idx = next(batches)
            xb, yb = data.x_train[idx].to(device), data.y_train[idx].to(device)
            mine = graphs[rank::world]  # this process's share of the meta-batch
            with _autocast(device, config.amp):
                predicted = ghn.predict(mine)
                losses = []
                for graph, params in zip(mine, predicted):
                    net = ghn.network(graph, device).train()
                    losses.append(F.cross_entropy(functional_call(net, params, (xb,)).float(), yb))
                # The share's part of the meta-batch mean: summed over processes, the mean of all of it.
                loss = torch.stack(losses).mean() if world == 1 else torch.stack(losses).sum() / len(graphs)
            state.optimizer.zero_grad(set_to_none=True)
            total = loss.detach().float().clone()
            if world > 1:
                dist.all_reduce(total, op=dist.ReduceOp.SUM)  # every process decides on the same value
            value = total.item()
            if math.isfinite(value):
                scaler.scale(loss).backward()
                if world > 1:
                    _sum_over_processes(ghn)
                if config.grad_clip is not None:
                    scaler.unscale_(state.optimizer)
                    torch.nn.utils.clip_grad_norm_(ghn.parameters(), config.grad_clip)
                scaler.step(state.optimizer)
                scaler.update()
                state.loss_ema = value if math.isnan(state.loss_ema) else 0.9 * state.loss_ema + 0.1 * value
                state.loss_sum, state.loss_count = state.loss_sum + value, state.loss_count + 1
            else:
                skipped += 1
                logger.warning("step %d: non-finite meta-training loss %s; step skipped", state.step + 1, value)
            state.scheduler.step()
            state.step += 1
            if path is not None and config.snapshot_every and state.step % config.snapshot_every == 0:
                # Frozen copies along the run, for checkpoint-ensemble and meta-training-speed scores.
                ghn.training_state = {"step": state.step, "steps": config.steps, "elapsed": state.elapsed}
                ghn.save(snapshot_path(path, state.step))
            session_steps += 1
            now = time.perf_counter()
            state.elapsed += now - last_time
            last_time = now
            bar.update()
            bar.set_postfix(
                loss=f"{state.loss_ema:.3f}",
                archs_s=f"{config.meta_batch * session_steps / max(now - session_start, 1e-9):.1f}",
                refresh=False,
            )
            if rank == 0 and (state.step % config.eval_every == 0 or state.step == config.steps):
                mean_loss = state.loss_sum / state.loss_count if state.loss_count else math.nan
                state.loss_sum, state.loss_count = 0.0, 0
                record: dict[str, Any] = {"step": state.step, "train_loss": mean_loss}
                record.update(_evaluate(ghn, data, evaluate_on, reference, config))
                now = time.perf_counter()
                state.elapsed += now - last_time
                last_time = now
                record["elapsed"] = state.elapsed
                ghn.history.append(record)
                logger.info(
                    "step %d/%d: train loss %.4f, held-out acc %s, tau %s, %.0fs",
                    state.step, config.steps, mean_loss,
                    f"{record['held_out_acc']:.4f}" if "held_out_acc" in record else "-",
                    f"{record['tau']:.3f}" if "tau" in record else "-", state.elapsed,
                )
                ghn.training_state = {"step": state.step, "steps": config.steps, "elapsed": state.elapsed}
                if path is not None:
                    write_checkpoint(path, state.payload(config, extra))
    if skipped:
        logger.warning("%d of %d steps were skipped for a non-finite loss.", skipped, session_steps)
    ghn.training_state = {"step": state.step, "steps": config.steps, "elapsed": state.elapsed}
    return ghn.eval()
