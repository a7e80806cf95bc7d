"""merge_review_labels: reviewed verdicts override source labels; the review loop improves evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from plantwatch.errors import DataError
from plantwatch.review import (
    LABEL_SOURCE,
    MergeSummary,
    ReviewQueue,
    candidates_from_scored,
    merge_review_labels,
)
from plantwatch.schema import ASSET, LABEL, TIMESTAMP


def _frame() -> pd.DataFrame:
    ts = pd.date_range("2024-02-01", periods=4, freq="min")
    return pd.DataFrame(
        {
            TIMESTAMP: list(ts) * 2,
            ASSET: ["pump-1"] * 4 + ["fan-2"] * 4,
            "vibration": np.arange(8, dtype=float),
            LABEL: [0, 0, 1, 0, 0, 0, 0, 1],
        }
    )


def _labels(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            TIMESTAMP: pd.to_datetime([r[1] for r in rows]),
            ASSET: [r[0] for r in rows],
            LABEL: [r[2] for r in rows],
        }
    )


def test_reviewed_labels_override_source_and_are_counted() -> None:
    df = _frame()
    labels = _labels(
        [
            ("pump-1", "2024-02-01 00:01", 1),   # source 0 -> 1: changed
            ("pump-1", "2024-02-01 00:02", 1),   # source 1 -> 1: matched, confirmed
            ("fan-2", "2024-02-01 00:03", 0),    # source 1 -> 0: changed
            ("fan-2", "2024-03-01 00:00", 1),    # no such row: unmatched
        ]
    )
    merged, summary = merge_review_labels(df, labels)
    assert summary == MergeSummary(labels=4, matched=3, changed=2, unmatched=1, rows_relabelled=2)
    assert merged[LABEL].tolist() == [0, 1, 1, 0, 0, 0, 0, 0]
    assert merged[LABEL_SOURCE].tolist() == (
        ["source", "review", "review", "source"] + ["source"] * 3 + ["review"]
    )
    assert merged[LABEL].dtype == df[LABEL].dtype
    assert df[LABEL].tolist() == [0, 0, 1, 0, 0, 0, 0, 1]  # input untouched (pure)
    assert merged.drop(columns=[LABEL, LABEL_SOURCE]).equals(df.drop(columns=[LABEL]))
    assert "3 matched" in str(summary) and "2 changed" in str(summary)


def test_merge_matches_tz_aware_labels_and_latest_duplicate_wins() -> None:
    df = _frame()
    labels = pd.DataFrame(
        {
            TIMESTAMP: pd.to_datetime(["2024-02-01 01:00+01:00", "2024-02-01 00:00+00:00"], utc=True),
            ASSET: ["pump-1", "pump-1"],
            LABEL: [1, 0],
            "labelled_at": pd.to_datetime(["2024-03-02", "2024-03-01"]),
        }
    )
    merged, summary = merge_review_labels(df, labels)
    assert (summary.labels, summary.matched, summary.changed, summary.duplicates_dropped) == (1, 1, 1, 1)
    assert merged[LABEL].iloc[0] == 1  # 01:00+01:00 is 00:00 UTC; the later verdict (1) wins


def test_merge_counts_readings_not_rows_when_a_frame_repeats_a_reading() -> None:
    df = pd.concat([_frame().iloc[:2], _frame().iloc[:2]], ignore_index=True)
    merged, summary = merge_review_labels(df, _labels([("pump-1", "2024-02-01 00:00", 1)]))
    assert (summary.matched, summary.changed, summary.rows_relabelled) == (1, 1, 2)
    assert merged[LABEL].tolist() == [1, 0, 1, 0]


def test_merge_is_idempotent_and_empty_labels_change_nothing() -> None:
    labels = _labels([("pump-1", "2024-02-01 00:01", 1)])
    once, _ = merge_review_labels(_frame(), labels)
    twice, summary = merge_review_labels(once, labels)
    pd.testing.assert_frame_equal(once, twice)
    assert (summary.matched, summary.changed) == (1, 0)
    same, empty = merge_review_labels(_frame(), labels.iloc[0:0])
    assert empty == MergeSummary(0, 0, 0, 0)
    assert same[LABEL].tolist() == _frame()[LABEL].tolist() and set(same[LABEL_SOURCE]) == {"source"}


def test_merge_into_bool_labels_keeps_integers() -> None:
    df = _frame().assign(**{LABEL: _frame()[LABEL].astype(bool)})
    merged, _ = merge_review_labels(df, _labels([("pump-1", "2024-02-01 00:00", 1)]))
    assert merged[LABEL].tolist() == [1, 0, 1, 0, 0, 0, 0, 1]


@pytest.mark.parametrize(
    ("frame", "labels", "match"),
    [
        (_frame(), _labels([("pump-1", "2024-02-01 00:00", 2)]), "not 0/1"),
        (_frame(), _labels([("pump-1", "2024-02-01 00:00", 1)]).drop(columns=[ASSET]), "lack column"),
        (_frame().drop(columns=[LABEL]), _labels([("pump-1", "2024-02-01 00:00", 1)]), "no label column"),
        (_frame().drop(columns=[TIMESTAMP]), _labels([("pump-1", "2024-02-01 00:00", 1)]), "timestamp"),
    ],
)
def test_merge_rejects_unusable_inputs(frame: pd.DataFrame, labels: pd.DataFrame, match: str) -> None:
    with pytest.raises(DataError, match=match):
        merge_review_labels(frame, labels)


def test_review_loop_moves_average_precision_toward_the_truth(project: Path) -> None:
    """Borderline/alerting readings are queued, reviewed, merged: evaluation then sees the truth.

    The source labels are wrong on exactly the readings a human looks at: some alerts are real faults
    the label log missed, and a too-wide maintenance window marked normal review-band readings as
    anomalies. After review, average precision of the same scores must rise to the ground-truth value.
    """
    rng = np.random.default_rng(7)
    threshold, review_low = 0.8, 0.6
    n_normal, n_fault, n_band = 200, 15, 20
    score = np.concatenate(
        [
            rng.uniform(0.0, 0.5, n_normal),                 # clearly normal, never queued
            rng.uniform(threshold, 1.0, n_fault),            # true faults, alerted
            rng.uniform(review_low, threshold, n_band),      # review band, truly normal
        ]
    )
    truth = np.r_[np.zeros(n_normal), np.ones(n_fault), np.zeros(n_band)].astype(int)
    source = truth.copy()
    source[n_normal : n_normal + 5] = 0                       # 5 faults missing from the label log
    source[n_normal + n_fault : n_normal + n_fault + 10] = 1  # 10 normal readings inside a wide window
    n = len(score)
    scored = pd.DataFrame(
        {
            TIMESTAMP: pd.date_range("2024-02-01", periods=n, freq="min"),
            ASSET: np.where(np.arange(n) % 2 == 0, "pump-1", "fan-2"),
            "vibration": rng.normal(5.0, 1.0, n),
            "score": score,
            "decision": np.select([score >= threshold, score >= review_low], ["alert", "review"], "normal"),
        }
    )
    source_frame = scored[[TIMESTAMP, ASSET, "vibration"]].assign(**{LABEL: source})

    queue = ReviewQueue(project / "data" / "review" / "queue.sqlite")
    ids = queue.enqueue(
        candidates_from_scored(scored, model_version="v1", threshold=threshold, sensors=["vibration"])
    )
    assert len(ids) == n_fault + n_band
    truth_of = {(a, t): y for a, t, y in zip(scored[ASSET], scored[TIMESTAMP], truth, strict=True)}
    for item in queue.list(status="open"):
        verdict = "anomaly" if truth_of[(item.asset, pd.Timestamp(item.timestamp))] else "normal"
        queue.label(item.id, verdict, by="oracle")

    merged, summary = merge_review_labels(source_frame, queue.reviewed_labels())
    assert (summary.matched, summary.changed, summary.unmatched) == (n_fault + n_band, 15, 0)
    ap_source = average_precision_score(source, score)
    ap_merged = average_precision_score(merged[LABEL], score)
    ap_truth = average_precision_score(truth, score)
    assert ap_merged == pytest.approx(ap_truth)
    assert ap_merged > ap_source + 0.1
    assert (merged[LABEL_SOURCE] == "review").sum() == n_fault + n_band
    stats = queue.stats()
    assert stats.alert_confirmed_share == 1.0 and stats.review_confirmed_share == 0.0
