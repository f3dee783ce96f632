"""The HTTP API (FastAPI): tenants, keys and roles, integrations, runs and controls."""

from greenroom.api.app import create_api

__all__ = ["create_api"]
