"""Canonical column names of plantwatch's internal telemetry frame.

``ingest`` renames the user's columns to these, so every later stage (validation, features,
training, scoring, monitoring) speaks one vocabulary. Sensor columns keep the user's names.
"""

from __future__ import annotations

TIMESTAMP = "timestamp"
ASSET = "asset"
LABEL = "label"
#: The source's own label, kept beside ``label`` when reviewers' verdicts were merged in, so the gate
#: report can say how the reviewed labels moved the metrics.
SOURCE_LABEL = "source_label"
#: Simulator-only metadata: which fault kind produced an anomalous row ("none" for normal rows).
FAULT_KIND = "fault_kind"
#: Row identity used to trace quarantined rows back to their batch.
ROW_ID = "row_id"
BATCH_ID = "batch_id"

#: Score direction, stated once for the whole project: a HIGHER score means MORE anomalous.
HIGHER_IS_MORE_ANOMALOUS = True

#: Decisions a scored reading can get.
DECISION_NORMAL = "normal"
DECISION_REVIEW = "review"
DECISION_ALERT = "alert"
DECISIONS = (DECISION_NORMAL, DECISION_REVIEW, DECISION_ALERT)
