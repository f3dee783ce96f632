"""What the console's live stream watches: a marker of runs' changes read through a few index
lookups, since the store has no change feed for the bulk of moves (enqueues and claims write
no event)."""

from __future__ import annotations

from greenroom.storage.base import StoreBase


class Watch(StoreBase):
    def runs_marker(self, *, tenant: str | None = None) -> tuple[object, ...]:
        """Changes when a run of the tenant (of any, for None) is made, starts or ends, or a
        pause is made or lifted: the newest run, the newest event and how many run now (the
        running runs are as many as the workers' slots at most)."""
        scope = "" if tenant is None else " WHERE tenant = :tenant"
        and_scope = "" if tenant is None else " AND tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            newest = tx.execute(
                f"SELECT seq FROM runs{scope} ORDER BY seq DESC LIMIT 1", {"tenant": tenant}
            )
            event = tx.execute(
                f"SELECT txid, id FROM events{scope} ORDER BY txid DESC, id DESC LIMIT 1",
                {"tenant": tenant},
            )
            running = tx.execute(
                f"SELECT COUNT(*) AS n FROM runs WHERE state = 'running'{and_scope}",
                {"tenant": tenant},
            )
        return (
            newest[0]["seq"] if newest else None,
            (event[0]["txid"], event[0]["id"]) if event else None,
            int(running[0]["n"]),
        )

    def run_marker(self, run_id: str, *, tenant: str | None = None) -> tuple[object, ...] | None:
        """Changes when the run moves or one of its steps is written; None for a run the
        tenant does not have."""
        scope = "" if tenant is None else " AND tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            found = tx.execute(
                f"SELECT state, updated_at, attempt, lease_token FROM runs WHERE id = :id{scope}",
                {"id": run_id, "tenant": tenant},
            )
            if not found:
                return None
            steps = tx.execute(
                "SELECT COUNT(*) AS n, SUM(attempts) AS attempts FROM steps WHERE run_id = :id",
                {"id": run_id},
            )
            timeline = tx.execute(
                "SELECT MAX(id) AS id FROM run_events WHERE run_id = :id", {"id": run_id}
            )
        row = found[0]
        return (
            row["state"],
            row["updated_at"],
            row["attempt"],
            row["lease_token"],
            int(steps[0]["n"]),
            steps[0]["attempts"],
            timeline[0]["id"],
        )
