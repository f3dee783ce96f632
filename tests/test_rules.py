"""One rule for text that reaches storage (greenroom.rules), the same through every way in: every
string field of every endpoint, found in the OpenAPI document, refuses control characters with a
422 naming the field; the Python API, the store and the CLI refuse them too; and a run that
would have stored a NUL label (which once made every query reading labels fail on PostgreSQL)
is refused and nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from greenroom.api.keys import create_key
from greenroom.errors import InvalidInput
from greenroom.model import PauseScope, Role
from greenroom.storage import RunFilter
from tests.api_helpers import ApiSetup
from tests.test_api_errors import assert_problem
from tests.test_cli import app_ref as app_ref  # a fixture
from tests.test_cli import assert_one_line_error, cli

#: NUL, another C0 control, DEL, and a C1 control (NEL): each is refused everywhere.
CONTROLS = ["\x00", "\x1b", "\x7f", "\x85"]


@dataclass(frozen=True)
class Field:
    """One string in a request: where it goes and how the API names it when it is invalid."""

    method: str
    path: str
    where: str  # "path", "query", "header", "body"
    name: str  # a parameter, or a body property
    #: In the body: a string property, an object's key, or an object's value.
    part: str = "value"

    def request(self, bad: str) -> dict[str, Any]:
        """The request, with `bad` in this field (and harmless values elsewhere)."""
        url = self.path
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        body: dict[str, Any] = {}
        for placeholder in _placeholders(url):
            value = bad if (self.where, self.name) == ("path", placeholder) else "x"
            url = url.replace("{" + placeholder + "}", quote(value, safe=""))
        if self.where == "query":
            params[self.name] = bad
        elif self.where == "header":
            headers[self.name] = bad
        elif self.part == "key":
            body[self.name] = {f"k{bad}": "v"}
        elif self.part == "item":
            body[self.name] = {"k": bad}
        else:
            body[self.name] = bad
        return {
            "method": self.method.upper(),
            "url": url,
            "params": params,
            "headers": headers,
            "json": body if self.where == "body" else None,
        }

    def named(self, errors: list[dict[str, Any]], bad: str) -> bool:
        """Whether a 422's errors name this field (a time, float or ISO 8601, is named with
        each form it may take)."""
        name = f"{self.where}.{self.name}"
        if self.part == "key":
            name += f".k{bad}.[key]"
        elif self.part == "item":
            name += ".k"
        return any(e["field"] == name or e["field"].startswith(name + ".") for e in errors)


def _placeholders(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _kinds(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a schema (`X | None` is an anyOf)."""
    return schema.get("anyOf", [schema])


def string_fields(doc: dict[str, Any]) -> Iterator[Field]:
    """Every string a request can carry: parameters, body properties, and the keys and values
    of body objects whose keys or values are strings."""
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for param in op.get("parameters", []):
                if any(k.get("type") == "string" for k in _kinds(param["schema"])):
                    yield Field(method, path, param["in"], param["name"])
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                continue
            body = _resolve(doc, content["schema"])
            for name, prop in body.get("properties", {}).items():
                for kind in _kinds(prop):
                    if kind.get("type") == "string" and "enum" not in kind:
                        yield Field(method, path, "body", name)
                    if kind.get("type") == "object" and "propertyNames" in kind:
                        yield Field(method, path, "body", name, "key")
                        if kind.get("additionalProperties", {}).get("type") == "string":
                            yield Field(method, path, "body", name, "item")


def test_every_string_field_refuses_control_characters(api: ApiSetup) -> None:
    doc = httpx.get(f"{api.url}/openapi.json").json()
    fields = list(string_fields(doc))
    # The table covers what it should: ids, names, filters, reasons, labels and input keys.
    covered = {(f.method, f.path, f.where, f.name, f.part) for f in fields}
    for expected in [
        ("get", "/v1/runs/{run_id}", "path", "run_id", "value"),
        ("get", "/v1/runs", "query", "label", "value"),
        ("get", "/v1/runs", "query", "integration", "value"),
        ("post", "/v1/runs", "header", "idempotency-key", "value"),
        ("post", "/v1/runs", "body", "labels", "key"),
        ("post", "/v1/runs", "body", "labels", "item"),
        ("post", "/v1/runs", "body", "input", "key"),
        ("post", "/v1/runs/{run_id}/retry", "body", "reason", "value"),
        ("post", "/v1/pauses", "body", "value", "value"),
        ("post", "/v1/tenants", "body", "name", "value"),
        ("patch", "/v1/integrations/{integration_id}", "body", "settings", "key"),
    ]:
        assert expected in covered, expected
    assert len(fields) >= 60, len(fields)
    unnamed = []
    sent = 0
    with api.platform() as c:
        for field in fields:
            for bad in CONTROLS:
                request = field.request(f"a{bad}b")
                try:
                    r = c.request(**request)
                except (httpx.LocalProtocolError, UnicodeEncodeError):
                    assert field.where == "header"  # HTTP itself cannot carry it
                    continue
                if field.where == "header" and r.status_code == 400:
                    continue  # nor can the server's HTTP parser: it refuses the request
                sent += 1
                body = assert_problem(r, 422)
                if not field.named(body.get("errors", []), f"a{bad}b"):
                    unnamed.append((field, repr(bad), body))
    assert not unnamed, unnamed
    assert sent >= 4 * 60


def test_a_nul_label_is_refused_and_nothing_is_stored(api: ApiSetup) -> None:
    """The reproduction of the issue: it answered 201, stored the label, and on PostgreSQL every
    query reading labels failed from then on."""
    with api.as_("acme", Role.OPERATOR) as c:
        r = c.post("/v1/runs", json={"workflow": "plain.echo", "labels": {"a": "a\u0000b"}})
        assert "body.labels.a" in assert_problem(r, 422)["detail"]
        assert "a\u0000b" not in r.text
        assert c.get("/v1/runs").json()["items"] == []
        ok = c.post("/v1/runs", json={"workflow": "plain.echo", "labels": {"a": "ab"}})
        assert ok.status_code == 201, ok.text
        for query in ({"label": "a=ab"}, {"label": "a=b=c"}, {"integration": "null"}):
            assert c.get("/v1/runs", params=query).status_code == 200, query
        assert [r["id"] for r in c.get("/v1/runs", params={"label": "a=ab"}).json()["items"]] == [
            ok.json()["id"]
        ]
    with api.platform() as c:
        for name in ("a/b", "../..", "%2F", "-a", "a b", "*"):
            assert_problem(c.post("/v1/tenants", json={"name": name}), 422)
        assert c.post("/v1/tenants", json={"name": "initech-2.eu_west"}).status_code == 201


def test_bounds_on_labels_and_start_times(api: ApiSetup) -> None:
    many = {f"k{i}": "v" for i in range(20_000)}
    with api.as_("acme", Role.OPERATOR) as c:
        for body, field in [
            ({"labels": many}, "body.labels"),
            ({"start_at": 1e308}, "body.start_at"),
            ({"delay": 366 * 86400 + 1}, "body.delay"),
            ({"labels": {"k" * 101: "v"}}, "body.labels"),
            ({"labels": {"k": "v" * 501}}, "body.labels.k"),
        ]:
            r = c.post("/v1/runs", json={"workflow": "plain.echo", **body})
            assert field in assert_problem(r, 422)["detail"], body
        fifty = {f"k{i}": "v" for i in range(50)}
        r = c.post("/v1/runs", json={"workflow": "plain.echo", "labels": fifty})
        assert r.status_code == 201, r.text
    assert len(api.app.store.runs.list_runs(RunFilter())) == 1


def test_the_python_api_and_the_store_follow_the_same_rule(api: ApiSetup) -> None:
    app, store = api.app, api.app.store
    bad_requests: list[dict[str, Any]] = [
        {"labels": {"a": "a\x00b"}},
        {"labels": {"a": "\ud800"}},
        {"labels": {"a\x1b": "b"}},
        {"labels": {f"k{i}": "v" for i in range(51)}},
        {"tenant": "a/b"},
        {"tenant": "acme\x00"},
        {"idempotency_key": "k\x7f"},
        {"start_at": 1e308},
        {"delay": float("nan")},
        {"priority": 2**40},
    ]
    for options in bad_requests:
        with pytest.raises(InvalidInput):
            app.enqueue_sync("plain.echo", {}, **options)
    with pytest.raises(InvalidInput, match="run input key"):
        app.enqueue_sync("plain.echo", {"a\x00": 1})
    assert store.runs.list_runs(RunFilter()) == []
    for call in [
        lambda: store.accounts.create_tenant("a/b", actor="t"),
        lambda: store.controls.pause(PauseScope.WORKFLOW, "w\x00", actor="t", reason="r"),
        lambda: store.controls.pause(PauseScope.LABEL, "v", label="bad key", actor="t", reason="r"),
        lambda: store.controls.pause(PauseScope.QUEUE, "default", actor="t", reason="why\x85"),
        lambda: store.runs.list_runs(RunFilter(workflow="w\x00")),
        lambda: store.runs.list_runs(RunFilter(label=("k", "v\x00"))),
        # Numbers the database's 32-bit columns cannot hold are refused, not a database error.
        lambda: store.controls.set_tenant("acme", actor="t", reason="r", concurrency=2**31),
        lambda: create_key(
            store.accounts, tenant="acme", role=Role.VIEWER, name="k", actor="t", rate_limit=2**31
        ),
        lambda: store.controls.set_queue("default", actor="t", reason="r", max_attempts=2**31),
    ]:
        with pytest.raises(InvalidInput):
            call()
    assert store.controls.pauses() == []


def test_the_cli_refuses_control_characters_in_one_line(
    sqlite_url: str, app_ref: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("--db", sqlite_url)
    assert cli(capsys, *base, "db", "upgrade")[0] == 0
    for argv, fragment in [
        (
            ("enqueue", "hello", "--app", app_ref, "--label", "a=b\x1bc"),
            "labels.a: must not contain control characters",
        ),
        (("enqueue", "hello", "--app", app_ref, "--tenant", "a/b"), "tenant"),
        (
            ("enqueue", "hello", "--app", app_ref, "--input", '{"a\\u0000": 1}'),
            "input.a\\x00.[key]: must not contain control characters",
        ),
        (("tenants", "create", "../.."), "tenant name"),
        (("pause", "--workflow", "w\x01", "--reason", "r"), "value: must not contain control"),
        (("runs", "list", "--workflow", "w\x01"), "workflow"),
    ]:
        assert_one_line_error(*cli(capsys, *base, *argv)[::2], fragment)
