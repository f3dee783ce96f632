"""Workflows declared with isolation="process": each run executes in its own process, which
imports this module to find them."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from pydantic import BaseModel, SecretStr

from greenroom import App, RetryPolicy, RunContext, SecretOrigin, step

app = App()


@step(name="whereami")
async def whereami() -> dict[str, int]:
    return {"pid": os.getpid(), "pgid": os.getpgid(0)}


@app.workflow(name="iso.where", isolation="process")
async def where(ctx: RunContext) -> dict[str, int]:
    return await whereami()


@step(name="count")
async def count(marker: str) -> int:
    path = Path(marker)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


@step(name="fail_once", retry=RetryPolicy(max_attempts=1))
async def fail_once(marker: str) -> str:
    path = Path(marker + ".failed")
    if not path.exists():
        path.write_text("1")
        raise RuntimeError("first attempt fails")
    return "ok"


@app.workflow(
    name="iso.resume",
    isolation="process",
    retry=RetryPolicy(max_attempts=2, initial_delay=0.05, jitter=0),
)
async def resume(ctx: RunContext, marker: str) -> dict[str, object]:
    counted = await count(marker)
    return {"counted": counted, "then": await fail_once(marker)}


@step(name="spin")
async def spin(pidfile: str) -> None:
    Path(pidfile).write_text(str(os.getpid()))
    while True:  # a busy loop: no await, so nothing inside this process can stop it
        pass


# Its timeout leaves the child seconds to start on a loaded machine before it spins.
@app.workflow(name="iso.spin", isolation="process", timeout=4)
async def spin_forever(ctx: RunContext, pidfile: str) -> None:
    await spin(pidfile)


@app.workflow(name="iso.browser", isolation="process", timeout=8)
async def browser(ctx: RunContext, pidfile: str, hang: bool = False) -> str:
    page = await ctx.page()
    await page.goto("data:text/html,<title>isolated</title>")
    Path(pidfile).write_text(str(os.getpid()))
    if hang:
        await page.evaluate("() => { while (true) {} }")
    return await page.title()


@app.workflow(name="iso.sleep", isolation="process")
async def sleep(ctx: RunContext, pidfile: str) -> None:
    Path(pidfile).write_text(str(os.getpid()))
    await asyncio.sleep(60)


@step(name="tick")
async def tick(i: int) -> int:
    await asyncio.sleep(0.1)
    return i


@app.workflow(name="iso.steps", isolation="process")
async def steps(ctx: RunContext, pidfile: str) -> int:
    Path(pidfile).write_text(str(os.getpid()))
    return len([await tick(i) for i in range(20)])


class SiteCredentials(BaseModel):
    user: str
    password: SecretStr


class SiteSettings(BaseModel):
    site: SecretOrigin


site = app.connector("site", credentials=SiteCredentials, settings=SiteSettings)


@app.workflow(
    name="iso.login", connector=site, isolation="process", retry=RetryPolicy(max_attempts=1)
)
async def login(ctx: RunContext, login_url: str) -> dict[str, str]:
    """Logs in where its input says (a mistake): the secret guard holds in the run's process."""
    settings: SiteSettings = ctx.integration.settings
    creds = await ctx.credentials(SiteCredentials)
    page = await ctx.page()
    await page.goto(f"{login_url}/form")
    await page.fill("#user", creds.user)
    await page.fill("#password", creds.password.get_secret_value())
    await page.click("#go")
    await page.wait_for_url("**/home")
    return {"site": str(settings.site), "user": await page.inner_text("#user")}


@step(name="log_here")
async def log_here(secret: str) -> int:
    logging.getLogger("thirdparty").info("logged in its own process: %s", secret)
    return os.getpid()


@app.workflow(name="iso.logs", isolation="process")
async def logs(ctx: RunContext, secret: str) -> int:
    assert ctx.browser is not None
    ctx.browser.add_secret(secret)
    return await log_here(secret)
