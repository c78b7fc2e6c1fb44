"""The search campaign: rank candidates without training them, fine-tune the best, report.

A campaign is two Optuna studies in one storage:

1. ``<study>-rank``: an Optuna sampler (TPE by default) proposes candidates
   through the search space and each gets a rank score (``nas.campaign._rank``):
   by default the short-training loss that a :class:`nas.ghn.GHNRanker` (a
   graph network of the GHN's design fitted from random weights to a few
   hundred short trainings) predicts from the graph alone
   (``rank_by="ranker"``), or the validation loss of the
   GHN-predicted weights (``rank_by="loss"``).
2. ``<study>-finetune``: the top-k distinct candidates are enqueued once and
   fine-tuned from their GHN-predicted weights by any number of workers
   (``nas.campaign._finetune``).

The settings are one :class:`CampaignConfig` (``nas.campaign._config``), which
``nas search --config FILE`` reads as TOML. Results come as DataFrames and plots (``nas.campaign._report``); the storage
URL schemes and the handling of dead workers are in ``nas.campaign._storage``.

Examples:
    >>> from nas.campaign import Campaign, CampaignConfig
    >>> config = CampaignConfig(space="nb201", dataset="mnist5k", trials=300, top_k=5, out="runs/x")
    >>> result = Campaign(config).run()  # doctest: +SKIP
    >>> result.finetuned[["key", "val_acc"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

from nas.campaign._campaign import CAMPAIGN_ATTR, Campaign, CampaignResult, stored_campaign_config
from nas.campaign._config import GROUPS, IDENTITY_KEYS, CampaignConfig, setting_names
from nas.campaign._finetune import (
    FINETUNE_METRICS,
    FinetuneStats,
    enqueue_candidates,
    run_finetune_worker,
    select_candidates,
)
from nas.campaign._queue import QUEUES, QueuedGroundTruth, QueuedLabels, WorkQueue, queue_study, run_queue_worker
from nas.campaign._rank import (
    OBJECTIVES,
    RANK_BY,
    SAMPLERS,
    RankStats,
    rank_by_of,
    rank_score,
    resolve_objectives,
    resolve_rank_by,
    resolve_sampler,
    run_rank_stage,
)
from nas.campaign._report import (
    CANDIDATE_COLUMNS,
    FINETUNED_COLUMNS,
    PICKS,
    best_record,
    candidates_frame,
    finetuned_frame,
    plot_history,
    plot_pareto,
    plot_score_vs_finetuned,
    plot_self_check,
    rank_score_label,
    rank_trials_frame,
    write_report,
)
from nas.campaign._selfcheck import RELIABLE_TAU, SelfCheck, run_self_check, self_check_candidates
from nas.campaign._storage import (
    STORAGE_SCHEMES,
    Heartbeat,
    default_storage_url,
    mask_url,
    open_storage,
    reap_stale_trials,
    requeue_trial,
    worker_session,
)

__all__ = [
    "CAMPAIGN_ATTR",
    "CANDIDATE_COLUMNS",
    "Campaign",
    "CampaignConfig",
    "CampaignResult",
    "GROUPS",
    "Heartbeat",
    "FINETUNED_COLUMNS",
    "FINETUNE_METRICS",
    "PICKS",
    "QUEUES",
    "QueuedGroundTruth",
    "QueuedLabels",
    "FinetuneStats",
    "IDENTITY_KEYS",
    "OBJECTIVES",
    "RANK_BY",
    "RELIABLE_TAU",
    "RankStats",
    "SAMPLERS",
    "STORAGE_SCHEMES",
    "SelfCheck",
    "WorkQueue",
    "best_record",
    "candidates_frame",
    "default_storage_url",
    "enqueue_candidates",
    "finetuned_frame",
    "mask_url",
    "open_storage",
    "plot_history",
    "plot_pareto",
    "plot_score_vs_finetuned",
    "plot_self_check",
    "queue_study",
    "rank_by_of",
    "rank_score",
    "rank_score_label",
    "rank_trials_frame",
    "reap_stale_trials",
    "requeue_trial",
    "resolve_objectives",
    "resolve_rank_by",
    "resolve_sampler",
    "run_finetune_worker",
    "run_queue_worker",
    "run_rank_stage",
    "run_self_check",
    "select_candidates",
    "self_check_candidates",
    "setting_names",
    "stored_campaign_config",
    "worker_session",
    "write_report",
]
