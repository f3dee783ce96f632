"""What the demo's syncs found: the synced organizations' idle and underused licenses, judged
once the syncs are done (the workers' license loop would within a minute; the demo does not
wait for it), and what reclaiming them saves."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from greenroom.licenses.records import Finding
from greenroom.licenses.runner import judge_all, upkeep
from greenroom.storage import RunStore
from greenroom.storage.findings import FindingFilter


@dataclass(frozen=True, kw_only=True)
class LicenseReport:
    licenses: int
    #: Open findings by class (idle, never_used, underused, …).
    by_verdict: dict[str, int]
    #: Monthly savings available, by currency.
    savings: dict[str, float]
    #: The findings that save the most.
    top: list[Finding]


def judge_licenses(store: RunStore, tenant: str) -> LicenseReport:
    upkeep(store)
    judge_all(store)
    found: list[Finding] = []
    after = None
    while True:
        page, after = store.findings.list_findings(
            FindingFilter(tenant=tenant, after=after, limit=500)
        )
        found += page
        if after is None:
            return _report(store, tenant, found)


def _report(store: RunStore, tenant: str, found: list[Finding]) -> LicenseReport:
    with store.backend.transaction(write=False) as tx:
        (row,) = tx.execute(
            "SELECT COUNT(*) AS n FROM licenses WHERE tenant = :t AND removed_at IS NULL",
            {"t": tenant},
        )
    savings: dict[str, float] = {}
    for f in found:
        if f.currency is not None and f.monthly_savings:
            savings[f.currency] = savings.get(f.currency, 0.0) + f.monthly_savings
    return LicenseReport(
        licenses=int(row["n"]),
        by_verdict=dict(Counter(f.verdict for f in found).most_common()),
        savings={c: round(v, 2) for c, v in savings.items()},
        top=found[:3],
    )
