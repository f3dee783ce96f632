"""The docs say what exists: their Python parses, the README's example can be imported (by a
worker) without enqueueing anything, and the `ctx.browser` calls docs/browser.md lists have the
signatures it gives."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import types
from pathlib import Path

import pytest

from greenroom import RunContext
from greenroom.browser.runtime import RunBrowser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[str]:
    return [textwrap.dedent(m[2]) for m in BLOCK.finditer(path.read_text())]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_in_the_docs_parses(path: Path) -> None:
    for block in python_blocks(path):
        ast.parse(block)


def test_importing_the_readme_example_enqueues_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker imports the module: it must not enqueue (nor create a database) as it does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GREENROOM_DB", raising=False)
    example = python_blocks(ROOT / "README.md")[0]
    module = types.ModuleType("readme_example")
    exec(compile(example, "README.md", "exec"), module.__dict__)
    assert "acme.sync_users" in module.app.workflows
    assert "run" not in module.__dict__
    assert not (tmp_path / ".greenroom").exists(), "no database was opened"


#: `ctx.browser.NAME(PARAMS) -> RESULT` (or `ctx.NAME(…)`) in docs/browser.md's table.
CALL = re.compile(r"^\| `(?:await )?ctx\.(browser\.)?(\w+)\((.*?)\) -> [^`]+` \|", re.MULTILINE)


def test_the_documented_browser_calls_have_their_signatures() -> None:
    found = CALL.findall((ROOT / "docs" / "browser.md").read_text())
    assert {name for _, name, _ in found} >= {"page", "set_probe", "logged_out", "add_secret"}
    for on_browser, name, params in found:
        owner = RunBrowser if on_browser else RunContext
        real = inspect.signature(getattr(owner, name))
        documented = re.findall(r"(?:^|,\s*)(\w+)\s*:", params)
        assert documented == list(real.parameters)[1:], name
