"""Server-rendered HTML of the console: plain forms and tables with stable selectors.

Selectors a connector may rely on (normal layout): form#login-form with input[name=email],
input[name=password] and [data-testid=login-submit]; [data-testid=login-error]; header
[data-testid=account] on every signed-in page; table[data-testid=users-table] with rows
tr[data-testid=user-row][data-user-id] and cells [data-testid=user-email|user-name|user-role|
user-tier|user-cost|user-last-login|user-status]; [data-testid=page-info] ("Page X of Y"),
a[data-testid=next-page] and a[data-testid=prev-page]; [data-testid=notice]. The changed layout
renders the users as div[data-testid=member-directory] > div[data-testid=member] instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode

from greenroom.demo.saas.data import TIER_COST, TIERS, Organization, User

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1rem;align-items:center}
header .org{font-weight:600} header form{margin-left:auto}
main{padding:1.2rem;max-width:1200px;margin:auto}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:.35rem .5rem;border-bottom:1px solid #e3e6ea;text-align:left;font-size:.9rem}
tr.inactive td{color:#98a0ad} .error{color:#b42318} .notice{color:#067647}
form.inline{display:inline} nav.pages{margin:.8rem 0;display:flex;gap:1rem}
.member{display:grid;grid-template-columns:2fr 2fr 1fr 1fr 1fr 1fr 1fr;background:#fff}
"""


@dataclass(frozen=True, kw_only=True)
class Page:
    number: int
    pages: int
    total: int
    query: str = ""


def document(title: str, body: str, *, org: Organization | None = None, account: str = "") -> str:
    header = ""
    if org is not None and account:
        header = (
            f'<header><span class="org" data-testid="org-name">{escape(org.name)}</span>'
            f'<span data-testid="account" data-org="{escape(org.slug)}">{escape(account)}</span>'
            f'<form method="post" action="/orgs/{escape(org.slug)}/logout">'
            '<button type="submit" data-testid="logout">Sign out</button></form></header>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{header}<main>{body}</main></body></html>"
    )


def index_page(orgs: Sequence[Organization]) -> str:
    items = "".join(
        f'<li data-testid="org" data-org="{escape(o.slug)}"><a href="/orgs/{escape(o.slug)}/login">'
        f"{escape(o.name)}</a> ({len(o.users)} users)</li>"
        for o in orgs
    )
    body = (
        "<h1>Greenroom demo SaaS</h1><p>A pretend admin console for connector tests. "
        "Each organization's admin signs in as admin@{org}.example.</p>"
        f'<ul data-testid="orgs">{items}</ul>'
    )
    return document("Greenroom demo SaaS", body)


def login_page(org: Organization, *, error: str = "", email: str = "", next_url: str = "") -> str:
    alert = f'<p class="error" role="alert" data-testid="login-error">{escape(error)}</p>'
    body = (
        f"<h1>Sign in to {escape(org.name)}</h1>{alert if error else ''}"
        f'<form id="login-form" data-testid="login-form" method="post" '
        f'action="/orgs/{escape(org.slug)}/login">'
        f'<input type="hidden" name="next" value="{escape(next_url)}">'
        '<p><label for="email">Email</label><br>'
        f'<input id="email" name="email" type="email" autocomplete="username" '
        f'data-testid="email" value="{escape(email)}" required></p>'
        '<p><label for="password">Password</label><br>'
        '<input id="password" name="password" type="password" autocomplete="current-password" '
        'data-testid="password" required></p>'
        '<p><button type="submit" data-testid="login-submit">Sign in</button></p></form>'
    )
    return document(f"Sign in · {org.name}", body)


def users_page(
    org: Organization,
    users: Sequence[User],
    page: Page,
    *,
    account: str,
    changed_layout: bool = False,
    notice: str | None = None,
) -> str:
    note = ""
    if notice:
        note = f'<p class="notice" role="status" data-testid="notice">{escape(notice)}</p>'
    listing = directory(org, users, page) if changed_layout else table(org, users, page)
    body = (
        f"<h1>Users</h1>{note}{search_form(org, page)}"
        f"{pagination(org, page)}{listing}{pagination(org, page, bottom=True)}"
        # Browser storage a connector's session persistence must carry along.
        f"<script>localStorage.setItem('greenroom-demo:org', {_js(org.slug)});"
        "sessionStorage.setItem('greenroom-demo:page', String("
        f"{page.number}));</script>"
    )
    return document(f"Users · {org.name}", body, org=org, account=account)


def search_form(org: Organization, page: Page) -> str:
    return (
        f'<form method="get" action="/orgs/{escape(org.slug)}/users" data-testid="search-form">'
        f'<input name="q" type="search" placeholder="Search email or name" data-testid="search" '
        f'value="{escape(page.query)}"><button type="submit">Search</button></form>'
    )


def page_href(org: Organization, number: int, query: str = "") -> str:
    params: dict[str, str | int] = {"page": number}
    if query:
        params["q"] = query
    return f"/orgs/{org.slug}/users?{urlencode(params)}"


def pagination(org: Organization, page: Page, *, bottom: bool = False) -> str:
    """Previous/next links and "Page X of Y"; test ids only on the top copy, to stay unique."""

    def tid(name: str) -> str:
        return "" if bottom else f' data-testid="{name}"'

    prev = next_ = ""
    if page.number > 1:
        href = escape(page_href(org, page.number - 1, page.query))
        prev = f'<a rel="prev" href="{href}"{tid("prev-page")}>Previous</a>'
    if page.number < page.pages:
        href = escape(page_href(org, page.number + 1, page.query))
        next_ = f'<a rel="next" href="{href}"{tid("next-page")}>Next</a>'
    info = f"Page {page.number} of {page.pages}"
    return (
        f'<nav class="pages"{tid("pagination")}>{prev}<span{tid("page-info")} '
        f'data-page="{page.number}" data-pages="{page.pages}" data-total="{page.total}">'
        f"{info} · {page.total} users</span>{next_}</nav>"
    )


def table(org: Organization, users: Sequence[User], page: Page) -> str:
    heads = "".join(
        f"<th>{h}</th>"
        for h in ("Email", "Name", "Role", "Tier", "Monthly cost", "Last login", "Status", "")
    )
    rows = "".join(table_row(org, u, page) for u in users)
    return (
        f'<table id="users-table" data-testid="users-table"><thead><tr>{heads}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def table_row(org: Organization, user: User, page: Page) -> str:
    status = "active" if user.active else "deactivated"
    cells = (
        f'<td data-testid="user-email">{escape(user.email)}</td>'
        f'<td data-testid="user-name">{escape(user.name)}</td>'
        f'<td data-testid="user-role">{user.role}</td>'
        f'<td data-testid="user-tier">{user.tier}</td>'
        f'<td data-testid="user-cost" data-amount="{user.monthly_cost}">'
        f"${user.monthly_cost}</td>"
        f'<td data-testid="user-last-login">{last_login(user)}</td>'
        f'<td data-testid="user-status">{status}</td>'
        f"<td>{actions(org, user, page)}</td>"
    )
    return (
        f'<tr data-testid="user-row" data-user-id="{user.id}" '
        f'class="{"active" if user.active else "inactive"}">{cells}</tr>'
    )


def directory(org: Organization, users: Sequence[User], page: Page) -> str:
    """The "redesigned" listing: same data, different markup, no table and no user-* ids."""
    cards = "".join(
        f'<div class="member" role="row" data-testid="member" data-member="{u.id}">'
        f'<span data-field="mail">{escape(u.email)}</span>'
        f'<span data-field="display-name">{escape(u.name)}</span>'
        f'<span data-field="access">{u.role}</span>'
        f'<span data-field="plan">{u.tier} (${u.monthly_cost}/mo)</span>'
        f'<span data-field="seen">{last_login(u)}</span>'
        f'<span data-field="state">{"active" if u.active else "deactivated"}</span>'
        f"<span>{actions(org, u, page)}</span></div>"
        for u in users
    )
    return (
        '<div id="member-directory" class="directory" role="table" '
        f'data-testid="member-directory">{cards}</div>'
    )


def last_login(user: User) -> str:
    if user.last_login is None:
        return "never"
    day = user.last_login.isoformat()
    return f'<time datetime="{day}">{day}</time>'


def actions(org: Organization, user: User, page: Page) -> str:
    base = f"/orgs/{escape(org.slug)}/users/{user.id}"
    keep = (
        f'<input type="hidden" name="page" value="{page.number}">'
        f'<input type="hidden" name="q" value="{escape(page.query)}">'
    )
    options = "".join(
        f'<option value="{t}"{" selected" if t == user.tier else ""}>{t} (${TIER_COST[t]})</option>'
        for t in TIERS
    )
    tier_form = (
        f'<form class="inline" method="post" action="{base}/tier" data-testid="tier-form">{keep}'
        f'<select name="tier" data-testid="tier-select">{options}</select>'
        '<button type="submit" data-testid="change-tier">Change tier</button></form>'
    )
    if not user.active:
        return tier_form
    return (
        f'<form class="inline" method="post" action="{base}/deactivate" '
        f'data-testid="deactivate-form">{keep}'
        '<button type="submit" data-testid="deactivate">Deactivate</button></form>' + tier_form
    )


def error_page(status: int, message: str) -> str:
    return document(
        f"{status} · Greenroom demo SaaS",
        f'<h1 data-testid="error-status">{status}</h1><p data-testid="error-message">'
        f"{escape(message)}</p>",
    )


def _js(text: str) -> str:
    """A JavaScript string literal safe inside a script element (slugs are [a-z0-9-])."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("<", "\\x3c") + "'"
