"""The example connector for the demo SaaS admin console: the model to copy for a new app.

    uv run greenroom demo-saas                                 # the console, on 127.0.0.1:8765
    uv run greenroom worker --app greenroom.demo.connector:app # workers that run these workflows
    # an admin creates an integration (POST /v1/integrations) with the org admin's e-mail and
    # password as credentials and {"base_url": "http://127.0.0.1:8765"} as settings, then:
    uv run greenroom enqueue demo.sync_users --app greenroom.demo.connector:app \\
        --integration int_… --tenant acme --input '{"org": "acme"}'

What makes it durable, and why it is written this way:

- Where the console is (`base_url`) is a setting of the integration, typed SecretOrigin: its
  admins decide it, a run reads it (ctx.integration.settings), and the password is only ever
  sent to that origin. A URL taken from a run's input would let whoever starts a run send the
  integration's password to a page of their choosing.

- Each page's step hands its users to greenroom as license accounts (ctx.save_accounts): tier,
  monthly cost, last login and status are what license intelligence judges (idle seats and
  their savings); `deactivate=` names the workflow that reclaims one.
- One login step (`@step(login=True)`), then one checkpointed step per page of users. A run
  resumed on another worker replays the steps it has and reads only the pages it is missing,
  in the browser session greenroom saved after each step: it does not sign in again.
- Every step opens its own URL rather than trusting where the previous step left the page, so
  it works the same after a resume, a retry or a browser crash.
- A page that shows the login form raises LoggedOut: greenroom discards the expired session,
  runs the login step again (once) and retries the step.
- Selectors are the console's data-testid attributes, which survive restyling; every wait is
  for something the page shows, never for a fixed time. A page that shows none of what was
  expected fails at once with LayoutChanged (no retry can fix it), and greenroom keeps its
  screenshot and HTML with the failed step.
- The password is registered as a secret before it is typed (by ctx.credentials): it never
  appears in artifacts, traces or logs, and greenroom refuses to type it into a page of any
  other origin than the integration's.
"""

from __future__ import annotations

import re
from typing import TypedDict
from urllib.parse import urlencode

from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from pydantic import BaseModel, SecretStr

from greenroom import App, LoggedOut, PermanentError, RetryPolicy, RunContext, SecretOrigin, step
from greenroom.failures import TransientError

app = App()


class DemoCredentials(BaseModel):
    """What an integration with the console stores (sealed; the password is a secret)."""

    email: str
    password: SecretStr


class DemoSettings(BaseModel):
    """What an integration's admins set: where the console is. Its origin is the only one the
    credentials may be sent to."""

    base_url: SecretOrigin


demo = app.connector(
    "demo",
    credentials=DemoCredentials,
    settings=DemoSettings,
    title="Demo SaaS admin console",
    deactivate="demo.deactivate_user",
)

#: One browser session per tenant and organization: its runs never overlap, and each starts
#: from the cookies the previous one left.
SESSION = "{tenant}:{org}"
#: A page that fails (HTTP 500, a network error) is tried again before its run fails.
STEP_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.5, max_delay=5.0)
#: A failed run is retried from its failed step, with its session restored.
RUN_RETRY = RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=30.0)
#: An upper bound for one step; each Playwright action has its own (browser_action_timeout).
STEP_TIMEOUT = 120.0

ACCOUNT = "[data-testid=account]"  # the header of every signed-in page
LOGIN_FORM = "[data-testid=login-form]"
LOGIN_ERROR = "[data-testid=login-error]"
USERS_TABLE = "[data-testid=users-table]"
USER_ROW = "[data-testid=users-table] [data-testid=user-row]"
PAGE_INFO = "[data-testid=page-info]"
ERROR_PAGE = "[data-testid=error-status]"

# One round trip for a whole page of rows; a missing cell names itself.
READ_ROWS = """rows => rows.map(row => {
  const cell = name => {
    const el = row.querySelector(`[data-testid="user-${name}"]`);
    if (!el) throw new Error(`user row without [data-testid=user-${name}]`);
    return el;
  };
  const seen = cell('last-login').querySelector('time');
  return {
    email: cell('email').textContent.trim(),
    name: cell('name').textContent.trim(),
    role: cell('role').textContent.trim(),
    tier: cell('tier').textContent.trim(),
    monthly_cost: Number(cell('cost').dataset.amount),
    last_login: seen ? seen.getAttribute('datetime') : null,
    active: cell('status').textContent.trim() === 'active',
  };
})"""


class LayoutChanged(PermanentError):
    """The page loaded but shows none of the elements the connector looks for."""


class UserRow(TypedDict):
    email: str
    name: str
    role: str
    tier: str
    monthly_cost: int
    last_login: str | None  # ISO date; None: never logged in
    active: bool


class UsersPage(TypedDict):
    number: int
    pages: int
    users: list[UserRow]


class Synced(TypedDict):
    org: str
    users: list[UserRow]
    pages: int


class SignedIn(TypedDict):
    org: str
    account: str
    #: True: the restored session was still signed in, no login was needed.
    restored: bool


class Deactivated(TypedDict):
    email: str
    deactivated: bool
    #: False: the user was already inactive (a repeated or retried run).
    changed: bool


# -- workflows -----------------------------------------------------------------------------


@app.workflow(name="demo.sync_users", connector=demo, session=SESSION, retry=RUN_RETRY)
async def sync_users(ctx: RunContext, org: str) -> Synced:
    """Every user of the organization, read one checkpointed page at a time."""
    verify_saves(ctx)
    base_url = console_url(ctx)
    await log_in(ctx, base_url, org)
    users: list[UserRow] = []
    number, pages = 1, 1
    while number <= pages:
        listing = await read_users_page(ctx, base_url, org, number)
        users += listing["users"]
        pages = listing["pages"]
        number += 1
    return {"org": org, "users": users, "pages": pages}


@app.workflow(name="demo.deactivate_user", connector=demo, session=SESSION, retry=RUN_RETRY)
async def deactivate_user(ctx: RunContext, org: str, email: str) -> Deactivated:
    """Deactivate one user, signing in only if the session's saved state is not."""
    verify_saves(ctx)
    base_url = console_url(ctx)
    await log_in(ctx, base_url, org)
    return await deactivate(ctx, base_url, org, email)


# -- steps ---------------------------------------------------------------------------------


def console_url(ctx: RunContext) -> str:
    """The console's URL, from the integration's settings (never from the run's input)."""
    settings: DemoSettings = ctx.integration.settings
    return settings.base_url


async def sign_in_as(ctx: RunContext) -> tuple[str, str]:
    """The integration's credentials: opening them registers the password as a secret,
    redacted from every artifact and sent only to the integration's origin."""
    creds = await ctx.credentials(DemoCredentials)
    return creds.email, creds.password.get_secret_value()


@step(name="demo.login", login=True, retry=STEP_RETRY, timeout=STEP_TIMEOUT)
async def log_in(ctx: RunContext, base_url: str, org: str) -> SignedIn:
    """Sign in as the org's admin, unless the restored session still is: the users page shows
    either the console or the login form, which brings us back to it after signing in."""
    page = await ctx.page()
    await page.goto(users_url(base_url, org))
    email, password = await sign_in_as(ctx)
    if await outcome(page, console=ACCOUNT, login=LOGIN_FORM) == "console":
        return {"org": org, "account": email, "restored": True}
    await page.get_by_test_id("email").fill(email)
    await page.get_by_test_id("password").fill(password)
    await page.get_by_test_id("login-submit").click()
    if await outcome(page, console=ACCOUNT, refused=LOGIN_ERROR) == "refused":
        raise PermanentError(f"the demo SaaS refused the admin credentials of {org!r}")
    return {"org": org, "account": email, "restored": False}


@step(name="demo.users_page", retry=STEP_RETRY, timeout=STEP_TIMEOUT)
async def read_users_page(ctx: RunContext, base_url: str, org: str, number: int) -> UsersPage:
    """One page of the users table, and how many pages there are."""
    page = await ctx.page()
    await open_users(page, users_url(base_url, org, page=number))
    rows: list[UserRow] = await page.locator(USER_ROW).evaluate_all(READ_ROWS)
    pages = await page.locator(PAGE_INFO).get_attribute("data-pages")
    if pages is None or not (pages.isascii() and pages.isdigit()):
        raise LayoutChanged(f"{page.url}: {PAGE_INFO} has no data-pages")
    # greenroom keeps the licenses as they come; the last page says the list was complete, so
    # accounts no longer listed are removed (saving a page again changes nothing).
    await ctx.save_accounts([license_of(row) for row in rows], complete=number >= int(pages))
    return {"number": number, "pages": int(pages), "users": rows}


def license_of(row: UserRow) -> dict[str, object]:
    """A users-table row as an account greenroom judges (the console prices in US dollars)."""
    return {
        "user_id": row["email"],
        "email": row["email"],
        "name": row["name"],
        "role": row["role"],
        "tier": row["tier"],
        "unit_cost": row["monthly_cost"],
        "currency": "USD",
        "last_active": row["last_login"],
        "status": "active" if row["active"] else "deactivated",
    }


@step(name="demo.deactivate", retry=STEP_RETRY, timeout=STEP_TIMEOUT)
async def deactivate(ctx: RunContext, base_url: str, org: str, email: str) -> Deactivated:
    """Find the user by searching for the address and deactivate them unless they already are
    inactive, so a retried or repeated run changes nothing twice."""
    page = await ctx.page()
    await open_users(page, users_url(base_url, org, query=email))
    exact = re.compile(f"^\\s*{re.escape(email)}\\s*$", re.IGNORECASE)
    row = page.locator(USER_ROW).filter(
        has=page.get_by_test_id("user-email").filter(has_text=exact)
    )
    if await row.count() != 1:
        raise PermanentError(f"{email} is not a user of {org!r}")
    if "inactive" in ((await row.get_attribute("class")) or "").split():
        return {"email": email, "deactivated": True, "changed": False}
    user_id = await row.get_attribute("data-user-id")
    await row.get_by_test_id("deactivate").click()
    done = f'[data-testid=user-row][data-user-id="{user_id}"].inactive'
    if await outcome(page, done=done, login=LOGIN_FORM) == "login":
        raise LoggedOut(f"signed out while deactivating {email}")
    return {"email": email, "deactivated": True, "changed": True}


# -- page helpers --------------------------------------------------------------------------


def users_url(base_url: str, org: str, *, page: int = 1, query: str = "") -> str:
    params: dict[str, str | int] = {"page": page}
    if query:
        params["q"] = query
    return f"{base_url.rstrip('/')}/orgs/{org}/users?{urlencode(params)}"


async def open_users(page: Page, url: str) -> None:
    """Open a users page; LoggedOut when the console asks to sign in instead."""
    await page.goto(url)
    if await outcome(page, users=USERS_TABLE, login=LOGIN_FORM) == "login":
        raise LoggedOut(f"{url} asked to sign in: the session has expired")


async def outcome(page: Page, **expected: str) -> str:
    """Wait until the page shows one of the `expected` selectors and say which (the first in
    the page); an error page raises (5xx: TransientError, retried; else PermanentError), and
    a page showing none of them raises LayoutChanged after the action timeout."""
    anything = page.locator(", ".join([*expected.values(), ERROR_PAGE])).first
    try:
        await anything.wait_for()
    except PlaywrightTimeoutError:
        wanted = " or ".join(expected.values())
        raise LayoutChanged(
            f"selector not found: {wanted} on {page.url} (has the console's layout changed?)"
        ) from None
    error = page.locator(ERROR_PAGE)
    if await error.count():
        status = (await error.first.inner_text()).strip()
        message = f"{page.url} answered HTTP {status}: {await message_of(page)}"
        raise TransientError(message) if status.startswith("5") else PermanentError(message)
    for name, selector in expected.items():
        if await page.locator(selector).count():
            return name
    raise TransientError(f"{page.url} changed while it was read")


async def message_of(page: Page) -> str:
    text = await page.locator("[data-testid=error-message]").all_inner_texts()
    return " ".join(t.strip() for t in text) or "no message"


def verify_saves(ctx: RunContext) -> None:
    """Save the session after a step only while its page shows the signed-in console: a page
    that lost its login must not replace a good saved session."""
    if ctx.browser is not None:
        ctx.browser.set_probe(signed_in)


async def signed_in(page: Page) -> bool:
    return await page.locator(ACCOUNT).count() > 0
