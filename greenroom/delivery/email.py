"""Sending notification mail over SMTP: one attempt, its outcome recorded, never raised, so the
dispatcher decides what to retry."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

import aiosmtplib
from pydantic import SecretStr

from greenroom.delivery.render import clean
from greenroom.errors import ConfigError
from greenroom.settings import Settings

Security = Literal["auto", "starttls", "tls", "none"]
_TLS: dict[str, tuple[bool, bool | None]] = {
    "auto": (False, None),
    "starttls": (False, True),
    "tls": (True, False),
    "none": (False, False),
}
#: How much of a server's reply a result keeps.
REPLY_MAX = 300


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    #: None: e-mail is not configured, and sending is a ConfigError.
    host: str | None
    port: int = 25
    #: auto: STARTTLS when the server offers it; starttls: required; tls: implicit TLS
    #: (usually port 465); none: plain text.
    security: Security = "auto"
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    sender: str = "greenroom@localhost"
    #: Seconds the whole attempt may take: connect, TLS, login and the message.
    timeout: float = 10.0

    @classmethod
    def of(cls, settings: Settings) -> SmtpConfig:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            sender=settings.smtp_from,
            timeout=settings.delivery_timeout_seconds,
        )

    def tls_options(self) -> tuple[bool, bool | None]:
        """aiosmtplib's `use_tls` and `start_tls` for `security` (None: if offered)."""
        return _TLS[self.security]


@dataclass(frozen=True, kw_only=True)
class MailResult:
    ok: bool
    latency_ms: float
    #: The server's reply (an excerpt): its acceptance, or its refusal.
    response: str = ""
    error: str | None = None
    #: A refusal that sending the same mail again would get too (a 5xx reply to the recipient
    #: or the message); network errors, timeouts and 4xx replies are temporary.
    permanent: bool = False


def _reply(code: int, message: str) -> str:
    return clean(f"{code} {message}", REPLY_MAX)


def _refusal(exc: aiosmtplib.SMTPException) -> tuple[str, bool]:
    """The reply that refused the mail, and whether the refusal is permanent. A 5xx to the
    recipient (550 no such mailbox) or to the message (552 too large) is; a 5xx to the login
    or the sender is the server's configuration, which an operator fixes: temporary."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if not isinstance(exc, aiosmtplib.SMTPResponseException):
        return clean(f"{type(exc).__name__}: {exc}", REPLY_MAX), False
    about_mail = isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError)
    return _reply(exc.code, exc.message), about_mail and 500 <= exc.code < 600


def _client(config: SmtpConfig) -> aiosmtplib.SMTP:
    use_tls, start_tls = config.tls_options()
    password = config.password.get_secret_value() if config.password is not None else None
    return aiosmtplib.SMTP(
        hostname=config.host,
        port=config.port,
        username=config.username,
        password=password,
        timeout=config.timeout,
        use_tls=use_tls,
        start_tls=start_tls,
    )


async def _quit(client: aiosmtplib.SMTP, deadline: float) -> None:
    """Say goodbye politely if there is time left; the mail is sent either way."""
    try:
        async with asyncio.timeout_at(deadline):
            await client.quit()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        pass


async def send_email(config: SmtpConfig, message: EmailMessage) -> MailResult:
    """Send `message` (its From and To are the envelope's) in one attempt of at most
    `config.timeout` seconds, connecting to QUIT. aiosmtplib's `send()` bounds each command,
    not the attempt, and on a cancel waits another timeout for its QUIT: this drives its
    client itself."""
    if config.host is None:
        raise ConfigError("e-mail is not configured: set smtp_host (GREENROOM_SMTP_HOST)")
    started = time.monotonic()
    deadline = asyncio.get_running_loop().time() + config.timeout

    def result(**kw: Any) -> MailResult:
        return MailResult(latency_ms=round((time.monotonic() - started) * 1000, 1), **kw)

    client = _client(config)
    try:
        async with asyncio.timeout_at(deadline):
            await client.connect()
            refused, reply = await client.send_message(message)
        await _quit(client, deadline)
    except TimeoutError:
        return result(ok=False, error=f"timed out after {config.timeout:g} s")
    except aiosmtplib.SMTPException as exc:
        response, permanent = _refusal(exc)
        return result(ok=False, response=response, error=response, permanent=permanent)
    except OSError as exc:
        return result(ok=False, error=clean(f"{type(exc).__name__}: {exc}", REPLY_MAX))
    finally:
        client.close()
    if refused:
        code, text = next(iter(refused.values()))
        response = _reply(code, text)
        return result(ok=False, response=response, error=response, permanent=500 <= code < 600)
    return result(ok=True, response=clean(reply, REPLY_MAX))
