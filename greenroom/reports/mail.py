"""A report.ready mail carries the report: its HTML as the mail's HTML part (beside the plain
text the event system writes) and its CSV files as attachments."""

from __future__ import annotations

from email.message import EmailMessage
from typing import TYPE_CHECKING

from greenroom.errors import NotFound
from greenroom.model import Event

if TYPE_CHECKING:
    from greenroom.storage.reports import Reports

#: Attachments past this many bytes in all are left out (the mail links to the report instead).
MAX_ATTACHMENTS_BYTES = 10 * 1024 * 1024


def attach_report(message: EmailMessage, reports: Reports, event: Event) -> None:
    """Add the report's files to `message`; a report no longer there leaves the text alone."""
    report_id = event.payload.get("report_id")
    if event.type != "report.ready" or not isinstance(report_id, str):
        return
    try:
        report = reports.get(report_id, tenant=event.tenant)
    except NotFound:
        return
    total = 0
    # The HTML alternative first: once a mail has attachments it is multipart/mixed.
    for f in sorted(report.files, key=lambda f: not f.name.endswith(".html")):
        _, body = reports.file(report.id, f.name, tenant=event.tenant)
        if f.name.endswith(".html"):
            message.add_alternative(body.decode(), subtype="html", charset="utf-8")
        elif total + f.size <= MAX_ATTACHMENTS_BYTES:
            total += f.size
            maintype, _, subtype = f.content_type.split(";")[0].partition("/")
            message.add_attachment(body, maintype=maintype, subtype=subtype, filename=f.name)
