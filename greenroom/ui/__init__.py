"""The operator's web console, served by the API under /ui (docs/dashboard.md)."""
