"""Cores of the ``features`` and ``train`` stages (pure: frames and config blocks in, objects out).

``prepare_split``: (review labels merged) canonical frame -> train / validation / holdout by time.

``train_candidates`` — for each candidate (``baseline``: default IsolationForest on raw sensors;
``custom``: engineered features + ``EnsembleDetector``):

1. **Fit on normal.** Detectors are unsupervised; rows labelled anomalous are left out of fitting
   (``train.fit_on_normal``), so known faults do not become part of "normal". Features of the
   kept rows are still computed on the uninterrupted stream, so their windows see real history.
2. **Time-ordered CV** over train+validation, never the holdout: ``train.cv_folds`` expanding-window
   folds. The first ``cv_min_train_fraction`` of the rows (in time order; at least the official
   training part when ``data.train_rows`` is set, because it has no labels) is history only; the
   rest is cut into equal test blocks. Fold *k* fits on everything before the block preceding its
   test block, calibrates its threshold on that preceding block and is scored on its test block —
   the same fit / calibrate / evaluate roles train, validation and holdout play in the final model.
   The custom model's hyperparameters are the grid point (``train.model.grid``) with the best mean
   CV PR-AUC; the reported CV metrics are those of the chosen point.
3. **Final fit** on the train part, then the **operating threshold** from the alert budget on the
   validation part (``thresholds.calibrate``) and the review band below it.

Folds and candidates are independent tasks run through ``plantwatch.parallel`` (local processes,
in-process, or a Dask cluster).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plantwatch import schema
from plantwatch.bundle import DetectorBundle, feature_matrix, history_tail, save_bundle
from plantwatch.config import (
    DataConfig,
    FeaturesConfig,
    GatesConfig,
    Params,
    RulesConfig,
    ScaleConfig,
    SplitConfig,
    TrainConfig,
)
from plantwatch.errors import DataError
from plantwatch.evaluation import frame_arrays, pr_auc
from plantwatch.features import FeatureBuilder, Split, time_split
from plantwatch.parallel import run_calls
from plantwatch.paths import ProjectPaths
from plantwatch.registry.atomic import atomic_write_json
from plantwatch.rules import rules_from_config
from plantwatch.split_pin import SplitPin, grow_for_evidence, holdout_episode_count, pinned_split
from plantwatch.thresholds import calibrate

log = logging.getLogger(__name__)

BASELINE = "baseline"
CUSTOM = "custom"
#: Bundle metadata key: false alarms per asset-day on the validation period at the chosen threshold.
VALIDATION_FA = "validation_false_alarms_per_asset_day"


# ---------------------------------------------------------------------------------------------------
# features stage
# ---------------------------------------------------------------------------------------------------


def prepare_split(
    clean: pd.DataFrame,
    split: SplitConfig,
    *,
    train_rows: int | None = None,
    review_labels: pd.DataFrame | None = None,
    pin: SplitPin | None = None,
    gates: GatesConfig | None = None,
) -> tuple[Split, int]:
    """Reviewed labels (if any) override source labels, then the time split; returns (split, labels used).

    Labels are merged BEFORE splitting so that threshold calibration (validation) and evaluation
    (holdout) both see the reviewers' verdicts. With a ``pin`` (a retrain), the validation and holdout
    periods are the pinned ones and every other row, newer ones included, trains. Without a pin and
    with ``gates``, the holdout grows (up to ``split.max_holdout_fraction``) until it holds
    ``gates.min_holdout_episodes`` fault episodes when the labels allow (``grow_for_evidence``), so
    the gates have enough evidence to judge; the pipeline passes them, other callers may not.
    """
    used = 0
    if review_labels is not None and not review_labels.empty:
        from plantwatch.review import merge_review_labels

        if schema.LABEL in clean.columns:
            clean = clean.assign(**{schema.SOURCE_LABEL: clean[schema.LABEL]})
        clean, summary = merge_review_labels(clean, review_labels)
        used = int(summary.matched)
    if pin is not None:
        return pinned_split(clean, pin, train_rows=train_rows), used
    base = time_split(clean, split, train_rows=train_rows)
    if gates is None:
        return base, used
    grown = grow_for_evidence(
        clean, base, min_episodes=gates.min_holdout_episodes, merge_gap=gates.episode_merge_gap,
        validation_fraction=split.validation_fraction, max_holdout_fraction=split.max_holdout_fraction,
    )
    return grown, used


# ---------------------------------------------------------------------------------------------------
# folds
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fold:
    """Rows before ``fit_end`` fit, ``[fit_end, test_start)`` calibrate, ``[test_start, test_end)`` test."""

    index: int
    fit_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    def parts(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        ts = frame[schema.TIMESTAMP]
        return (
            frame[ts < self.fit_end],
            frame[(ts >= self.fit_end) & (ts < self.test_start)],
            frame[(ts >= self.test_start) & (ts < self.test_end)],
        )

    def to_dict(self, frame: pd.DataFrame | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fold": self.index,
            "fit_end": self.fit_end.isoformat(),
            "test_start": self.test_start.isoformat(),
            "test_end": self.test_end.isoformat(),
        }
        if frame is not None:
            sizes = (len(p) for p in self.parts(frame))
            out["rows"] = dict(zip(("fit", "calibrate", "test"), sizes, strict=True))
        return out


def make_folds(
    timestamps: pd.Series, n_folds: int, min_train_fraction: float, min_train_rows: int = 0
) -> list[Fold]:
    """Expanding-window folds by row count in time order (see the module docstring)."""
    t = np.sort(np.asarray(timestamps, dtype="datetime64[ns]"))
    n = t.size
    initial = max(int(math.ceil(n * min_train_fraction)), int(min_train_rows))
    block = (n - initial) // n_folds
    if block < 1 or initial - block < 1:
        raise DataError(
            f"{n} rows cannot make {n_folds} CV folds after a {initial}-row initial window; "
            "use more data, fewer folds or a smaller train.cv_min_train_fraction"
        )
    end = pd.Timestamp(t[-1]) + pd.Timedelta(1, "ns")
    folds = []
    for k in range(n_folds):
        start = initial + k * block
        stop = initial + (k + 1) * block if k < n_folds - 1 else n
        folds.append(
            Fold(
                index=k,
                fit_end=pd.Timestamp(t[start - block]),
                test_start=pd.Timestamp(t[start]),
                test_end=pd.Timestamp(t[stop]) if stop < n else end,
            )
        )
    return folds


# ---------------------------------------------------------------------------------------------------
# candidates
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The config blocks the train core reads, bundled so that tasks can be shipped to workers."""

    data: DataConfig
    features: FeaturesConfig
    train: TrainConfig
    rules: RulesConfig


def grid_points(train: TrainConfig) -> list[dict[str, Any]]:
    """Every combination of ``train.model.grid`` (``[{}]`` when the grid is empty)."""
    from plantwatch.model import grid_candidates

    points: list[dict[str, Any]] = list(grid_candidates(train.model))
    return points or [{}]


def _normal_mask(frame: pd.DataFrame, fit_on_normal: bool) -> np.ndarray:
    if fit_on_normal and schema.LABEL in frame.columns:
        return frame[schema.LABEL].fillna(0).to_numpy() == 0
    return np.ones(len(frame), dtype=bool)


def fit_features(kind: str, fit: pd.DataFrame, s: Settings) -> tuple[FeatureBuilder, np.ndarray]:
    """FeatureBuilder fitted on the normal rows of ``fit``; returns it and those rows' features."""
    normal = _normal_mask(fit, s.train.fit_on_normal)
    if not normal.any():
        raise DataError("no normal rows to fit on")
    fb = FeatureBuilder.from_config(
        s.features, s.data.sensor_names, default_asset=s.data.default_asset,
        raw=(kind == BASELINE), random_state=s.train.seed,
    ).fit(fit[normal])
    return fb, feature_matrix(fb, fit, keep=normal)


def make_detector(kind: str, hyper: dict[str, Any], s: Settings, features: FeatureBuilder) -> Any:
    """Unfitted detector of a candidate kind for the fitted ``features`` (whose column names it
    gets: features travel as plain arrays, and ``joint_kinds`` selects columns by name)."""
    from plantwatch.model import BaselineDetector, EnsembleDetector, name_features

    if kind == BASELINE:
        return BaselineDetector(random_state=s.train.seed)
    params = {**s.train.model.estimator_params(), **hyper}
    return name_features(EnsembleDetector(random_state=s.train.seed, **params), features)


def _operating_point(scores: np.ndarray, frame: pd.DataFrame, s: Settings) -> dict[str, float]:
    labels, assets, ts = frame_arrays(frame)
    t = s.train
    budget = t.alert_budget * t.calibration_headroom
    cal = calibrate(scores, labels, assets, ts, budget, t.review_band, t.episode_gap)
    return {"threshold": cal.threshold, "review_low": cal.review_low,
            "false_alarms_per_asset_day": cal.false_alarms_per_asset_day}


def run_fold(
    kind: str, grid: list[dict[str, Any]], frame: pd.DataFrame, fold: Fold, s: Settings
) -> list[dict[str, Any]]:
    """One CV fold of one candidate, for every grid point: threshold from the calibration block,
    scores of the test block.

    Features are fitted once per fold (they do not depend on the detector's hyperparameters). The
    fold's rows are cut here, in the worker, so only the whole frame travels. Module-level and
    deterministic so it can run in another process or on a Dask worker.
    """
    fit, cal, test = fold.parts(frame)
    fb, X_fit = fit_features(kind, fit, s)
    X_cal = feature_matrix(fb, cal, context=fit)
    X_test = feature_matrix(fb, test, context=pd.concat([history_tail(fit, fb.window_), cal]))
    out = []
    for hyper in grid:
        det = make_detector(kind, hyper, s, fb).fit(X_fit)
        op = _operating_point(det.anomaly_score(X_cal), cal, s)
        out.append({"params": hyper, **op, "scores": det.anomaly_score(X_test).astype(np.float64)})
    return out


def fit_final(kind: str, hyper: dict[str, Any], train: pd.DataFrame, validation: pd.DataFrame, s: Settings,
              assets: list[str]) -> DetectorBundle:
    """The candidate's bundle: fitted on ``train``, operating point set on ``validation``."""
    fb, X_fit = fit_features(kind, train, s)
    det = make_detector(kind, hyper, s, fb).fit(X_fit)
    bundle = DetectorBundle(
        kind=kind, sensors=s.data.sensor_names, assets=assets, features=fb, detector=det,
        threshold_=math.inf, review_low_=math.inf, rules=rules_from_config(s.rules, s.data),
        metadata={"hyperparameters": dict(hyper), "detector": type(det).__name__},
    )
    scores = bundle.anomaly_score(validation, context=train)
    op = _operating_point(scores, validation, s)
    bundle.metadata[VALIDATION_FA] = op["false_alarms_per_asset_day"]
    return bundle.set_operating_point(op["threshold"], op["review_low"])


# ---------------------------------------------------------------------------------------------------
# the train stage
# ---------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """Everything the train stage produces (the I/O shell writes it to models/)."""

    bundles: dict[str, DetectorBundle]
    folds: list[dict[str, Any]]
    #: custom grid: one entry per grid point with its per-fold and mean CV PR-AUC
    selection: list[dict[str, Any]]
    hyperparameters: dict[str, dict[str, Any]]
    #: chosen configuration of each candidate on each fold's test block: candidate, fold, asset,
    #: timestamp, label, score, threshold, review_low (metrics/cv.json is computed from it)
    cv_scores: pd.DataFrame


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values([schema.ASSET, schema.TIMESTAMP], kind="stable").reset_index(drop=True)


def _select(kind: str, grid: list[dict[str, Any]], outcomes: list[list[dict[str, Any]]],
            test_labels: list[np.ndarray]) -> tuple[int, list[dict[str, Any]]]:
    """Grid point with the best mean CV PR-AUC (first one on ties / when no fold has anomalies)."""
    table = []
    for g, hyper in enumerate(grid):
        per_fold = [pr_auc(y, out[g]["scores"]) for out, y in zip(outcomes, test_labels, strict=True)]
        finite = [v for v in per_fold if math.isfinite(v)]
        table.append({"candidate": kind, "params": hyper, "fold_pr_auc": per_fold,
                      "mean_pr_auc": float(np.mean(finite)) if finite else math.nan})
    means = np.array([row["mean_pr_auc"] for row in table])
    if not np.isfinite(means).any():
        log.warning("%s: no CV fold has labelled anomalies; keeping the first grid point", kind)
        return 0, table
    return int(np.nanargmax(means)), table


def _fold_frame(kind: str, fold: Fold, test: pd.DataFrame, outcome: dict[str, Any]) -> pd.DataFrame:
    """One fold's test-block scores of the chosen configuration (a slice of ``cv_scores``)."""
    labels, assets, ts = frame_arrays(test)
    return pd.DataFrame({
        "candidate": kind, "fold": fold.index, schema.ASSET: assets, schema.TIMESTAMP: ts,
        schema.LABEL: labels, "score": outcome["scores"],
        "threshold": outcome["threshold"], "review_low": outcome["review_low"],
    })


def train_candidates(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    s: Settings,
    scale: ScaleConfig,
    *,
    official_train_rows: bool = False,
    cv_until: pd.Timestamp | None = None,
) -> TrainResult:
    """Cross-validate every candidate, pick the custom model's hyperparameters, fit the final bundles.

    ``official_train_rows``: the train part is a dataset's official (unlabelled) training part, so
    CV test blocks must lie after it. The holdout is not an argument: it cannot leak into training.
    ``cv_until`` (the pinned holdout's start): rows at or after it — production data appended after
    the frozen holdout by retrains, unlabelled — train the final model but are not CV test blocks,
    so CV keeps measuring on the labelled period and stays comparable across retrains.
    A candidate without a grid has nothing to select, so its final fit runs alongside the CV folds.
    """
    combined = _canonical(pd.concat([train, validation], ignore_index=True))
    if cv_until is not None:
        combined = combined[combined[schema.TIMESTAMP] < cv_until].reset_index(drop=True)
    official = int((train[schema.TIMESTAMP] < cv_until).sum()) if cv_until is not None else len(train)
    folds = make_folds(combined[schema.TIMESTAMP], s.train.cv_folds, s.train.cv_min_train_fraction,
                       min_train_rows=official if official_train_rows else 0)
    kinds = list(s.train.candidates)
    grids: dict[str, list[dict[str, Any]]] = {
        kind: (grid_points(s.train) if kind == CUSTOM else [{}]) for kind in kinds}
    assets = sorted(combined[schema.ASSET].astype(str).unique())

    def final_call(kind: str, hyper: dict[str, Any]) -> dict[str, Any]:
        return {"kind": kind, "hyper": hyper, "train": train, "validation": validation, "s": s,
                "assets": assets}

    fixed = [kind for kind in kinds if len(grids[kind]) == 1]
    cv_calls = [{"kind": kind, "grid": grids[kind], "frame": combined, "fold": fold, "s": s}
                for kind in kinds for fold in folds]
    jobs = [(run_fold, call) for call in cv_calls] + [(fit_final, final_call(k, grids[k][0])) for k in fixed]
    done = run_calls(_apply, [{"fn": fn, "kwargs": kw} for fn, kw in jobs], scale, label="train")
    results, bundles = done[:len(cv_calls)], dict(zip(fixed, done[len(cv_calls):], strict=True))

    tests = [fold.parts(combined)[2] for fold in folds]
    test_labels = [frame_arrays(t)[0] for t in tests]
    chosen: dict[str, dict[str, Any]] = {}
    selection: list[dict[str, Any]] = []
    cv_parts = []
    for i, kind in enumerate(kinds):
        outcomes = results[i * len(folds):(i + 1) * len(folds)]
        best, table = _select(kind, grids[kind], outcomes, test_labels)
        chosen[kind] = grids[kind][best]
        if kind == CUSTOM:
            selection = table
        cv_parts += [_fold_frame(kind, fold, test, out[best])
                     for fold, test, out in zip(folds, tests, outcomes, strict=True)]
    log.info("hyperparameters chosen by CV: %s", chosen)

    rest = [kind for kind in kinds if kind not in bundles]
    bundles |= dict(zip(rest, run_calls(fit_final, [final_call(k, chosen[k]) for k in rest], scale,
                                        label="fit"), strict=True))
    return TrainResult(
        bundles={kind: bundles[kind] for kind in kinds},
        folds=[fold.to_dict(combined) for fold in folds],
        selection=selection,
        hyperparameters=chosen,
        cv_scores=pd.concat(cv_parts, ignore_index=True),
    )


def _apply(fn: Any, kwargs: dict[str, Any]) -> Any:
    """``fn(**kwargs)``: lets CV folds and final fits share one parallel batch."""
    return fn(**kwargs)


# ---------------------------------------------------------------------------------------------------
# I/O shells (files in, files out) — what the CLI, DVC and flows call
# ---------------------------------------------------------------------------------------------------

#: Parts written by the features stage, in time order.
PARTS = ("train", "validation", "holdout")
#: The params blocks a trained model depends on (hashed into train_info.json).
TRAIN_PARAM_BLOCKS = ("data", "split", "features", "train", "rules")
_MD5_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    """The md5 DVC records for a file (its bytes' md5), so train_info matches dvc.lock."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_MD5_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(root: Path) -> str:
    """``git rev-parse HEAD`` of the project, or "unknown" outside a git work tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def params_hash(params: Params, blocks: tuple[str, ...]) -> str:
    """sha256 of the canonical JSON (sorted keys) of the named params blocks."""
    dumped = {b: getattr(params, b).model_dump(mode="json") for b in blocks}
    return hashlib.sha256(json.dumps(dumped, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_part(paths: ProjectPaths, name: str) -> pd.DataFrame:
    path = paths.processed / f"{name}.parquet"
    if not path.is_file():
        raise DataError(f"{path.relative_to(paths.root)} not found: run `plantwatch features` first")
    return pd.read_parquet(path)


def read_json(path: Path, root: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path.relative_to(root)} not found: run `plantwatch {hint}` first")
    return json.loads(path.read_text())


def features_stage(paths: ProjectPaths, params: Params) -> dict[str, Any]:
    """``plantwatch features``: clean.parquet (+ reviewed labels) -> train/validation/holdout + split.json."""
    clean_path = paths.processed / "clean.parquet"
    if not clean_path.is_file():
        raise DataError("data/processed/clean.parquet not found: run `plantwatch validate` first")
    clean = pd.read_parquet(clean_path)
    labels = None
    review_db = paths.resolve(params.review.db_path)
    if review_db.is_file():
        from plantwatch.review import ReviewQueue

        labels = ReviewQueue.for_project(paths, params.review).reviewed_labels()
    pin_file = paths.resolve(params.split.pin_path) if params.split.pin_path else None
    pin = SplitPin.from_dict(json.loads(pin_file.read_text())) if pin_file and pin_file.is_file() else None
    split, used = prepare_split(
        clean, params.split, train_rows=params.data.train_rows, review_labels=labels, pin=pin,
        gates=params.gates,
    )
    if pin_file is not None and pin is None:
        pinned = SplitPin.of(split, merge_gap=params.gates.episode_merge_gap,
                             min_episodes=params.gates.min_holdout_episodes)
        atomic_write_json(pin_file, pinned.to_dict())
    paths.processed.mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        getattr(split, name).to_parquet(paths.processed / f"{name}.parquet", index=False)
    info = {**split.boundaries(), "review_labels_used": used, "source_md5": file_md5(clean_path),
            "pinned": pin is not None,
            "holdout_episodes": holdout_episode_count(split.holdout, params.gates.episode_merge_gap),
            "min_holdout_episodes": params.gates.min_holdout_episodes}
    atomic_write_json(paths.processed / "split.json", info)
    return info


def _window(frame: pd.DataFrame) -> dict[str, str]:
    ts = frame[schema.TIMESTAMP]
    return {"start": pd.Timestamp(ts.min()).isoformat(), "end": pd.Timestamp(ts.max()).isoformat()}


def train_info(result: TrainResult, train: pd.DataFrame, validation: pd.DataFrame, paths: ProjectPaths,
               params: Params, split: dict[str, Any]) -> dict[str, Any]:
    """models/train_info.json: provenance (git, data md5, params hash) and what was chosen how."""
    clean = paths.processed / "clean.parquet"
    candidates = {}
    for kind, bundle in result.bundles.items():
        candidates[kind] = {
            "kind": kind,
            "artifact": f"models/{kind}.skops",
            "detector": bundle.metadata.get("detector"),
            "features": list(bundle.features.feature_names_out_),
            "hyperparameters": result.hyperparameters[kind],
            "threshold": bundle.threshold_,
            "review_low": bundle.review_low_,
            "validation_false_alarms_per_asset_day": bundle.metadata.get(VALIDATION_FA),
        }
    return {
        "git_commit": git_commit(paths.root),
        "data_path": "data/processed/clean.parquet",
        "data_hash": file_md5(clean) if clean.is_file() else None,
        "params_hash": params_hash(params, TRAIN_PARAM_BLOCKS),
        "params_blocks": list(TRAIN_PARAM_BLOCKS),
        "sources": list(params.data.sources),
        "training_window": _window(train),
        "validation_window": _window(validation),
        "holdout_start": split.get("holdout_start"),
        "holdout_sha256": split.get("holdout_sha256"),
        "rows": {"train": len(train), "validation": len(validation),
                 "train_fitted": int(_normal_mask(train, params.train.fit_on_normal).sum())},
        "fit_on_normal": params.train.fit_on_normal,
        "review_labels_used": split.get("review_labels_used", 0),
        "candidate_kinds": list(result.bundles),
        "candidates": candidates,
        "cv": {"folds": result.folds, "selection_metric": "pr_auc", "grid": result.selection},
        "alert_budget": params.train.alert_budget,
        "seed": params.train.seed,
    }


def train_stage(paths: ProjectPaths, params: Params) -> dict[str, Any]:
    """``plantwatch train``: the processed parts -> models/<candidate>.skops, cv_scores, train_info.json."""
    train, validation = read_part(paths, "train"), read_part(paths, "validation")
    split = read_json(paths.processed / "split.json", paths.root, "features")
    settings = Settings(data=params.data, features=params.features, train=params.train, rules=params.rules)
    result = train_candidates(train, validation, settings, params.scale,
                              official_train_rows=params.data.train_rows is not None,
                              cv_until=pd.Timestamp(split["holdout_start"]))
    paths.models.mkdir(parents=True, exist_ok=True)
    for kind, bundle in result.bundles.items():
        save_bundle(bundle, paths.models / f"{kind}.skops")
    result.cv_scores.to_parquet(paths.models / "cv_scores.parquet", index=False)
    info = train_info(result, train, validation, paths, params, split)
    atomic_write_json(paths.models / "train_info.json", info)
    return info
