"""Train, fine-tune and evaluate an ``nn.Module`` classifier on a :class:`~nas.data.Dataset`.

Training is plain SGD with (Nesterov) momentum, weight decay, optional gradient
clipping and a cosine or constant learning-rate schedule over a fixed budget of
steps. A run that produces a non-finite or exploding loss does not raise: it
returns a :class:`TrainResult` with ``failed=True``, so a search can record the
architecture as failed and go on.

Examples:
    >>> from torch import nn
    >>> from nas.data import load_dataset
    >>> data = load_dataset("digits")
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    >>> result = train(model, data, TrainConfig(epochs=1))
    >>> result.failed
    False
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler
from tqdm.auto import tqdm

from nas.data import Dataset

if TYPE_CHECKING:
    from nas.graph import ArchGraph

__all__ = ["MAX_SEED", "StepHook", "TrainConfig", "TrainResult", "check_seed", "evaluate", "train", "train_graph"]

logger = logging.getLogger(__name__)


#: Largest seed: every seed of the package (torch, NumPy, Optuna's samplers) takes [0, MAX_SEED].
MAX_SEED = 2**32 - 1


def check_seed(name: str, value: Any) -> int:
    """``value`` if it is an int in ``[0, MAX_SEED]``, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"`{name}` must be an integer in [0, {MAX_SEED}], but got {value!r}.")
    return value


def check_non_negative(name: str, value: Any) -> float:
    """``value`` if it is a finite number ``>= 0`` (a bool is not a number here), else a ``ValueError`` naming
    ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a non-negative number, but got {value!r}.")
    return value


def _cosine(optimizer: Optimizer, total_steps: int) -> LRScheduler:
    return CosineAnnealingLR(optimizer, T_max=total_steps)


def _constant(optimizer: Optimizer, total_steps: int) -> LRScheduler:
    return LambdaLR(optimizer, lambda _: 1.0)


_SCHEDULES: dict[str, Callable[[Optimizer, int], LRScheduler]] = {
    "cosine": _cosine,
    "constant": _constant,
}


@dataclass(kw_only=True)
class TrainConfig:
    """Settings of one training run.

    Args:
        epochs: Number of passes over the training split; may be fractional.
        steps: Number of optimisation steps; overrides ``epochs`` when given.
        batch_size: Images per step. An epoch is ``N_train // batch_size`` steps
            (the last partial batch is dropped; with fewer images than
            ``batch_size`` one step uses them all).
        lr: Peak learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        nesterov: Use Nesterov momentum (ignored when ``momentum`` is 0).
        schedule: Learning-rate schedule over the steps: ``"cosine"`` or ``"constant"``.
        grad_clip: Clip the gradient norm to this value; ``None`` disables clipping.
        label_smoothing: Label smoothing of the training loss, in ``[0, 1)``.
        seed: Seed of the global torch RNG (dropout, ...) and of the batch order.
        device: Device to train on, for example ``"cpu"`` or ``"cuda"``.
        progress: Show a tqdm progress bar.
        diverge_factor: The run fails when the loss exceeds ``diverge_factor``
            times the larger of the first step's loss and the chance-level loss
            ``log(num_classes)``, or is not finite.

    Raises:
        ValueError: If a setting is out of range or ``schedule`` is unknown.
    """

    epochs: float = 3
    steps: int | None = None
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "cosine"
    grad_clip: float | None = 5.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    diverge_factor: float = 1e3

    def __post_init__(self) -> None:
        positive: dict[str, float | None] = {
            "epochs": self.epochs,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "grad_clip": self.grad_clip,
            "diverge_factor": self.diverge_factor,
        }
        for name, value in positive.items():
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"`{name}` must be positive, but got {value!r}.")
            if value is not None and not math.isfinite(value):
                raise ValueError(f"`{name}` must be finite, but got {value!r}.")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"`{name}` must be an integer, but got {value!r}.")
        check_seed("seed", self.seed)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), but got {self.momentum!r}.")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"`weight_decay` must be non-negative, but got {self.weight_decay!r}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"`label_smoothing` must be in [0, 1), but got {self.label_smoothing!r}."
            )
        if self.schedule not in _SCHEDULES:
            raise ValueError(
                f"`schedule` must be one of {sorted(_SCHEDULES)}, but got {self.schedule!r}."
            )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"`device` is not a valid torch device: {self.device!r}.") from exc


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    When the loss became non-finite or exploded, ``failed`` is True, ``error`` says
    why and all metrics are ``nan``; ``train_losses`` and ``steps`` still record
    the steps that ran.

    Args:
        val_loss: Mean cross-entropy on the validation split.
        val_acc: Accuracy on the validation split.
        test_loss: Mean cross-entropy on the test split.
        test_acc: Accuracy on the test split.
        train_loss: Mean training loss over the last epoch (over the last 10% of
            steps when a step budget was given).
        train_losses: Loss of every step.
        steps: Number of steps taken.
        wall_time: Seconds spent training and evaluating.
        failed: Whether the run diverged.
        error: Why the run failed, or ``None``.
        stopped: Whether ``on_step`` stopped the run before its budget (its
            metrics are those of the network at that step).
    """

    val_loss: float
    val_acc: float
    test_loss: float
    test_acc: float
    train_loss: float
    train_losses: list[float] = field(repr=False)
    steps: int
    wall_time: float
    failed: bool = False
    error: str | None = None
    stopped: bool = False

    def to_dict(self, *, include_losses: bool = False) -> dict[str, Any]:
        """Return the result as a flat dict, for a table row or JSON.

        Args:
            include_losses: Include the per-step ``train_losses`` list.

        Returns:
            The fields by name.
        """
        out = dataclasses.asdict(self)
        if not include_losses:
            del out["train_losses"]
        return out


def _batches(
    num_samples: int, batch_size: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """Yield index batches forever, reshuffling at each epoch and dropping the rest."""
    size = min(batch_size, num_samples)
    while True:
        order = torch.randperm(num_samples, generator=generator)
        for start in range(0, num_samples - size + 1, size):
            yield order[start : start + size]


def _load_params(model: nn.Module, params: dict[str, Tensor]) -> None:
    state = model.state_dict()
    unknown = sorted(set(params) - set(state))
    if unknown:
        raise ValueError(
            f"`params` has keys that the model does not have: {unknown[:5]}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            + "."
        )
    for key, value in params.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise ValueError(
                f"`params[{key!r}]` must have shape {tuple(state[key].shape)}, "
                f"but got {tuple(value.shape)}."
            )
    with torch.no_grad():
        model.load_state_dict({k: v.detach() for k, v in params.items()}, strict=False)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 512,
    device: str = "cpu",
) -> tuple[float, float]:
    """Return the mean cross-entropy and the accuracy of a classifier.

    The model is put in eval mode (and moved to ``device``) for the evaluation
    and back in its previous mode afterwards; no gradients are computed.

    Shapes:
        - **x**: :math:`(N, C, H, W)` (or any shape the model takes, batched on dim 0)
        - **y**: :math:`(N,)` class indices

    Args:
        model: A classifier returning logits of shape ``(N, num_classes)``.
        x: Inputs.
        y: Labels.
        batch_size: Inputs per forward pass.
        device: Device to evaluate on.

    Returns:
        ``(loss, accuracy)``; both ``nan`` when ``x`` is empty.

    Raises:
        ValueError: If ``batch_size`` is not positive or ``x`` and ``y`` differ in length.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, but got {batch_size}.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`x` and `y` must hold as many samples, but got {x.shape[0]} and {y.shape[0]}."
        )
    N = x.shape[0]  # samples
    if N == 0:
        return math.nan, math.nan
    was_training = model.training
    model.to(device).eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for start in range(0, N, batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            yb = y[start : start + batch_size].to(device, non_blocking=True)
            logits = model(xb)
            total_loss += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            correct += (logits.argmax(dim=1) == yb).sum()
    finally:
        model.train(was_training)
    return total_loss.item() / N, correct.item() / N


#: Called after each optimizer step with ``(steps taken, model)``; ``True`` stops training (see :func:`train`).
StepHook = Callable[[int, nn.Module], bool]


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig | None = None,
    *,
    params: dict[str, Tensor] | None = None,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train a classifier in place, then evaluate it on the validation and test splits.

    The run is repeatable on CPU: the global torch RNG is seeded with
    ``config.seed`` before training, and batches are drawn with a generator seeded
    the same way. A non-finite or exploding loss stops training and returns a
    result with ``failed=True`` instead of raising.

    Args:
        model: A classifier taking ``(B, C, H, W)`` images and returning
            ``(B, num_classes)`` logits. It is moved to ``config.device`` and
            trained in place.
        data: The dataset.
        config: Training settings; defaults to ``TrainConfig()``.
        params: Tensors to copy into the model before training, by
            ``state_dict`` key (for example weights predicted by a hypernetwork).
            Keys not given keep their current values.
        on_step: Called after every optimizer step with the number of steps
            taken so far and the model (in training mode); returning ``True``
            stops training there (the result then has ``stopped=True``). A
            hook that evaluates the model (:func:`evaluate`) leaves the run
            unchanged: evaluation draws no random numbers. Multi-fidelity
            search reports intermediate accuracies to its pruner this way.

    Returns:
        The metrics of the run.

    Raises:
        ValueError: If ``params`` has a key the model lacks or a tensor of the wrong shape.
    """
    config = config or TrainConfig()
    device = torch.device(config.device)
    if params is not None:
        _load_params(model, params)
    model.to(device)

    N = data.x_train.shape[0]  # training images
    steps_per_epoch = max(1, N // config.batch_size)
    if config.steps is not None:
        total_steps = config.steps
        window = max(1, math.ceil(0.1 * total_steps))
    else:
        total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
        window = steps_per_epoch

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov and config.momentum > 0,
    )
    scheduler = _SCHEDULES[config.schedule](optimizer, total_steps)
    chance_loss = math.log(max(data.num_classes, 2))

    start_time = time.perf_counter()
    losses: list[float] = []
    steps_done = 0
    error: str | None = None
    stopped = False
    threshold = math.inf
    model.train()
    batches = _batches(N, config.batch_size, generator)
    with tqdm(
        total=total_steps, disable=not config.progress, desc="train", unit="step", leave=False
    ) as bar:
        for step in range(total_steps):
            idx = next(batches)
            xb = data.x_train[idx].to(device, non_blocking=True)
            yb = data.y_train[idx].to(device, non_blocking=True)
            logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=config.label_smoothing)
            value = loss.item()
            losses.append(value)
            if step == 0 and math.isfinite(value):
                threshold = config.diverge_factor * max(value, chance_loss)
            if not math.isfinite(value) or value > threshold:
                error = (
                    f"training diverged at step {step + 1}/{total_steps}: loss {value:.4g}"
                    + ("" if not math.isfinite(value) else f" > {threshold:.4g}")
                )
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            steps_done += 1
            bar.update()
            if step % 10 == 0 or step == total_steps - 1:
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if on_step is not None and on_step(steps_done, model) and steps_done < total_steps:
                stopped = True
                break

    if error is None:
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, device=config.device)
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, device=config.device)
        if not (math.isfinite(val_loss) and math.isfinite(test_loss)):
            error = f"evaluation produced a non-finite loss (val {val_loss}, test {test_loss})"
    if error is not None:
        logger.warning("%s", error)
        return TrainResult(
            val_loss=math.nan,
            val_acc=math.nan,
            test_loss=math.nan,
            test_acc=math.nan,
            train_loss=math.nan,
            train_losses=losses,
            steps=steps_done,
            wall_time=time.perf_counter() - start_time,
            failed=True,
            error=error,
        )

    result = TrainResult(
        val_loss=val_loss,
        val_acc=val_acc,
        test_loss=test_loss,
        test_acc=test_acc,
        train_loss=sum(losses[-window:]) / len(losses[-window:]),
        train_losses=losses,
        steps=steps_done,
        wall_time=time.perf_counter() - start_time,
        stopped=stopped,
    )
    logger.info(
        "trained %d steps in %.1fs: train loss %.4f, val acc %.4f, test acc %.4f",
        result.steps,
        result.wall_time,
        result.train_loss,
        result.val_acc,
        result.test_acc,
    )
    return result


#: The evaluation splits :func:`train_graph` can keep.
Split = Literal["val", "test"]


def train_graph(
    graph: ArchGraph,
    data: Dataset,
    config: TrainConfig | None = None,
    *,
    evaluate_on: tuple[Split, ...] = ("val", "test"),
    model_out: list[nn.Module] | None = None,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train one architecture from a random initialisation seeded with ``config.seed``.

    The one seeded run behind ground truth, ranker labels and the short-training
    scorer: the network is built under ``torch.manual_seed(config.seed)`` and
    trained with :func:`train`; the caller's global torch RNG is restored
    afterwards, so two calls with one seed give the same result.

    Args:
        graph: The architecture.
        data: The dataset.
        config: Training settings (budget, seed, device); defaults to ``TrainConfig()``.
        evaluate_on: The evaluation splits whose metrics the caller uses. A split
            left out is cut to one example, so evaluating it costs nothing (its
            metrics in the result then mean nothing).
        model_out: When given, the trained network is appended to it (for a
            caller that saves the weights).
        on_step: Called after every optimizer step; ``True`` stops training (see :func:`train`).

    Returns:
        The metrics of the run (``failed=True`` when training diverged).

    Raises:
        ValueError: If ``evaluate_on`` names a split other than ``"val"`` and ``"test"``.
    """
    from nas.network import Network  # nas.network builds on nas.ops; training stays model-agnostic

    unknown = set(evaluate_on) - {"val", "test"}
    if unknown:
        raise ValueError(f"`evaluate_on` may hold 'val' and 'test', but got {evaluate_on!r}.")
    config = config or TrainConfig()
    if set(evaluate_on) != {"val", "test"}:
        data = dataclasses.replace(
            data,
            x_val=data.x_val if "val" in evaluate_on else data.x_val[:1],
            y_val=data.y_val if "val" in evaluate_on else data.y_val[:1],
            x_test=data.x_test if "test" in evaluate_on else data.x_test[:1],
            y_test=data.y_test if "test" in evaluate_on else data.y_test[:1],
        )
    # With a split cut to one example, the trainer's closing log line would report its accuracy on that one
    # example (e.g. "val acc 1.0000, test acc 0.0000"), which reads as a result: it is left out.
    quiet = set(evaluate_on) != {"val", "test"} and logger.level < logging.WARNING
    level = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = Network(graph)
            result = train(model, data, config, on_step=on_step)
    finally:
        if quiet:
            logger.setLevel(level)
    if model_out is not None:
        model_out.append(model)
    return result
