"""Saved browser sessions and failure artifacts.

A session's state is written by the run that holds the session, under that run's fencing token,
so a worker whose lease expired cannot overwrite what the current holder saved.
"""

from __future__ import annotations

from greenroom.model import Artifact, Lease, SavedSession
from greenroom.storage.base import StoreBase, retry_conflicts
from greenroom.storage.codec import artifact_from_row, saved_session_from_row


class Sessions(StoreBase):
    # -- browser sessions ------------------------------------------------------------------

    @retry_conflicts
    def save_session_state(
        self,
        lease: Lease,
        *,
        key_id: str,
        state: str,
        cookie_count: int,
        logged_out: bool = False,
    ) -> int | None:
        """Store the run's session state; the new version, or None when it was not stored.

        An empty state (no cookies) does not replace one with cookies unless the workflow said
        it logged out: a page that lost its login must not wipe a good saved session.
        """
        run = lease.run
        if run.session_key is None:
            raise ValueError(f"run {run.id} has no session key")
        now = self.clock.now()
        guard = (
            ""
            if logged_out
            else " WHERE excluded.cookie_count > 0 OR browser_sessions.cookie_count = 0"
        )
        with self.backend.transaction() as tx:
            self._fence(tx, lease)
            rows = tx.execute(
                "INSERT INTO browser_sessions (tenant, session_key, version, key_id, state,"
                " cookie_count, run_id, lease_token, saved_at) VALUES (:tenant, :key, 1,"
                " :key_id, :state, :cookies, :run_id, :token, :now)"
                " ON CONFLICT (tenant, session_key) DO UPDATE SET"
                " version = browser_sessions.version + 1, key_id = excluded.key_id,"
                " state = excluded.state, cookie_count = excluded.cookie_count,"
                " run_id = excluded.run_id, lease_token = excluded.lease_token,"
                f" saved_at = excluded.saved_at{guard} RETURNING version",
                {
                    "tenant": run.tenant,
                    "key": run.session_key,
                    "key_id": key_id,
                    "state": state,
                    "cookies": cookie_count,
                    "run_id": run.id,
                    "token": lease.token,
                    "now": now,
                },
            )
        return int(rows[0]["version"]) if rows else None

    def load_session_state(self, tenant: str, session_key: str) -> SavedSession | None:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT * FROM browser_sessions WHERE tenant = :tenant AND session_key = :key",
                {"tenant": tenant, "key": session_key},
            )
        return saved_session_from_row(rows[0]) if rows else None

    @retry_conflicts
    def discard_session_state(self, lease: Lease) -> bool:
        """Forget the run's saved session (it turned out to be logged out), under the run's
        fencing token like a save; whether one existed."""
        run = lease.run
        with self.backend.transaction() as tx:
            self._fence(tx, lease)
            n = tx.execute_count(
                "DELETE FROM browser_sessions WHERE tenant = :tenant AND session_key = :key",
                {"tenant": run.tenant, "key": run.session_key},
            )
        return n > 0

    # -- logins ----------------------------------------------------------------------------

    @retry_conflicts
    def take_login(self, lease: Lease) -> bool:
        """Hold the login of the run's session; False while another run that still holds its
        lease is logging in."""
        run = lease.run
        now = self.clock.now()
        with self.backend.transaction() as tx:
            self._fence(tx, lease)
            rows = tx.execute(
                "INSERT INTO session_logins (tenant, session_key, run_id, lease_token, since)"
                " VALUES (:tenant, :key, :run_id, :token, :now)"
                " ON CONFLICT (tenant, session_key) DO UPDATE SET run_id = excluded.run_id,"
                " lease_token = excluded.lease_token, since = excluded.since"
                " WHERE session_logins.run_id = excluded.run_id OR NOT EXISTS (SELECT 1 FROM"
                " runs WHERE runs.id = session_logins.run_id AND runs.state = 'running'"
                " AND runs.lease_token = session_logins.lease_token) RETURNING run_id",
                {
                    "tenant": run.tenant,
                    "key": run.session_key,
                    "run_id": run.id,
                    "token": lease.token,
                    "now": now,
                },
            )
        return bool(rows)

    def release_login(self, lease: Lease) -> None:
        run = lease.run
        with self.backend.transaction() as tx:
            tx.execute(
                "DELETE FROM session_logins WHERE tenant = :tenant AND session_key = :key"
                " AND run_id = :run_id",
                {"tenant": run.tenant, "key": run.session_key, "run_id": run.id},
            )

    # -- artifacts -------------------------------------------------------------------------

    def add_artifact(
        self,
        *,
        run_id: str,
        tenant: str,
        attempt: int,
        step_position: int | None,
        step_name: str | None,
        step_attempt: int | None,
        kind: str,
        content_type: str,
        location: str,
        size: int,
        truncated: bool = False,
    ) -> Artifact:
        with self.backend.transaction() as tx:
            row = tx.execute(
                "INSERT INTO artifacts (run_id, tenant, attempt, step_position, step_name,"
                " step_attempt, kind, content_type, location, size, truncated, created_at)"
                " VALUES (:run_id, :tenant, :attempt, :position, :step_name, :step_attempt,"
                " :kind, :content_type, :location, :size, :truncated, :now) RETURNING *",
                {
                    "run_id": run_id,
                    "tenant": tenant,
                    "attempt": attempt,
                    "position": step_position,
                    "step_name": step_name,
                    "step_attempt": step_attempt,
                    "kind": kind,
                    "content_type": content_type,
                    "location": location,
                    "size": size,
                    "truncated": truncated,
                    "now": self.clock.now(),
                },
            )[0]
        return artifact_from_row(row)

    def artifacts(self, run_id: str, *, tenant: str | None = None) -> list[Artifact]:
        """A run's diagnostic files, oldest first (scoped to `tenant` when given)."""
        scope = "" if tenant is None else " AND tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM artifacts WHERE run_id = :id{scope} ORDER BY id",
                {"id": run_id, "tenant": tenant},
            )
        return [artifact_from_row(r) for r in rows]
