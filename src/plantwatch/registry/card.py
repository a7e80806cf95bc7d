"""Model card: what a registered version is, what it was trained on, how it did, why it won.

Pure functions: ``build_model_card`` assembles a JSON-able dict from the gate stage's outputs;
``render_model_card_md`` turns that dict into Markdown. Both files are stored inside the model
folder, so the card travels with the version it describes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from plantwatch.registry.atomic import json_safe

CARD_SCHEMA_VERSION = 1


def _candidates(holdout: Mapping[str, Any], cv: Mapping[str, Any], chosen: str) -> list[str]:
    """Candidates compared, chosen first, then the others in file order."""
    names = [chosen] + [n for n in (*holdout.keys(), *cv.keys()) if n != chosen]
    return list(dict.fromkeys(names))


def build_model_card(
    *,
    tag: str,
    created: str,
    kind: str,
    train_info: Mapping[str, Any],
    holdout: Mapping[str, Any],
    cv: Mapping[str, Any],
    gates: Mapping[str, Any],
    passed: bool,
    reasons: Sequence[str],
    threshold: float | None,
    review_low: float | None,
    alert_budget: float | None,
    intended_use: str,
    limitations: Sequence[str],
    data_sources: Sequence[str],
    artifact: str,
    artifact_sha256: str,
    gate_report: str | None,
) -> dict[str, Any]:
    """The card of one version as plain data (the JSON file; the Markdown is rendered from it)."""
    chosen = str(gates.get("chosen", kind))
    names = _candidates(holdout, cv, chosen)
    notes = [str(n) for n in gates.get("notes", []) or []]
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "model": {
            "tag": tag,
            "created": created,
            "kind": kind,
            "artifact": artifact,
            "sha256": artifact_sha256,
        },
        "intended_use": intended_use,
        "data": {
            "sources": list(train_info.get("sources") or data_sources),
            "data_hash": train_info.get("data_hash"),
            "training_window": train_info.get("training_window"),
            "features": list(train_info.get("features") or []),
            "git_commit": train_info.get("git_commit"),
            "params_hash": train_info.get("params_hash"),
        },
        "selection": {
            "candidates": names,
            "chosen": chosen,
            "why": notes,
            "gates_passed": passed,
            "rejection_reasons": list(reasons),
        },
        "metrics": {
            "holdout": {n: dict(holdout[n]) for n in names if isinstance(holdout.get(n), Mapping)},
            "cv": {n: dict(cv[n]) for n in names if isinstance(cv.get(n), Mapping)},
        },
        "gates": [
            {k: g.get(k) for k in ("name", "value", "threshold", "passed")}
            for g in gates.get("gates", []) or []
            if isinstance(g, Mapping)
        ],
        "operating_point": {"threshold": threshold, "review_low": review_low, "alert_budget": alert_budget},
        "limitations": list(limitations),
        "gate_report": gate_report,
    }
    return json_safe(card)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _cv_cell(stats: Any) -> str:
    """``mean ± std [ci_low, ci_high]`` of one CV metric (or the raw value if not a summary)."""
    if not isinstance(stats, Mapping):
        return _fmt(stats)
    mean, std = stats.get("mean"), stats.get("std")
    lo, hi = stats.get("ci_low"), stats.get("ci_high")
    return f"{_fmt(mean)} ± {_fmt(std)} [{_fmt(lo)}, {_fmt(hi)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _metric_tables(card: Mapping[str, Any]) -> list[str]:
    holdout: Mapping[str, Mapping[str, Any]] = card["metrics"]["holdout"]
    cv: Mapping[str, Mapping[str, Any]] = card["metrics"]["cv"]
    names = card["selection"]["candidates"]
    out: list[str] = []
    metrics = list(dict.fromkeys(m for n in names for m in holdout.get(n, {})))
    if metrics:
        out += ["### Holdout", ""]
        out += _table(
            ["metric", *names], [[m, *(_fmt(holdout.get(n, {}).get(m)) for n in names)] for m in metrics]
        )
        out.append("")
    cv_metrics = list(dict.fromkeys(m for n in names for m in cv.get(n, {})))
    if cv_metrics:
        out += ["### Cross-validation (mean ± std [CI])", ""]
        out += _table(
            ["metric", *names], [[m, *(_cv_cell(cv.get(n, {}).get(m)) for n in names)] for m in cv_metrics]
        )
        out.append("")
    return out or ["No metrics were recorded.", ""]


def render_model_card_md(card: Mapping[str, Any]) -> str:
    """Markdown rendering of a card built by ``build_model_card``."""
    model, data, sel, op = card["model"], card["data"], card["selection"], card["operating_point"]
    verdict = "passed all gates" if sel["gates_passed"] else "REJECTED by the gates"
    lines = [
        f"# Model card — {model['tag']}",
        "",
        f"Kind **{model['kind']}**, registered {model['created']}, {verdict}.",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Data",
        "",
        f"- Sources: {_fmt(data['sources'])}",
        f"- Data hash (DVC md5): `{_fmt(data['data_hash'])}`",
        f"- Training window: {_fmt(data['training_window'])}",
        f"- Code: git `{_fmt(data['git_commit'])}`, params hash `{_fmt(data['params_hash'])}`",
        f"- Features ({len(data['features'])}): {_fmt(data['features']) if data['features'] else 'n/a'}",
        "",
        "## Selection",
        "",
        f"Candidates compared: {', '.join(sel['candidates'])}; chosen: **{sel['chosen']}**.",
        "",
        *(f"- {note}" for note in sel["why"]),
        *(f"- Rejected: {reason}" for reason in sel["rejection_reasons"]),
        "",
        "## Metrics",
        "",
        *_metric_tables(card),
        "## Gates",
        "",
        *_table(
            ["gate", "value", "threshold", "passed"],
            [
                [_fmt(g["name"]), _fmt(g["value"]), _fmt(g["threshold"]), _fmt(g["passed"])]
                for g in card["gates"]
            ],
        ),
        "",
        "## Operating point",
        "",
        f"- Alert threshold: {_fmt(op['threshold'])} (score >= threshold raises an alert)",
        f"- Review band lower edge: {_fmt(op['review_low'])} (lower scores up to the threshold go to review)",
        f"- Alert budget: {_fmt(op['alert_budget'])} false alarms per asset-day",
        "",
        "## Known limitations",
        "",
        *(f"- {item}" for item in card["limitations"]),
        "",
        "## Integrity",
        "",
        f"- Artifact `{model['artifact']}` sha256 `{model['sha256']}`",
        f"- Gate report: {_fmt(card.get('gate_report'))}",
        "",
    ]
    return "\n".join(lines)
