"""An app that makes reports: `greenroom worker --app tests.apps.reports_app:app --queues
reports` serves its report runs (the database comes from --db or GREENROOM_DB)."""

from __future__ import annotations

from greenroom import App
from greenroom.reports.workflows import add_reports

app = App()
add_reports(app)
