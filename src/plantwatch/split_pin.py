"""A frozen holdout across retrains: the first split's validation and holdout periods are pinned.

Why: a retrain after drift appends new production data. Re-cutting "the most recent 20 %" would
make that fresh, unlabelled data the holdout — champion and challenger would then be compared on
different rows, and on rows with no labelled faults at all. Pinning keeps the holdout the same rows
(same sha256) for every candidate, and routes everything newer than the holdout into training, so
the retrained model learns the new regime while being judged on the frozen, labelled period.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from plantwatch import schema
from plantwatch.errors import DataError
from plantwatch.features import Split, frame_sha256


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

    @classmethod
    def of(cls, split: Split) -> SplitPin:
        return cls(
            validation_start=pd.Timestamp(split.validation_start),
            holdout_start=pd.Timestamp(split.holdout_start),
            holdout_end=pd.Timestamp(split.holdout[schema.TIMESTAMP].max()),
            holdout_sha256=readings_sha256(split.holdout),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "validation_start": self.validation_start.isoformat(),
            "holdout_start": self.holdout_start.isoformat(),
            "holdout_end": self.holdout_end.isoformat(),
            "holdout_sha256": self.holdout_sha256,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SplitPin:
        try:
            return cls(
                validation_start=pd.Timestamp(raw["validation_start"]),
                holdout_start=pd.Timestamp(raw["holdout_start"]),
                holdout_end=pd.Timestamp(raw["holdout_end"]),
                holdout_sha256=str(raw["holdout_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"split pin is malformed ({err}); delete it to re-pin") from None


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
    ts = pd.to_datetime(df[schema.TIMESTAMP]).to_numpy()
    vs, hs, he = (p.to_datetime64() for p in (pin.validation_start, pin.holdout_start, pin.holdout_end))
    in_val = (ts >= vs) & (ts < hs)
    in_hold = (ts >= hs) & (ts <= he)
    train, validation, holdout = df[~(in_val | in_hold)], df[in_val], df[in_hold]
    for name, part in (("train", train), ("validation", validation), ("holdout", holdout)):
        if part.empty:
            raise DataError(f"the pinned split leaves the {name} part empty; delete the pin to re-split")
    holdout = holdout.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable")
    if readings_sha256(holdout) != pin.holdout_sha256:
        raise DataError(
            "the pinned holdout's rows changed (sha256 differs): models cannot be compared on it; "
            "delete the split pin to re-split deliberately"
        )
    return Split(
        train=train,
        validation=validation,
        holdout=holdout,
        validation_start=pin.validation_start,
        holdout_start=pin.holdout_start,
        holdout_sha256=frame_sha256(holdout.reset_index(drop=True)),
        train_rows=train_rows,
        counts={"train": len(train), "validation": len(validation), "holdout": len(holdout)},
    )
