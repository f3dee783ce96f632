"""Registered tenants, API keys and integrations: who may call the API, and with what.

The store keeps only what it is given: key hashes (greenroom.api.keys makes the secrets) and
sealed credentials (greenroom.integrations seals them). Every read and write of an integration
is scoped to its tenant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from greenroom.errors import Conflict, InvalidInput, NotFound
from greenroom.model import ApiKey, Integration, Role, TenantInfo
from greenroom.rules import (
    MAX_INT,
    MAX_NAME,
    MAX_UNIX_TIME,
    check_keys,
    check_name,
    check_text,
)
from greenroom.storage.backend import Backend, Tx
from greenroom.storage.base import StoreBase, retry_conflicts
from greenroom.storage.codec import dumps, integration_from_row, key_from_row, tenant_from_row
from greenroom.storage.licenses import forget_integration
from greenroom.storage.lifecycle import summaries
from greenroom.storage.outbox import NewEvent, emit

INTEGRATION_STATUSES = ("active", "disabled")


def _emit_integration(
    tx: Tx,
    backend: Backend,
    kind: str,
    integration: Integration,
    actor: str,
    now: float,
    changed: list[str] | None = None,
) -> None:
    """An integration's outbox event: never its settings or credentials."""
    payload: dict[str, Any] = {"integration_id": integration.id}
    payload |= {"connector": integration.connector}
    payload |= {"name": integration.name, "status": integration.status, "actor": actor}
    if changed is not None:
        payload["changed"] = changed
    subject = f"integration:{integration.id}"
    emit(tx, backend, [NewEvent(integration.tenant, kind, subject, payload)], now)


def _check_name(name: str, what: str) -> None:
    """A display name (of a key, an integration): text, not only spaces."""
    check_text(name, what, max_length=MAX_NAME, min_length=1)
    if not name.strip():
        raise InvalidInput(f"{what} must not be blank")


class Accounts(StoreBase):
    # -- tenants ---------------------------------------------------------------------------

    @retry_conflicts
    def create_tenant(self, name: str, *, actor: str) -> TenantInfo:
        """Register a tenant (one that so far only had runs keeps them)."""
        if name == "*":
            raise InvalidInput("'*' means every tenant; choose another name")
        check_name(name, "tenant name")
        now = self.clock.now()
        with self.backend.transaction() as tx:
            summaries.ensure_records(tx, tenants=[name], queues=[], now=now)
            changed = tx.execute_count(
                "UPDATE tenants SET registered_at = :now"
                " WHERE name = :name AND registered_at IS NULL",
                {"now": now, "name": name},
            )
            if changed != 1:
                raise Conflict(f"tenant {name!r} already exists")
            self._audit(
                tx, tenant=name, actor=actor, action="tenant.create", target=name, reason="created"
            )
            row = tx.execute("SELECT * FROM tenants WHERE name = :name", {"name": name})[0]
        return tenant_from_row(row)

    def tenant(self, name: str) -> TenantInfo:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute("SELECT * FROM tenants WHERE name = :name", {"name": name})
        if not rows:
            raise NotFound(f"tenant {name} not found")
        return tenant_from_row(rows[0])

    # -- API keys --------------------------------------------------------------------------

    @retry_conflicts
    def add_api_key(
        self,
        *,
        key_id: str,
        tenant: str | None,
        role: Role,
        name: str,
        key_hash: str,
        actor: str,
        expires_at: float | None = None,
        rate_limit: int | None = None,
    ) -> ApiKey:
        """Store a new key's hash; a tenant key needs a registered tenant."""
        _check_name(name, "key name")
        if (tenant is None) != (role is Role.PLATFORM):
            raise InvalidInput("platform keys have no tenant; every other role needs one")
        now = self.clock.now()
        if expires_at is not None and not now < expires_at <= MAX_UNIX_TIME:
            raise InvalidInput("expires_at must be in the future, and before 2100")
        if rate_limit is not None and not 1 <= rate_limit <= MAX_INT:
            raise InvalidInput(f"rate_limit must be from 1 to {MAX_INT} requests per second")
        row = {
            "id": key_id,
            "tenant": tenant,
            "role": role.value,
            "name": name,
            "hash": key_hash,
            "rate_limit": rate_limit,
            "created_by": actor,
            "created_at": now,
            "expires_at": expires_at,
        }
        with self.backend.transaction() as tx:
            if tenant is not None:
                self._registered(tx, tenant)
            tx.execute(
                "INSERT INTO api_keys (id, tenant, role, name, hash, rate_limit, created_by,"
                " created_at, expires_at) VALUES (:id, :tenant, :role, :name, :hash, :rate_limit,"
                " :created_by, :created_at, :expires_at)",
                row,
            )
            self._audit(
                tx,
                tenant=tenant,
                actor=actor,
                action="key.create",
                target=str(row["id"]),
                reason="created",
                detail={"role": role.value, "name": name},
            )
        return key_from_row({**row, "revoked_at": None})

    def api_key(self, key_id: str) -> ApiKey | None:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute("SELECT * FROM api_keys WHERE id = :id", {"id": key_id})
        return key_from_row(rows[0]) if rows else None

    def api_keys(self, *, tenant: str | None = None) -> list[ApiKey]:
        scope = "" if tenant is None else " WHERE tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM api_keys{scope} ORDER BY created_at, id", {"tenant": tenant}
            )
        return [key_from_row(r) for r in rows]

    @retry_conflicts
    def revoke_api_key(self, key_id: str, *, actor: str, tenant: str | None = None) -> ApiKey:
        scope = "" if tenant is None else " AND tenant = :tenant"
        params = {"id": key_id, "tenant": tenant, "now": self.clock.now()}
        with self.backend.transaction() as tx:
            rows = tx.execute(f"SELECT * FROM api_keys WHERE id = :id{scope}", params)
            if not rows:
                raise NotFound(f"key {key_id} not found")
            if rows[0]["revoked_at"] is None:
                tx.execute("UPDATE api_keys SET revoked_at = :now WHERE id = :id", params)
                self._audit(
                    tx,
                    tenant=rows[0]["tenant"],
                    actor=actor,
                    action="key.revoke",
                    target=key_id,
                    reason="revoked",
                )
            row = tx.execute("SELECT * FROM api_keys WHERE id = :id", params)[0]
        return key_from_row(row)

    # -- integrations ----------------------------------------------------------------------

    @retry_conflicts
    def add_integration(
        self,
        *,
        tenant: str,
        connector: str,
        name: str,
        settings: dict[str, Any],
        integration_id: str,
        sealed: tuple[str, str],
        actor: str,
    ) -> Integration:
        """Store an integration whose credentials were sealed for `integration_id`."""
        _check_name(name, "integration name")
        now = self.clock.now()
        row = {
            "id": integration_id,
            "tenant": tenant,
            "connector": connector,
            "name": name,
            "settings": dumps(check_keys(settings, "settings"), "settings"),
            "status": "active",
            "key_id": sealed[0],
            "credentials": sealed[1],
            "now": now,
        }
        with self.backend.transaction() as tx:
            self._registered(tx, tenant)
            self._name_free(tx, tenant, name)
            tx.execute(
                "INSERT INTO integrations (id, tenant, connector, name, settings, status, key_id,"
                " credentials, credentials_updated_at, created_at, updated_at) VALUES (:id,"
                " :tenant, :connector, :name, :settings, :status, :key_id, :credentials, :now,"
                " :now, :now)",
                row,
            )
            self._audit(
                tx,
                tenant=tenant,
                actor=actor,
                action="integration.create",
                target=integration_id,
                reason="created",
                detail={"connector": connector, "name": name, "settings": settings},
            )
            created = self._integration(tx, integration_id, tenant)
            _emit_integration(tx, self.backend, "integration.created", created, actor, now)
            return created

    def integration(self, integration_id: str, *, tenant: str | None = None) -> Integration:
        with self.backend.transaction(write=False) as tx:
            return self._integration(tx, integration_id, tenant)

    def integrations(
        self, *, tenant: str | None = None, connector: str | None = None
    ) -> list[Integration]:
        clauses, params = ["1 = 1"], {"tenant": tenant, "connector": connector}
        if tenant is not None:
            clauses.append("tenant = :tenant")
        if connector is not None:
            clauses.append("connector = :connector")
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM integrations WHERE {' AND '.join(clauses)} ORDER BY tenant, name",
                params,
            )
        return [integration_from_row(r) for r in rows]

    @retry_conflicts
    def update_integration(
        self,
        integration_id: str,
        *,
        actor: str,
        tenant: str | None = None,
        name: str | None = None,
        settings: dict[str, Any] | None = None,
        status: str | None = None,
        sealed: tuple[str, str] | None = None,
    ) -> Integration:
        """Change an integration; `sealed` replaces its credentials (rotation)."""
        if status is not None and status not in INTEGRATION_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(INTEGRATION_STATUSES)}")
        if name is not None:
            _check_name(name, "integration name")
        now = self.clock.now()
        with self.backend.transaction() as tx:
            current = self._integration(tx, integration_id, tenant, lock=self.backend.for_update)
            changes: dict[str, Any] = {}
            if name is not None and name != current.name:
                self._name_free(tx, current.tenant, name)
                changes["name"] = name
            if settings is not None and settings != current.settings:
                changes["settings"] = dumps(check_keys(settings, "settings"), "settings")
            if status is not None:
                changes["status"] = status
            if sealed is not None:
                changes.update(key_id=sealed[0], credentials=sealed[1], credentials_updated_at=now)
            if changes:
                assignments = ", ".join(f"{column} = :{column}" for column in changes)
                tx.execute(
                    f"UPDATE integrations SET {assignments}, updated_at = :now WHERE id = :id",
                    {**changes, "now": now, "id": integration_id},
                )
                action = "integration.credentials" if sealed is not None else "integration.update"
                detail = {k: v for k, v in changes.items() if k in ("name", "status")}
                if "settings" in changes:  # not secret: what they were and what they are
                    detail.update(settings=settings, previous_settings=current.settings)
                self._audit(
                    tx,
                    tenant=current.tenant,
                    actor=actor,
                    action=action,
                    target=integration_id,
                    reason="updated",
                    detail=detail or None,
                )
            updated = self._integration(tx, integration_id, tenant)
            if changes:
                changed = [k for k in changes if k in ("name", "settings", "status")]
                changed = sorted(changed + (["credentials"] if sealed is not None else []))
                _emit_integration(
                    tx, self.backend, "integration.updated", updated, actor, now, changed
                )
            return updated

    @retry_conflicts
    def delete_integration(
        self, integration_id: str, *, actor: str, tenant: str | None = None
    ) -> None:
        with self.backend.transaction() as tx:
            current = self._integration(tx, integration_id, tenant)
            tx.execute("DELETE FROM integrations WHERE id = :id", {"id": integration_id})
            forget_integration(tx, integration_id)
            self._audit(
                tx,
                tenant=current.tenant,
                actor=actor,
                action="integration.delete",
                target=integration_id,
                reason="deleted",
            )
            _emit_integration(
                tx, self.backend, "integration.deleted", current, actor, self.clock.now()
            )

    def reseal_credentials(self, reseal: Callable[[Integration], tuple[str, str] | None]) -> int:
        """Re-encrypt credentials one integration per transaction (key rotation); `reseal`
        returns the new (key id, blob), or None for one already under the current key."""
        with self.backend.transaction(write=False) as tx:
            ids = [r["id"] for r in tx.execute("SELECT id FROM integrations ORDER BY id")]
        changed = 0
        for integration_id in ids:
            with self.backend.transaction() as tx:
                try:
                    current = self._integration(
                        tx, integration_id, None, lock=self.backend.for_update
                    )
                except NotFound:  # deleted meanwhile
                    continue
                sealed = reseal(current)
                if sealed is None:
                    continue
                tx.execute(
                    "UPDATE integrations SET key_id = :key_id, credentials = :blob WHERE id = :id",
                    {"key_id": sealed[0], "blob": sealed[1], "id": integration_id},
                )
                changed += 1
        return changed

    # -- helpers ---------------------------------------------------------------------------

    def _name_free(self, tx: Tx, tenant: str, name: str) -> None:
        """Check a name under the tenant's row lock, so two writes cannot both take it."""
        tx.execute(
            f"SELECT name FROM tenants WHERE name = :tenant {self.backend.for_update}",
            {"tenant": tenant},
        )
        taken = tx.execute(
            "SELECT id FROM integrations WHERE tenant = :tenant AND name = :name",
            {"tenant": tenant, "name": name},
        )
        if taken:
            raise Conflict(f"integration name {name!r} is taken by {taken[0]['id']}")

    def _integration(
        self, tx: Tx, integration_id: str, tenant: str | None, lock: str = ""
    ) -> Integration:
        scope = "" if tenant is None else " AND tenant = :tenant"
        rows = tx.execute(
            f"SELECT * FROM integrations WHERE id = :id{scope} {lock}",
            {"id": integration_id, "tenant": tenant},
        )
        if not rows:
            raise NotFound(f"integration {integration_id} not found")
        return integration_from_row(rows[0])
