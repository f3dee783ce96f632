"""The HTTP API (FastAPI): tenants, keys and roles, integrations, runs and controls.

`greenroom.api.app.create_api` builds it; this package imports nothing itself, so the client can
use `greenroom.api.schemas` without loading FastAPI's routes.
"""
