"""The frozen holdout: a retrain on appended data is judged on exactly the first split's holdout, and
the first split gives that holdout enough fault episodes to judge on when the labels allow."""

from __future__ import annotations

import pandas as pd
import pytest

from plantwatch import schema
from plantwatch.errors import DataError
from plantwatch.features import time_split
from plantwatch.split_pin import SplitPin, fault_episode_spans, holdout_episode_count, pinned_split
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


# --- enough evidence: the first split's holdout grows to hold gates.min_holdout_episodes ----------


def _evidence(sim_params, want: int, max_fraction: float):
    gates = sim_params.gates.model_copy(update={"min_holdout_episodes": want})
    return sim_params.split.model_copy(update={"max_holdout_fraction": max_fraction}), gates


def test_first_split_grows_the_holdout_to_hold_enough_fault_episodes(small_fleet, sim_params) -> None:
    gap = sim_params.gates.episode_merge_gap
    base = time_split(small_fleet, sim_params.split)
    want = holdout_episode_count(base.holdout, gap) + 1
    split_cfg, gates = _evidence(sim_params, want, 0.6)
    grown, _ = prepare_split(small_fleet, split_cfg, gates=gates)
    assert holdout_episode_count(grown.holdout, gap) >= want
    assert grown.holdout_start < base.holdout_start
    assert len(grown.holdout) <= 0.6 * len(small_fleet)
    # the cut never splits a fault episode: none starts before the holdout and ends inside it
    ordered = small_fleet.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable")
    spans = fault_episode_spans(ordered["label"].to_numpy(), ordered[schema.ASSET].to_numpy(), gap)
    ts = ordered[schema.TIMESTAMP].to_numpy()
    cut = grown.holdout_start.to_datetime64()
    assert not any(ts[s] < cut <= ts[e - 1] for s, e in spans)
    # still a time split: disjoint parts covering every row, train < validation < holdout
    idx = [set(p.index) for p in (grown.train, grown.validation, grown.holdout)]
    assert not (idx[0] & idx[1] or idx[0] & idx[2] or idx[1] & idx[2])
    assert sum(map(len, idx)) == len(small_fleet)
    assert grown.train[schema.TIMESTAMP].max() < grown.validation[schema.TIMESTAMP].min()
    assert grown.validation[schema.TIMESTAMP].max() < grown.holdout[schema.TIMESTAMP].min()
    assert len(grown.validation) == pytest.approx(split_cfg.validation_fraction * len(small_fleet), rel=0.01)
    # the pin freezes the grown holdout and records its evidence
    pin = SplitPin.of(grown, merge_gap=gap, min_episodes=want)
    assert pin.holdout_episodes == holdout_episode_count(grown.holdout, gap)
    assert pin.min_holdout_episodes == want and SplitPin.from_dict(pin.to_dict()) == pin
    again, _ = prepare_split(small_fleet, split_cfg, pin=pin, gates=gates)
    assert again.holdout_sha256 == grown.holdout_sha256


def test_holdout_is_kept_when_the_labels_cannot_give_enough_episodes(small_fleet, sim_params) -> None:
    gap = sim_params.gates.episode_merge_gap
    split_cfg, gates = _evidence(sim_params, holdout_episode_count(small_fleet, gap) + 1, 0.6)
    kept, _ = prepare_split(small_fleet, split_cfg, gates=gates)
    assert kept.holdout_sha256 == time_split(small_fleet, sim_params.split).holdout_sha256
    split_cfg, gates = _evidence(sim_params, 1, 0.6)
    enough, _ = prepare_split(small_fleet, split_cfg, gates=gates)  # already enough: unchanged
    assert enough.holdout_sha256 == kept.holdout_sha256


def test_a_pin_written_before_episodes_were_recorded_still_loads(small_fleet, sim_params) -> None:
    pin = SplitPin.of(time_split(small_fleet, sim_params.split))
    old = {k: v for k, v in pin.to_dict().items() if k not in ("holdout_episodes", "min_holdout_episodes")}
    assert SplitPin.from_dict(old) == pin and pin.holdout_episodes is None
