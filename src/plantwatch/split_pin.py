"""A frozen holdout across retrains: the first split's validation and holdout periods are pinned.

Why: a retrain after drift appends new production data. Re-cutting "the most recent 20 %" would
make that fresh, unlabelled data the holdout — champion and challenger would then be compared on
different rows, and on rows with no labelled faults at all. Pinning keeps the holdout the same rows
(same sha256) for every candidate, and routes everything newer than the holdout into training, so
the retrained model learns the new regime while being judged on the frozen, labelled period.

Enough evidence: the gates judge a model on the holdout's labelled fault episodes, and a holdout
with one or two of them makes every holdout metric a coin toss. ``grow_for_evidence`` moves the
FIRST split's holdout start earlier (never later, never past ``split.max_holdout_fraction`` of the
rows, never inside a fault episode) until the holdout holds ``gates.min_holdout_episodes`` fault
episodes, when the labels allow; the pin then freezes that holdout and records how many episodes it
holds. When the labels do not allow it, the time split is kept and the gates say so (insufficient
evidence) instead of judging.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from plantwatch import schema
from plantwatch.errors import DataError
from plantwatch.evaluation import frame_arrays, runs
from plantwatch.features import Split, frame_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitPin:
    """The periods of the first split: validation ``[validation_start, holdout_start)``,
    holdout ``[holdout_start, holdout_end]``; train = every other row (earlier or newer)."""

    validation_start: pd.Timestamp
    holdout_start: pd.Timestamp
    holdout_end: pd.Timestamp
    #: Fingerprint of the holdout's READINGS (keys + sensor values, not labels): reviewers' verdicts
    #: may relabel holdout rows, but the rows themselves must stay the same.
    holdout_sha256: str
    #: Fault episodes the holdout held when it was pinned (``fault_episodes``), and how many the
    #: gates asked for then; None in pins written before they were recorded. A record, not a check:
    #: reviewers may relabel holdout rows later, and the gate counts again on the current labels.
    holdout_episodes: int | None = None
    min_holdout_episodes: int | None = None

    @classmethod
    def of(cls, split: Split, *, merge_gap: int | None = None, min_episodes: int | None = None) -> SplitPin:
        """Pin ``split``; with ``merge_gap`` the holdout's fault episodes are counted and recorded."""
        episodes = None if merge_gap is None else holdout_episode_count(split.holdout, merge_gap)
        return cls(
            validation_start=pd.Timestamp(split.validation_start),
            holdout_start=pd.Timestamp(split.holdout_start),
            holdout_end=pd.Timestamp(split.holdout[schema.TIMESTAMP].max()),
            holdout_sha256=readings_sha256(split.holdout),
            holdout_episodes=episodes,
            min_holdout_episodes=min_episodes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "validation_start": self.validation_start.isoformat(),
            "holdout_start": self.holdout_start.isoformat(),
            "holdout_end": self.holdout_end.isoformat(),
            "holdout_sha256": self.holdout_sha256,
            "holdout_episodes": self.holdout_episodes,
            "min_holdout_episodes": self.min_holdout_episodes,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SplitPin:
        try:
            return cls(
                validation_start=pd.Timestamp(raw["validation_start"]),
                holdout_start=pd.Timestamp(raw["holdout_start"]),
                holdout_end=pd.Timestamp(raw["holdout_end"]),
                holdout_sha256=str(raw["holdout_sha256"]),
                holdout_episodes=_optional_int(raw.get("holdout_episodes")),
                min_holdout_episodes=_optional_int(raw.get("min_holdout_episodes")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"split pin is malformed ({err}); delete it to re-pin") from None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


#: Columns that are not readings: labels and their provenance, simulator/ingest metadata.
_NOT_READINGS = {
    schema.LABEL, schema.SOURCE_LABEL, "label_source", schema.FAULT_KIND, "type_errors",
    schema.ROW_ID, schema.BATCH_ID,
}


def readings_sha256(frame: pd.DataFrame) -> str:
    """sha256 of the rows' keys and sensor values in (asset, timestamp) order, labels excluded."""
    cols = [c for c in frame.columns if c not in _NOT_READINGS]
    ordered = frame.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable")[cols]
    return frame_sha256(ordered.reset_index(drop=True))


def pinned_split(df: pd.DataFrame, pin: SplitPin, *, train_rows: int | None = None) -> Split:
    """Cut ``df`` with the pinned periods. Raises when the holdout rows are no longer the pinned ones.

    A changed holdout fingerprint means the data of the pinned period changed (a different source,
    re-validated rows): comparing models on it would be comparing on other rows, so we refuse.
    """
    split = cut_periods(df, pin.validation_start, pin.holdout_start, pin.holdout_end, train_rows=train_rows,
                        what="the pinned split", hint="; delete the pin to re-split")
    if readings_sha256(split.holdout) != pin.holdout_sha256:
        raise DataError(
            "the pinned holdout's rows changed (sha256 differs): models cannot be compared on it; "
            "delete the split pin to re-split deliberately"
        )
    return split


def cut_periods(
    df: pd.DataFrame,
    validation_start: pd.Timestamp,
    holdout_start: pd.Timestamp,
    holdout_end: pd.Timestamp,
    *,
    train_rows: int | None = None,
    what: str = "the split",
    hint: str = "",
) -> Split:
    """validation = ``[validation_start, holdout_start)``, holdout = ``[holdout_start, holdout_end]``,
    train = every other row (earlier ones, and newer ones after a pinned holdout)."""
    ts = pd.to_datetime(df[schema.TIMESTAMP]).to_numpy()
    vs, hs, he = (pd.Timestamp(p).to_datetime64() for p in (validation_start, holdout_start, holdout_end))
    in_val = (ts >= vs) & (ts < hs)
    in_hold = (ts >= hs) & (ts <= he)
    train, validation, holdout = df[~(in_val | in_hold)], df[in_val], df[in_hold]
    for name, part in (("train", train), ("validation", validation), ("holdout", holdout)):
        if part.empty:
            raise DataError(f"{what} leaves the {name} part empty{hint}")
    holdout = holdout.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable")
    return Split(
        train=train,
        validation=validation,
        holdout=holdout,
        validation_start=pd.Timestamp(validation_start),
        holdout_start=pd.Timestamp(holdout_start),
        holdout_sha256=frame_sha256(holdout.reset_index(drop=True)),
        train_rows=train_rows,
        counts={"train": len(train), "validation": len(validation), "holdout": len(holdout)},
    )


# ---------------------------------------------------------------------------------------------------
# enough evidence in the holdout
# ---------------------------------------------------------------------------------------------------


def fault_episode_spans(labels: np.ndarray, assets: np.ndarray, merge_gap: int) -> np.ndarray:
    """``[start, end)`` row positions of the fault episodes in rows ordered by (asset, timestamp).

    A fault episode is a run of labelled rows of one asset; runs at most ``merge_gap`` readings apart
    are ONE episode (a burst of spikes is one fault, not eight). This is the unit of evidence the
    gates count and the non-inferiority bootstrap keeps whole.
    """
    return runs(np.asarray(labels) == 1, np.asarray(assets), merge_gap)


def holdout_episode_count(frame: pd.DataFrame, merge_gap: int) -> int:
    """Fault episodes in a canonical frame (sorted here by asset, timestamp; no labels = 0)."""
    ordered = frame.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable")
    labels, assets, _ = frame_arrays(ordered)
    return len(fault_episode_spans(labels, assets, merge_gap))


def _episode_times(df: pd.DataFrame, merge_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) timestamps of every fault episode of ``df``."""
    ordered = df.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable")
    labels, assets, ts = frame_arrays(ordered)
    spans = fault_episode_spans(labels, assets, merge_gap)
    t = np.asarray(ts, dtype="datetime64[ns]")
    return t[spans[:, 0]], t[spans[:, 1] - 1]


def _unstraddled(cut: np.datetime64, first: np.ndarray, last: np.ndarray) -> np.datetime64:
    """The latest time <= ``cut`` that lies inside no episode (an episode is never split in two)."""
    while True:
        inside = (first < cut) & (last >= cut)
        if not inside.any():
            return cut
        cut = first[inside].min()


def grow_for_evidence(
    df: pd.DataFrame,
    base: Split,
    *,
    min_episodes: int,
    merge_gap: int,
    validation_fraction: float,
    max_holdout_fraction: float,
) -> Split:
    """``base`` if its holdout holds ``min_episodes`` fault episodes, else the split whose holdout starts
    at the latest time that gives it that many (whole episodes, holdout <= ``max_holdout_fraction`` of
    the rows it is cut from). The validation part keeps ``validation_fraction`` of those rows, right
    before the holdout (official ``train_rows`` stay training; validation is the labelled rest).
    Returns ``base`` unchanged (a warning logged) when the labels cannot give enough episodes:
    taking training rows for a holdout that still cannot judge would only cost.
    """
    held = holdout_episode_count(base.holdout, merge_gap)
    if held >= min_episodes:
        return base
    pool = df.iloc[base.train_rows:] if base.train_rows is not None else df
    ts = np.sort(pd.to_datetime(pool[schema.TIMESTAMP]).to_numpy(dtype="datetime64[ns]"))
    first, last = _episode_times(pool, merge_gap)
    # With official train rows the labelled rest is shared as validation_fraction : holdout_fraction,
    # as in features.time_split, so the cap is rescaled to that part the same way.
    share = (max_holdout_fraction / (validation_fraction + max_holdout_fraction)
             if base.train_rows is not None else max_holdout_fraction)
    cap = ts[min(ts.size - int(np.floor(ts.size * share)), ts.size - 1)]
    cut: np.datetime64 | None = np.datetime64(base.holdout_start.to_datetime64())
    for start in np.sort(first[first < cut])[::-1]:
        cut = _unstraddled(start, first, last)
        if cut < cap:
            cut = None
            break
        if int((first >= cut).sum()) >= min_episodes:
            break
    else:
        cut = None
    if cut is None or int((first >= cut).sum()) < min_episodes:
        log.warning("the holdout holds %d fault episode(s) and the labels cannot give it %d within "
                    "split.max_holdout_fraction=%s: the gates will report insufficient evidence",
                    held, min_episodes, max_holdout_fraction)
        return base
    position = int(np.searchsorted(ts, cut, side="left"))
    if base.train_rows is not None:
        validation_start = pd.Timestamp(ts[0])
    else:
        start_pos = position - int(round(validation_fraction * ts.size))
        if start_pos < 1:
            log.warning("growing the holdout to %d episodes would leave no training rows; kept", min_episodes)
            return base
        validation_start = pd.Timestamp(ts[start_pos])
    grown = cut_periods(df, validation_start, pd.Timestamp(cut), pd.Timestamp(ts[-1]),
                        train_rows=base.train_rows, what="growing the holdout for evidence")
    log.info("holdout grown from %d to %d rows to hold %d fault episodes (was %d)", len(base.holdout),
             len(grown.holdout), holdout_episode_count(grown.holdout, merge_gap), held)
    return grown
