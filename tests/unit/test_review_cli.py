"""``plantwatch review list/show/label/stats`` against a throw-away project."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from plantwatch.cli import app
from plantwatch.review import ReviewQueue


@pytest.fixture()
def queue(project: Path) -> ReviewQueue:
    q = ReviewQueue(project / "data" / "review" / "queue.sqlite")  # params.yaml's review.db_path
    q.enqueue(
        [
            {"asset": "pump-1", "timestamp": f"2024-02-01T10:0{m}:00", "score": 0.7 + m / 100,
             "threshold": 0.8, "model_version": "v1", "decision": "review",
             "top_sensors": [{"sensor": "vibration", "contribution": 0.4}]}
            for m in range(3)
        ]
    )
    return q


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, ["review", *args])


def _error_lines(result: Result) -> list[str]:
    return [ln for ln in result.output.splitlines() if ln.strip()]


def test_list_label_show_and_stats_as_json(queue: ReviewQueue) -> None:
    listed = _run("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [i["id"] for i in json.loads(listed.stdout)] == [1, 2, 3]

    labelled = _run("label", "2", "--verdict", "anomaly", "--by", "ann", "--note", "bearing noise")
    assert labelled.exit_code == 0, labelled.output
    assert "item 2: labelled anomaly by ann" in labelled.stdout
    repeat = _run("label", "2", "--verdict", "anomaly", "--by", "ann")
    assert repeat.exit_code == 0 and "unchanged" in repeat.stdout

    shown = json.loads(_run("show", "2", "--json").stdout)
    assert (shown["verdict"], shown["reviewer"], shown["note"]) == ("anomaly", "ann", "bearing noise")
    assert [(h["verdict"], h["reviewer"]) for h in shown["history"]] == [("anomaly", "ann")]

    assert [i["id"] for i in json.loads(_run("list", "--json").stdout)] == [1, 3]
    assert [i["id"] for i in json.loads(_run("list", "--status", "labelled", "--json").stdout)] == [2]
    assert len(json.loads(_run("list", "--status", "all", "--limit", "2", "--json").stdout)) == 2

    stats = json.loads(_run("stats", "--json").stdout)
    assert (stats["open"], stats["labelled"], stats["by_verdict"]["anomaly"]) == (2, 1, 1)
    assert stats["scored_readings"] is None and stats["review_rate"] is None  # no inference log yet
    assert queue.get(2).verdict == "anomaly"


def test_human_readable_output(queue: ReviewQueue) -> None:
    queue.label(1, "normal", "bob")
    for args, expected in (
        (("list", "--status", "all"), "review items (3)"),
        (("show", "1"), "verdict history"),
        (("stats",), "no inference log"),
    ):
        result = _run(*args)
        assert result.exit_code == 0, result.output
        assert expected in result.stdout


def test_stats_review_rate_counts_the_inference_log(project: Path, queue: ReviewQueue) -> None:
    part = project / "data" / "inference" / "date=2024-02-01"
    part.mkdir(parents=True)
    pd.DataFrame({"score": np.zeros(300)}).to_parquet(part / "batch-0.parquet")
    stats = json.loads(_run("stats", "--json").stdout)
    assert stats["scored_readings"] == 300
    assert stats["review_rate"] == pytest.approx(3 / 300)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("label", "1", "--verdict", "maybe", "--by", "ann"), 2, "verdict 'maybe'"),
        (("label", "99", "--verdict", "normal", "--by", "ann"), 1, "review item 99 not found"),
        (("label", "abc", "--verdict", "normal", "--by", "ann"), 2, "item id 'abc'"),
        (("show", "99"), 1, "review item 99 not found"),
        (("list", "--status", "closed"), 2, "status 'closed'"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    queue: ReviewQueue, args: tuple[str, ...], code: int, message: str
) -> None:
    result = _run(*args)
    assert result.exit_code == code, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert queue.history() == []


def test_a_project_without_a_queue_reads_as_empty_and_creates_nothing(project: Path) -> None:
    assert json.loads(_run("list", "--json").stdout) == []
    stats = json.loads(_run("stats", "--json").stdout)
    assert (stats["total"], stats["history_rows"]) == (0, 0)
    missing = _run("label", "1", "--verdict", "normal", "--by", "ann")
    assert missing.exit_code == 1 and "no review queue" in missing.output
    assert _run("label", "1", "--verdict", "maybe", "--by", "ann").exit_code == 2
    assert _run("show", "1").exit_code == 1
    assert not (project / "data").exists()
