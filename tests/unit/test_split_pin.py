"""The frozen holdout: a retrain on appended data is judged on exactly the first split's holdout."""

from __future__ import annotations

import pandas as pd
import pytest

from plantwatch import schema
from plantwatch.errors import DataError
from plantwatch.features import time_split
from plantwatch.split_pin import SplitPin, pinned_split
from plantwatch.training import prepare_split


def test_appended_data_trains_and_the_holdout_stays_the_same_rows(small_fleet, sim_params) -> None:
    ts = small_fleet[schema.TIMESTAMP]
    first_days = small_fleet[ts < ts.min() + pd.Timedelta(days=2)]
    first = time_split(first_days, sim_params.split)
    pin = SplitPin.of(first)
    later, _ = prepare_split(small_fleet, sim_params.split, pin=pin)  # a third day appended
    assert later.holdout_sha256 == first.holdout_sha256
    pd.testing.assert_frame_equal(later.holdout.reset_index(drop=True), first.holdout.reset_index(drop=True))
    newest = small_fleet[schema.TIMESTAMP].max()
    assert later.train[schema.TIMESTAMP].max() == newest  # newer rows train
    assert later.holdout[schema.TIMESTAMP].max() < newest
    # Without the pin the newest day would have become the holdout instead.
    assert time_split(small_fleet, sim_params.split).holdout_sha256 != first.holdout_sha256
    idx = [set(p.index) for p in (later.train, later.validation, later.holdout)]
    assert not (idx[0] & idx[1] or idx[0] & idx[2] or idx[1] & idx[2])
    assert sum(map(len, idx)) == len(small_fleet)


def test_changed_holdout_rows_are_refused(small_fleet, sim_params) -> None:
    split = time_split(small_fleet, sim_params.split)
    pin = SplitPin.of(split)
    tampered = small_fleet.copy()
    row = split.holdout.index[0]
    tampered.loc[row, "flow"] = tampered.loc[row, "flow"] + 1.0
    with pytest.raises(DataError, match="pinned holdout"):
        pinned_split(tampered, pin)


def test_pin_round_trips_and_a_malformed_pin_is_one_clear_error(small_fleet, sim_params) -> None:
    pin = SplitPin.of(time_split(small_fleet, sim_params.split))
    assert SplitPin.from_dict(pin.to_dict()) == pin
    with pytest.raises(DataError, match="malformed"):
        SplitPin.from_dict({"holdout_start": "x"})


def test_reviewed_labels_may_relabel_the_holdout_without_breaking_the_pin(small_fleet, sim_params) -> None:
    split = time_split(small_fleet, sim_params.split)
    pin = SplitPin.of(split)
    relabelled = small_fleet.copy()
    relabelled.loc[split.holdout.index[:5], "label"] = 1
    relabelled["label_source"] = "source"
    again = pinned_split(relabelled, pin)
    assert again.holdout["label"].sum() == split.holdout["label"].sum() + (
        5 - int(split.holdout.loc[split.holdout.index[:5], "label"].sum())
    )
