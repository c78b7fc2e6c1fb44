from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from nas.data import Dataset, load_dataset
from nas.training import TrainConfig, TrainResult, check_non_negative, evaluate, train


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


class MulNaN(nn.Module):
    """Multiplies its input by NaN, so every loss is NaN."""

    def forward(self, x: Tensor) -> Tensor:
        return x * float("nan")


class Counter(nn.Module):
    """Identity that counts its calls in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.calls += 1
        return x


# --------------------------------------------------------------------------- #
# Learning and repeatability
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("factory", [mlp, cnn], ids=["mlp", "cnn"])
def test_learns_digits(digits: Dataset, factory: Callable[[], nn.Module]) -> None:
    model = factory()
    result = train(model, digits, TrainConfig(epochs=2))
    assert not result.failed and result.error is None
    assert result.val_acc > 0.7 and result.test_acc > 0.7  # chance is 0.1; seen >= 0.85
    assert result.val_loss < math.log(10)
    assert result.train_losses[-1] < result.train_losses[0]
    assert result.steps == 2 * (len(digits.y_train) // 64) == len(result.train_losses)
    assert result.wall_time > 0
    # The returned metrics are those of the trained model.
    loss, acc = evaluate(model, digits.x_val, digits.y_val)
    assert loss == pytest.approx(result.val_loss) and acc == pytest.approx(result.val_acc)


def test_same_seed_same_result(digits: Dataset) -> None:
    config = TrainConfig(steps=15, seed=3)
    first, second = mlp(), mlp()
    a, b = train(first, digits, config), train(second, digits, config)
    assert a.train_losses == b.train_losses
    assert (a.val_loss, a.val_acc, a.test_loss, a.test_acc) == (
        b.val_loss,
        b.val_acc,
        b.test_loss,
        b.test_acc,
    )
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)


def test_other_seed_other_batches(digits: Dataset) -> None:
    a = train(mlp(), digits, TrainConfig(steps=10, seed=0))
    b = train(mlp(), digits, TrainConfig(steps=10, seed=1))
    assert a.train_losses[0] != b.train_losses[0]


def test_train_loss_is_mean_of_last_epoch(digits: Dataset) -> None:
    result = train(mlp(), digits, TrainConfig(epochs=2))
    per_epoch = len(digits.y_train) // 64
    assert result.train_loss == pytest.approx(sum(result.train_losses[-per_epoch:]) / per_epoch)
    result = train(mlp(), digits, TrainConfig(steps=20))
    assert result.train_loss == pytest.approx(sum(result.train_losses[-2:]) / 2)


# --------------------------------------------------------------------------- #
# Budgets and schedules
# --------------------------------------------------------------------------- #


def test_steps_budget_overrides_epochs(digits: Dataset) -> None:
    counter = Counter()
    model = nn.Sequential(counter, nn.Flatten(), nn.Linear(64, 10))
    result = train(model, digits, TrainConfig(epochs=5, steps=7))
    assert result.steps == 7 and len(result.train_losses) == 7
    assert counter.calls == 7


def test_fractional_epochs(digits: Dataset) -> None:
    result = train(mlp(), digits, TrainConfig(epochs=0.5, batch_size=100))
    assert result.steps == math.ceil(0.5 * (len(digits.y_train) // 100))


def test_batch_larger_than_training_set() -> None:
    small = load_dataset("digits", max_train=10)
    result = train(mlp(), small, TrainConfig(epochs=3, batch_size=64))
    assert result.steps == 3 and not result.failed


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_schedules_and_options(digits: Dataset, schedule: str) -> None:
    config = TrainConfig(
        steps=10,
        schedule=schedule,
        grad_clip=None,
        label_smoothing=0.1,
        momentum=0.0,
        nesterov=True,
        progress=True,
    )
    result = train(mlp(), digits, config)
    assert not result.failed and result.steps == 10


def test_cosine_decays_learning_rate_to_zero(digits: Dataset) -> None:
    # With a cosine schedule the last step uses a learning rate near zero,
    # so the weights barely move on it; check through the lr the optimizer saw.
    lrs: list[float] = []

    class Spy(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x

    model = nn.Sequential(Spy(), nn.Flatten(), nn.Linear(64, 10))
    original_step = torch.optim.SGD.step

    def step(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        lrs.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.SGD, "step", step)
        train(model, digits, TrainConfig(steps=10, lr=0.1))
    assert len(lrs) == 10
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * 9 / 10)) / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


# --------------------------------------------------------------------------- #
# Failures are results, not exceptions
# --------------------------------------------------------------------------- #


def assert_failed(result: TrainResult) -> None:
    assert result.failed
    assert result.error is not None and "diverged" in result.error
    for metric in ("val_loss", "val_acc", "test_loss", "test_acc", "train_loss"):
        assert math.isnan(getattr(result, metric))


def test_nan_model_fails_without_raising(digits: Dataset) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), MulNaN())
    result = train(model, digits, TrainConfig(steps=5))
    assert_failed(result)
    assert result.steps == 0 and len(result.train_losses) == 1


def test_huge_learning_rate_fails_without_raising(digits: Dataset) -> None:
    result = train(mlp(), digits, TrainConfig(steps=50, lr=1e6, grad_clip=None))
    assert_failed(result)
    assert result.steps < 50


def test_diverge_factor(digits: Dataset) -> None:
    # With a small factor the run stops on a finite but exploding loss.
    strict = train(mlp(), digits, TrainConfig(steps=50, lr=1e6, diverge_factor=2.0))
    assert_failed(strict)
    assert "loss" in str(strict.error) and ">" in str(strict.error)


def test_to_dict(digits: Dataset) -> None:
    result = train(mlp(), digits, TrainConfig(steps=3))
    row = result.to_dict()
    assert "train_losses" not in row
    assert row["steps"] == 3 and row["failed"] is False and row["error"] is None
    assert set(row) == {
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "train_loss",
        "steps",
        "wall_time",
        "failed",
        "error",
        "stopped",
    }
    assert result.to_dict(include_losses=True)["train_losses"] == result.train_losses


# --------------------------------------------------------------------------- #
# Loading parameters before training
# --------------------------------------------------------------------------- #


def test_params_are_copied_in(digits: Dataset) -> None:
    trained = mlp(seed=1)
    train(trained, digits, TrainConfig(epochs=2))
    params = {k: v.clone() for k, v in trained.state_dict().items()}
    fresh = mlp(seed=2)
    # lr tiny and no weight decay: the copied weights are (almost) kept.
    config = TrainConfig(steps=1, lr=1e-12, weight_decay=0.0)
    result = train(fresh, digits, config, params=params)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, params[key])
    loss, acc = evaluate(trained, digits.x_val, digits.y_val)
    assert result.val_acc == pytest.approx(acc, abs=1e-6) and acc > 0.5


def test_partial_params_keep_other_weights(digits: Dataset) -> None:
    model = mlp(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {"3.bias": torch.full((10,), 0.5, requires_grad=True)}
    train(model, digits, TrainConfig(steps=1, lr=1e-12, weight_decay=0.0), params=params)
    torch.testing.assert_close(model.state_dict()["3.bias"], torch.full((10,), 0.5))
    torch.testing.assert_close(model.state_dict()["1.weight"], before["1.weight"])


def test_params_unknown_key_or_shape_is_rejected(digits: Dataset) -> None:
    model = mlp()
    with pytest.raises(ValueError, match=r"`params` has keys that the model does not have.*9\.weight"):
        train(model, digits, TrainConfig(steps=1), params={"9.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"`params\['1.bias'\]` must have shape \(32,\)"):
        train(model, digits, TrainConfig(steps=1), params={"1.bias": torch.zeros(3)})


# --------------------------------------------------------------------------- #
# evaluate
# --------------------------------------------------------------------------- #


class Zeros(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], 10)


def test_evaluate_known_values(digits: Dataset) -> None:
    loss, acc = evaluate(Zeros(), digits.x_test, digits.y_test, batch_size=7)
    assert loss == pytest.approx(math.log(10))
    assert acc == pytest.approx(float((digits.y_test == 0).float().mean()))


def test_evaluate_restores_mode_and_needs_no_grad(digits: Dataset) -> None:
    model = cnn()
    model.train()
    seen: list[bool] = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training or torch.is_grad_enabled()))
    evaluate(model, digits.x_val, digits.y_val)
    assert seen and not any(seen)
    assert model.training


def test_evaluate_empty_and_bad_arguments(digits: Dataset) -> None:
    empty = evaluate(Zeros(), digits.x_val[:0], digits.y_val[:0])
    assert all(math.isnan(v) for v in empty)
    with pytest.raises(ValueError, match="`batch_size` must be positive, but got 0"):
        evaluate(Zeros(), digits.x_val, digits.y_val, batch_size=0)
    with pytest.raises(ValueError, match="as many samples"):
        evaluate(Zeros(), digits.x_val, digits.y_val[:-1])


# --------------------------------------------------------------------------- #
# Config validation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "`epochs` must be positive, but got 0"),
        ({"epochs": -1.5}, "`epochs` must be positive, but got -1.5"),
        ({"steps": 0}, "`steps` must be positive, but got 0"),
        ({"steps": 2.5}, "`steps` must be an integer, but got 2.5"),
        ({"batch_size": 0}, "`batch_size` must be positive, but got 0"),
        ({"lr": 0.0}, "`lr` must be positive, but got 0.0"),
        ({"lr": float("nan")}, "`lr` must be positive, but got nan"),
        ({"momentum": 1.0}, r"`momentum` must be in \[0, 1\), but got 1.0"),
        ({"weight_decay": -1e-4}, "`weight_decay` must be non-negative, but got -0.0001"),
        ({"schedule": "linear"}, r"`schedule` must be one of \['constant', 'cosine'\], but got 'linear'"),
        ({"grad_clip": 0.0}, "`grad_clip` must be positive, but got 0.0"),
        ({"label_smoothing": 1.0}, r"`label_smoothing` must be in \[0, 1\), but got 1.0"),
        ({"diverge_factor": -1.0}, "`diverge_factor` must be positive, but got -1.0"),
        ({"device": "warp-drive"}, "`device` is not a valid torch device: 'warp-drive'"),
    ],
)
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        TrainConfig(3)  # type: ignore[misc]
    assert TrainConfig().steps is None and TrainConfig(grad_clip=None).grad_clip is None


# --------------------------------------------------------------------------- train_graph


def _a_graph(digits: Dataset):
    from nas.space import load_space

    return load_space("nb201", input_shape=digits.input_shape, num_classes=digits.num_classes, C=4, N=1).sample(3).graph


def test_train_graph_is_seeded_and_leaves_the_callers_rng_alone(digits: Dataset) -> None:
    from nas.training import train_graph

    graph = _a_graph(digits)
    config = TrainConfig(steps=5, seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = train_graph(graph, digits, config)
    assert torch.equal(torch.get_rng_state(), before)
    b = train_graph(graph, digits, config)
    c = train_graph(graph, digits, TrainConfig(steps=5, seed=8))
    assert a.train_losses == b.train_losses and a.val_loss == b.val_loss
    assert a.train_losses != c.train_losses


def test_train_graph_skips_unused_splits_without_changing_training(digits: Dataset) -> None:
    from nas.training import train_graph

    graph = _a_graph(digits)
    config = TrainConfig(steps=5, seed=1)
    full = train_graph(graph, digits, config)
    val_only = train_graph(graph, digits, config, evaluate_on=("val",))
    none = train_graph(graph, digits, config, evaluate_on=())
    assert full.train_losses == val_only.train_losses == none.train_losses
    assert val_only.val_loss == full.val_loss and val_only.test_loss != full.test_loss
    with pytest.raises(ValueError, match="evaluate_on.*'train'"):
        train_graph(graph, digits, config, evaluate_on=("train",))  # type: ignore[arg-type]


def test_train_graph_hands_back_the_trained_network(digits: Dataset) -> None:
    from nas.training import train_graph

    graph = _a_graph(digits)
    trained: list[nn.Module] = []
    result = train_graph(graph, digits, TrainConfig(steps=5), model_out=trained)
    (model,) = trained
    _, acc = evaluate(model, digits.x_val, digits.y_val)
    assert acc == pytest.approx(result.val_acc, abs=1e-6)


def test_train_graph_does_not_log_metrics_of_a_cut_split(digits: Dataset, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from nas.training import train_graph

    graph = _a_graph(digits)
    with caplog.at_level(logging.INFO, logger="nas.training"):
        train_graph(graph, digits, TrainConfig(steps=3), evaluate_on=())
        assert not [r for r in caplog.records if "val acc" in r.getMessage()]
        train_graph(graph, digits, TrainConfig(steps=3))
        assert [r for r in caplog.records if "val acc" in r.getMessage()]
        assert logging.getLogger("nas.training").level == logging.INFO  # the caller's level is back


# --------------------------------------------------------------------------- #
# Per-step hook (multi-fidelity search reports intermediate accuracies through it)
# --------------------------------------------------------------------------- #


def test_step_hook_sees_every_step_and_evaluating_there_changes_nothing(digits: Dataset) -> None:
    from nas.training import train_graph

    graph = _a_graph(digits)
    config = TrainConfig(steps=12, seed=3)
    plain = train_graph(graph, digits, config)
    seen: list[int] = []
    rungs: dict[int, float] = {}

    def hook(step: int, model: nn.Module) -> bool:
        seen.append(step)
        if step in (2, 6):
            rungs[step] = evaluate(model, digits.x_val, digits.y_val)[1]
            assert model.training  # evaluate hands the model back in training mode
        return False

    hooked = train_graph(graph, digits, config, on_step=hook)
    assert seen == list(range(1, 13))
    assert hooked.train_losses == plain.train_losses and hooked.val_acc == plain.val_acc
    assert not hooked.stopped and not plain.stopped
    assert set(rungs) == {2, 6}


def test_step_hook_stops_training_and_the_result_says_so(digits: Dataset) -> None:
    from nas.training import train_graph

    graph = _a_graph(digits)
    full = train_graph(graph, digits, TrainConfig(steps=12, seed=3))
    stopped = train_graph(graph, digits, TrainConfig(steps=12, seed=3), on_step=lambda step, _: step == 4)
    assert stopped.stopped and not stopped.failed and stopped.steps == 4
    assert stopped.train_losses == full.train_losses[:4]
    assert math.isfinite(stopped.val_acc)  # evaluated where it stopped
    # Asking to stop after the last step is no early stop.
    last = train_graph(graph, digits, TrainConfig(steps=12, seed=3), on_step=lambda step, _: step == 12)
    assert not last.stopped and last.steps == 12 and last.val_acc == full.val_acc


@pytest.mark.parametrize("value", [0, 0.5, 3])
def test_check_non_negative_returns_a_valid_number(value):
    assert check_non_negative("margin", value) == value


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), True, "0.1", None])
def test_check_non_negative_names_the_setting_and_value(value):
    with pytest.raises(ValueError, match=r"`margin` must be a non-negative number, but got"):
        check_non_negative("margin", value)


def test_ensure_ranker_refuses_an_infinite_label_budget(tmp_path):
    from nas.ghn import ensure_ranker

    with pytest.raises(ValueError, match=r"`label_seconds` must be a non-negative number, but got inf"):
        ensure_ranker(None, None, None, path=tmp_path / "ranker.pt", label_seconds=float("inf"))
