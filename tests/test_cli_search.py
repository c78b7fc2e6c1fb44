"""Tests of ``nas search``, ``nas worker`` and ``nas demo`` (nas/cli/search.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.campaign import Campaign, CampaignConfig
from nas.cli import main

SPACE_ARGS = {"C": 4}


def make_tiny_ghn(path: Path) -> Path:
    """Meta-train (once per session) a tiny GHN for nb201 C=4 on digits (same file as tests/test_campaign.py)."""
    from nas.data import load_dataset
    from nas.exceptions import CheckpointError
    from nas.ghn import GHN, GHNConfig, MetaTrainConfig, meta_train
    from nas.space import load_space

    if path.is_file():
        try:
            GHN.load(path)
            return path
        except CheckpointError:
            pass
    data = load_dataset("digits")
    space = load_space("nb201", input_shape=data.input_shape, num_classes=data.num_classes, **SPACE_ARGS)
    config = MetaTrainConfig(steps=2, meta_batch=2, batch_size=32, eval_every=2, num_held_out=1, warmup_steps=1)
    meta_train(
        space, data, config, ghn_config=GHNConfig(hidden=16, layers=1, s_max=2), out=path, resume=False, progress=False
    )
    return path


@pytest.fixture(autouse=True)
def _no_storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAS_STORAGE", raising=False)


@pytest.fixture(scope="session")
def ghn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_ghn(tmp_path_factory.getbasetemp() / "tiny_ghn.pt")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = int(exc.code)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--trials", "0"], "`--trials` must be positive, but got 0"),
        (["--top-k", "-2"], "`--top-k` must be positive, but got -2"),
        (["--finetune-epochs", "0"], "`--finetune-epochs` must be positive, but got 0.0"),
        (["--finetune-lr", "-0.1"], "`--finetune-lr` must be positive, but got -0.1"),
        (["--rerank", "grad_norm"], "unrecognized arguments: --rerank grad_norm"),  # removed: no benefit measured
        (["--tri", "3"], "unrecognized arguments: --tri 3"),  # no abbreviated flags
        (["--config", "nosuch.toml"], "`--config`: no such file 'nosuch.toml'"),
        (["--finetune-metric", "f1"], "`--finetune-metric` must be one of acc, loss, but got 'f1'"),
        (["--trials", "many"], "argument --trials: invalid int value: 'many'"),
        (["--self-check", "2"], "`--self-check` must be 0 or an int of at least 3"),
        (["--sampler", "bogus"], "`--sampler` must be one of tpe, random, gp, nsga2, but got 'bogus'"),
        (["--objectives", "acc"], "`--objectives` must be one of loss, loss,params, loss,flops"),
        (["--storage", "ftp://user:hunter2@host/x"], "unsupported scheme"),
        (["--space", "nosuchspace"], "unknown search space 'nosuchspace'"),
        (["--threads", "-1"], "argument --threads: must be 0 (torch's choice) or 1 to 1024, but got '-1'"),
        (["--grace-period", "1"], "`--grace-period` (1) must exceed `--heartbeat-interval` (30)"),
        (["--heartbeat-interval", "200"], "`--grace-period` (120) must exceed `--heartbeat-interval` (200)"),
        (["--device", "bogus"], "`--device` must be a torch device such as 'cpu' or 'cuda', but got 'bogus'"),
        (["--study", " "], "`--study` must be a non-empty name, but got ' '"),
        (["--ghn-steps", "0"], "`--ghn-steps` must be positive, but got 0"),
        (["--rank-by", "bogus"], "argument --rank-by: invalid choice: 'bogus'"),
        (["--pick", "best"], "argument --pick: invalid choice: 'best'"),
        (["--ranker-labels", "3"], "`--ranker-labels` must be an int of at least 4, but got 3"),
        (["--ranker-labels", "many"], "argument --ranker-labels: invalid int value: 'many'"),
        (["--ranker-k", "0"], "`--ranker-k` must be positive, but got 0"),
        (["--label-workers", "-1"], "`--label-workers` must be positive, but got -1"),
        (["--refine", "-1"], "`--refine` must be a non-negative int, but got -1"),
        (["--refine", "2", "--refine-trials", "0"], "`--refine-trials` must be"),
        (["--rank-by", "loss", "--ranker", "r.pt"], "`--ranker` is used only when `--rank-by` is 'ranker'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str
) -> None:
    rc, out, err = run_cli(["search", "--dataset", "digits", "--out", str(tmp_path / "o"), *extra], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("nas search: error: ")
    assert fragment in err
    assert not re.search(r"`[a-z]+_[a-z_]+`", err), err  # a keyword argument (`grace_period`), not a flag
    assert "hunter2" not in err and out == ""


def test_worker_of_unknown_campaign_and_bad_demo_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    small = Campaign(space="nb201", dataset="digits", out=tmp_path, storage=url, study="known", space_args=SPACE_ARGS)
    small.open()
    rc, _, err = run_cli(["worker", "--storage", url, "--study", "nope"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "no campaign 'nope'" in err and "known" in err
    rc, _, err = run_cli(["worker", "--study", "known"], capsys)
    assert rc == 2 and "`--storage` is required (or set $NAS_STORAGE)" in err
    monkeypatch.setenv("NAS_STORAGE", "ftp://user:hunter2@host/x")  # the URL may come from the environment
    rc, _, err = run_cli(["worker", "--study", "known"], capsys)
    assert rc == 2 and "unsupported scheme" in err and "hunter2" not in err
    rc, _, err = run_cli(["demo", "--out", str(tmp_path / "d"), "--top-k", "0"], capsys)
    assert rc == 2 and "`--top-k` must be positive" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["search", "worker", "demo"])
def test_grace_at_most_heartbeat_names_the_flags_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    argv = {
        "search": ["search", "--dataset", "digits", "--out", str(tmp_path / "o")],
        "worker": ["worker", "--storage", f"sqlite:///{tmp_path / 'c.db'}", "--study", "s"],
        "demo": ["demo", "--out", str(tmp_path / "o")],
    }[command]
    rc, out, err = run_cli([*argv, "--heartbeat-interval", "10", "--grace-period", "10"], capsys)
    assert rc == 2 and out == ""
    assert err == f"nas {command}: error: `--grace-period` (10) must exceed `--heartbeat-interval` (10).\n"
    assert list(tmp_path.iterdir()) == []  # refused before any storage or folder was created
    rc, out, err = run_cli([*argv, "--heartbeat", "10", "--grace", "10"], capsys)  # deprecated names still work
    assert rc == 2 and out == ""
    assert err.splitlines() == [
        f"nas {command}: warning: --heartbeat is deprecated and will be removed in the next release; "
        "use --heartbeat-interval",
        f"nas {command}: warning: --grace is deprecated and will be removed in the next release; use --grace-period",
        f"nas {command}: error: `--grace-period` (10) must exceed `--heartbeat-interval` (10).",
    ]
    assert list(tmp_path.iterdir()) == []  # refused before any storage or folder was created


def test_search_top_k_error_then_resume(tmp_path: Path, ghn_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = [
        "search", "--space", "nb201", "--space-arg", "C=4", "--dataset", "digits", "--ghn", str(ghn_path),
        "--trials", "8", "--finetune-epochs", "0.2", "--batch-size", "8", "--out", str(out), "--no-progress",
        "--ranker-labels", "6", "--ranker-k", "2", "--refine", "0", "--finetune-lr", "0.02",
    ]
    rc, _, err = run_cli([*argv, "--top-k", "50"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "`top_k` is 50, but the rank stage scored only" in err and "lower --top-k" in err
    labels = (out / "ranker_labels.csv").read_bytes()
    assert len(labels.splitlines()) == 7 and (out / "ranker.pt").is_file()  # header + 6 short trainings

    rc, stdout, err = run_cli([*argv, "--top-k", "2"], capsys)
    assert rc == 0, err
    assert "campaign 'nb201-digits': 8 rank trials" in stdout and "2 fine-tuned" in stdout
    assert "ranked by ranker" in stdout and "rank_score" in stdout
    assert "best: rank trial" in stdout
    assert f"nas train --arch {out / 'best.json'} --dataset digits --epochs 3" in stdout
    for name in ("candidates.csv", "finetuned.csv", "best.json", "best.pt", "history.png", "history.pdf"):
        assert (out / name).is_file(), name
    assert not (out / "score_vs_finetuned.pdf").exists()  # 2 points: not drawn
    assert (out / "ranker_labels.csv").read_bytes() == labels  # the rerun labelled nothing
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'campaign.db'}")
    rank = optuna.load_study(study_name="nb201-digits-rank", storage=storage)
    assert len(rank.trials) == 8  # the rerun ranked nothing new
    assert all("rank_score" in t.user_attrs and "ghn_loss" not in t.user_attrs for t in rank.trials)
    assert rank.user_attrs["nas_campaign"]["config"]["finetune_lr"] == 0.02  # the fine-tunes' learning rate

    rc, _, err = run_cli([*argv, "--top-k", "2", "--rank-by", "loss"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "rank_by: stored 'ranker', requested 'loss'" in err


@pytest.mark.parametrize("kind", ["corrupt", "ghn-checkpoint"])
def test_bad_ranker_file_is_one_line_and_creates_no_storage(
    tmp_path: Path, ghn_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    bad = tmp_path / "bad.pt"
    if kind == "corrupt":
        bad.write_bytes(b"\x00garbage")
    else:
        bad = ghn_path
    out = tmp_path / "run"
    rc, stdout, err = run_cli(
        ["search", "--space-arg", "C=4", "--dataset", "digits", "--ghn", str(ghn_path), "--ranker", str(bad),
         "--out", str(out), "--no-progress"], capsys,
    )
    assert rc == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("nas search: error: ") and str(bad) in err and "ranker checkpoint" in err
    assert not (out / "campaign.db").exists()

    url = f"sqlite:///{tmp_path / 'c.db'}"
    Campaign(space="nb201", dataset="digits", out=tmp_path / "c", storage=url, study="s", space_args=SPACE_ARGS,
             rank_by="ranker").open()
    rc, _, err = run_cli(["worker", "--storage", url, "--study", "s", "--ranker", str(bad), "--no-progress"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(bad) in err, err


def test_two_workers_on_a_journal_storage_finetune_disjoint_candidates(tmp_path: Path, ghn_path: Path) -> None:
    from nas.ghn import RankerConfig

    url = f"journal://{tmp_path / 'campaign.log'}"
    campaign = Campaign(
        space="nb201", dataset="digits", ghn=ghn_path, trials=10, top_k=4, finetune_epochs=0.3, out=tmp_path / "run",
        storage=url, study="shared", batch_size=10, space_args=SPACE_ARGS, progress=False,
        ranker_labels=6, ranker_k=2, ranker_config=RankerConfig(epochs=2, ensemble=1),
    )
    campaign.rank()
    enqueued = campaign.enqueue()
    assert len(enqueued) == 4

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys; from nas.cli import main; sys.exit(main(sys.argv[1:]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, "worker", "--storage", url, "--study", "shared", "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert "worker fine-tuned" in out

    _, ft = campaign.open()
    done = ft.get_trials(states=(TrialState.COMPLETE,))
    keys = [t.user_attrs["key"] for t in done]
    assert sorted(keys) == sorted(enqueued)  # every queued candidate, none twice
    assert not ft.get_trials(states=(TrialState.WAITING, TrialState.RUNNING, TrialState.FAIL))
    pids = {p.pid for p in procs}
    by_worker: dict[int, set[str]] = {}
    for t in done:
        pid = int(t.user_attrs["nas_worker_done"].split(":")[-2])
        assert pid in pids
        by_worker.setdefault(pid, set()).add(t.user_attrs["key"])
    assert sum(len(v) for v in by_worker.values()) == 4  # disjoint
    assert all(Path(t.user_attrs["weights"]).is_file() for t in done)


def test_search_with_two_rankers_ranks_by_their_mean_and_a_bad_one_is_refused(
    tmp_path: Path, ghn_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from nas.ghn import GHN, GHNRanker, RankerConfig, RankerEnsemble, fit_ranker
    from nas.space import load_space

    space = load_space("nb201", input_shape=(1, 8, 8), num_classes=10, **SPACE_ARGS)
    graphs = [c.graph for c in space.sample_many(16, seed=3)]
    ghn = GHN.load(ghn_path)
    paths = []
    for name, sign in (("a", 1.0), ("b", -1.0)):  # two rankers that disagree
        path = tmp_path / f"{name}.pt"
        fit_ranker(ghn, graphs[:8], [sign * g.num_params() for g in graphs[:8]], RankerConfig(epochs=2, ensemble=1),
                   progress=False).save(path)
        paths.append(path)
    out = tmp_path / "run"
    argv = ["search", "--space", "nb201", "--space-arg", "C=4", "--dataset", "digits", "--ghn", str(ghn_path),
            "--trials", "8", "--top-k", "2", "--finetune-epochs", "0.2", "--batch-size", "8", "--refine", "0",
            "--out", str(out), "--no-progress", "--ranker", str(paths[0]), "--ranker", str(paths[1])]
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 0, err
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'campaign.db'}")
    rank = optuna.load_study(study_name="nb201-digits-rank", storage=storage)
    assert rank.user_attrs["nas_campaign"]["config"]["ranker"] == [str(p.resolve()) for p in paths]
    trial = next(t for t in rank.trials if t.state == TrialState.COMPLETE)
    graph = space.from_params(trial.params)
    assert graph.key == trial.user_attrs["key"]
    ensemble = RankerEnsemble.load(paths)
    assert trial.user_attrs["rank_score"] == pytest.approx(float(ensemble.score([graph])[0]), rel=1e-5)
    assert trial.user_attrs["rank_score"] != pytest.approx(float(GHNRanker.load(paths[0]).score([graph])[0]),
                                                          rel=1e-5)
    assert np.isfinite(trial.user_attrs["rank_score"])

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    other = tmp_path / "other"
    rc, stdout, err = run_cli([*argv[:-4], "--out", str(other), "--ranker", str(paths[0]), "--ranker", str(bad)],
                              capsys)
    assert rc == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
    assert str(bad) in err and not (other / "campaign.db").exists()


def test_every_entry_point_defaults_to_the_same_label_recipe() -> None:
    import inspect

    from nas.cli import _parser
    from nas.ghn import RANKER_K, RANKER_LABELS, ensure_ranker

    parser = _parser()
    search = parser.parse_args(["search", "--out", "x"])
    fit = parser.parse_args(["fit-ranker", "--space", "nb201", "--dataset", "digits", "--ghn", "g.pt", "--out", "r.pt"])
    ensure = inspect.signature(ensure_ranker).parameters
    config = CampaignConfig()
    assert "ranker_labels" not in vars(search)  # unset unless given: the configuration's default applies
    assert (fit.ranker_labels, fit.ranker_k) == (RANKER_LABELS, RANKER_K)
    assert (config.ranker_labels, config.ranker_k) == (RANKER_LABELS, RANKER_K)
    assert (ensure["ranker_labels"].default, ensure["ranker_k"].default) == (RANKER_LABELS, RANKER_K)
    # The label purchases: off (all labels at once) everywhere, one stopping margin.
    from nas.evaluation import LabelRecipe
    from nas.ghn import LABEL_MARGIN

    recipe = LabelRecipe.default()
    assert (fit.label_batch, fit.label_margin) == (0, LABEL_MARGIN)  # 0: all at once
    assert (config.label_batch, config.label_margin) == (None, LABEL_MARGIN)
    assert (ensure["label_batch"].default, ensure["label_margin"].default) == (None, LABEL_MARGIN)
    assert (recipe.batch, recipe.margin) == (None, LABEL_MARGIN)
