"""What each report says, computed from rows the store read: pure functions, so the numbers
are tested on fixed data and a report made again from the same rows is the same report.

Every result is JSON (it is a step's result, stored with the run)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenroom.licenses.records import Finding

#: Idle verdicts (a reclaim), as opposed to underused (a downgrade).
IDLE_VERDICTS = frozenset({"idle", "never_used", "inactive_at_source"})
#: The longest tables in HTML and mail; the CSV files hold every row.
TOP = 20
#: An integration is stale when its last successful run is older than this at the period's end.
STALE_SECONDS = 24 * 3600.0


@dataclass(frozen=True, kw_only=True)
class RunRow:
    """A finished run, as health reads it."""

    workflow: str
    #: The run's integration (its `integration` label), if any.
    integration: str | None
    succeeded: bool
    started_at: float | None
    finished_at: float
    error_group: str | None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): a duration some run really took."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _repairs(runs: Sequence[RunRow]) -> tuple[list[float], int]:
    """Times from the first failure of each failing streak to the next success, and how many
    streaks are still failing at the end. `runs` are one integration's, by finished_at."""
    repairs: list[float] = []
    down_since: float | None = None
    for run in runs:
        if not run.succeeded and down_since is None:
            down_since = run.finished_at
        elif run.succeeded and down_since is not None:
            repairs.append(run.finished_at - down_since)
            down_since = None
    return repairs, int(down_since is not None)


def _rate(succeeded: int, total: int) -> float | None:
    return None if total == 0 else round(succeeded / total, 4)


def health(
    runs: Sequence[RunRow],
    *,
    integrations: Mapping[str, str],
    last_success: Mapping[str, float | None],
    groups: Mapping[str, Mapping[str, str]],
    period_end: float,
) -> dict[str, Any]:
    """Per integration (runs without one: per workflow): runs, success rate, p50/p95 duration,
    MTTR and still-failing streaks, staleness; failures by error group; totals.
    `integrations` names the tenant's integrations (each listed, with runs or not);
    `last_success` is each one's last successful run up to the period's end; `groups` the
    error groups' type and message by fingerprint."""
    by_key: dict[str, list[RunRow]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r.finished_at):
        by_key[run.integration or f"workflow:{run.workflow}"].append(run)
    rows = []
    all_repairs: list[float] = []
    for key in sorted(set(by_key) | set(integrations), key=lambda k: (integrations.get(k, k), k)):
        mine = by_key.get(key, [])
        ok = sum(r.succeeded for r in mine)
        durations = [r.finished_at - r.started_at for r in mine if r.started_at is not None]
        repairs, failing = _repairs(mine)
        all_repairs += repairs
        is_integration = key in integrations
        last = last_success.get(key) if is_integration else None
        rows.append(
            {
                "key": key,
                "name": integrations.get(key, key.removeprefix("workflow:")),
                "kind": "integration" if is_integration else "workflow",
                "runs": len(mine),
                "succeeded": ok,
                "failed": len(mine) - ok,
                "success_rate": _rate(ok, len(mine)),
                "p50_seconds": _round(percentile(durations, 50)),
                "p95_seconds": _round(percentile(durations, 95)),
                "mttr_seconds": _round(_mean(repairs)),
                "repairs": len(repairs),
                "still_failing": failing,
                "last_success": last,
                "stale": is_integration and (last is None or period_end - last > STALE_SECONDS),
            }
        )
    names = {row["key"]: row["name"] for row in rows}
    counts = Counter(
        (r.integration or f"workflow:{r.workflow}", r.error_group or "")
        for r in runs
        if not r.succeeded
    )
    failures = [
        {
            "key": key,
            "name": names[key],
            "error_group": group or None,
            "type": groups.get(group, {}).get("type", "?"),
            "message": groups.get(group, {}).get("message", ""),
            "count": n,
        }
        for (key, group), n in sorted(counts.items(), key=lambda c: (-c[1], names[c[0][0]], c[0]))
    ]
    total, ok = len(runs), sum(r.succeeded for r in runs)
    return {
        "integrations": rows,
        "failures": failures,
        "totals": {
            "runs": total,
            "succeeded": ok,
            "failed": total - ok,
            "success_rate": _rate(ok, total),
            "mttr_seconds": _round(_mean(all_repairs)),
            "stale": sum(1 for r in rows if r["stale"]),
        },
    }


def savings(
    open_findings: Sequence[Finding],
    realized: Sequence[Finding],
    *,
    integrations: Mapping[str, str],
) -> dict[str, Any]:
    """Open findings by class (verdict) and app (integration), savings available (open,
    waiting for someone) and realized in the period (reclaimed), by currency; the largest idle
    licenses first. `realized` are the findings closed as reclaimed within the period."""
    by_class: Counter[tuple[str, str]] = Counter()
    available: dict[str, float] = defaultdict(float)
    per_app: dict[tuple[str, str], dict[str, Any]] = {}
    for f in open_findings:
        by_class[(f.verdict, f.integration_id)] += 1
        app = per_app.setdefault(
            (f.integration_id, f.currency or ""),
            {
                "integration_id": f.integration_id,
                "name": integrations.get(f.integration_id, f.integration_id),
                "currency": f.currency,
                "findings": 0,
                "available": 0.0,
                "realized": 0.0,
            },
        )
        app["findings"] += 1
        if f.state in ("candidate", "notified", "actioned") and f.monthly_savings and f.currency:
            available[f.currency] += f.monthly_savings
            app["available"] += f.monthly_savings
    realized_by: dict[str, float] = defaultdict(float)
    for f in realized:
        if f.monthly_savings and f.currency:
            realized_by[f.currency] += f.monthly_savings
            app = per_app.setdefault(
                (f.integration_id, f.currency),
                {
                    "integration_id": f.integration_id,
                    "name": integrations.get(f.integration_id, f.integration_id),
                    "currency": f.currency,
                    "findings": 0,
                    "available": 0.0,
                    "realized": 0.0,
                },
            )
            app["realized"] += f.monthly_savings
    idle = sorted(
        (f for f in open_findings if f.verdict in IDLE_VERDICTS),
        key=lambda f: (-(f.monthly_savings or 0.0), f.email or f.user_id or "", f.id),
    )
    apps = sorted(per_app.values(), key=lambda a: (-a["available"], a["name"], a["currency"] or ""))
    return {
        "by_class": [
            {
                "verdict": verdict,
                "integration_id": iid,
                "name": integrations.get(iid, iid),
                "count": n,
            }
            for (verdict, iid), n in sorted(
                by_class.items(), key=lambda c: (c[0][0], integrations.get(c[0][1], c[0][1]))
            )
        ],
        "apps": [
            {**a, "available": round(a["available"], 2), "realized": round(a["realized"], 2)}
            for a in apps
        ],
        "available": {c: round(v, 2) for c, v in sorted(available.items())},
        "realized": {c: round(v, 2) for c, v in sorted(realized_by.items())},
        "open_findings": len(open_findings),
        "reclaimed": len(realized),
        "idle": [_finding(f, integrations) for f in idle],
    }


def _finding(f: Finding, integrations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "finding_id": f.id,
        "name": integrations.get(f.integration_id, f.integration_id),
        "user": f.email or f.user_id,
        "verdict": f.verdict,
        "state": f.state,
        "confidence": f.confidence,
        "monthly_savings": f.monthly_savings,
        "currency": f.currency,
        "since": f.episode_start,
        "reason": f.reason,
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
