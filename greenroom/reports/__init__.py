"""Per-tenant scheduled reports: automation health and license savings, made once per tenant,
type and period by a workflow and delivered through the event system (docs/reports.md)."""
