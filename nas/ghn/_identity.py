"""What a GHN or ranker checkpoint was built for, and the check that it is used for that.

A GHN and a ranker are tied to one search space with its settings and to one
dataset split: the graph network learnt that space's candidates at that image
size, and a ranker's labels are losses on that split. Each checkpoint stores its
**identity** in its ``space_info`` entry:

``space``, ``settings``, ``input_shape``, ``num_classes``
    :meth:`nas.space.SearchSpace.describe` of the space it was built for;
``dataset``, ``data_seed``
    the dataset name and the seed of its train / validation / test split.

:func:`check_identity` compares a checkpoint's identity with the space and
dataset it is about to serve and refuses any difference in one line naming both
sides. Checkpoints written before an entry was stored (older ones lack
``data_seed``) load with a warning naming what could not be checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nas.exceptions import CheckpointError

if TYPE_CHECKING:
    from nas.data import Dataset
    from nas.space import SearchSpace

__all__ = ["IDENTITY_KEYS", "check_identity", "identity"]

logger = logging.getLogger(__name__)

#: The entries of ``space_info`` that must match the space and dataset a checkpoint serves.
IDENTITY_KEYS = ("space", "settings", "input_shape", "num_classes", "dataset", "data_seed")


def identity(space: SearchSpace, data: Dataset) -> dict[str, Any]:
    """The identity of a checkpoint built for ``space`` and ``data`` (its ``space_info`` entry)."""
    return {**space.describe(), "dataset": data.name, "data_seed": data.split_seed}


def _plain(value: Any) -> Any:
    """``value`` as JSON would hold it (tuples as lists), so stored and live settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def check_identity(info: Mapping[str, Any] | None, space: SearchSpace, data: Dataset | None, *, where: str) -> None:
    """Refuse a checkpoint built for another space, space settings, dataset or split.

    Args:
        info: The checkpoint's ``space_info``.
        space: The search space it is about to serve.
        data: The dataset it is about to serve, or ``None`` when the caller has
            no dataset (then ``dataset`` and ``data_seed`` are not checked).
        where: What the checkpoint is, named in messages (``"GHN checkpoint 'g.pt'"``).

    Raises:
        CheckpointError: An identity entry differs; the message names the entry,
            the stored value and the requested one.
    """
    info = dict(info or {})
    wanted = space.describe()
    if data is not None:
        wanted.update(dataset=data.name, data_seed=data.split_seed)
    unchecked: list[str] = []
    for key in IDENTITY_KEYS:
        if key not in wanted or wanted[key] is None:
            continue
        if info.get(key) is None:
            unchecked.append(key)
        elif _plain(info[key]) != _plain(wanted[key]):
            target = f"space {space.name!r}" + (f" on dataset {data.name!r}" if data is not None else "")
            raise CheckpointError(
                f"{where} was built for {key} {_plain(info[key])!r}, but this run uses {key} "
                f"{_plain(wanted[key])!r}; use a checkpoint built for {target}, or build a new one."
            )
    if unchecked:
        logger.warning(
            "%s predates stored %s: these could not be checked against this run.", where, ", ".join(unchecked)
        )
