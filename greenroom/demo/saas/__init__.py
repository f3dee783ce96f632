"""The demo SaaS admin console: a pretend multi-organization SaaS for connectors to drive.

Organizations live at /orgs/{org}/ (any slug [a-z0-9-] is one, generated from the slug; the
first ones are acme, globex, initech, ...). Each org's admin signs in as admin@{org}.example
with the password admin_credentials(org).password (an HMAC of the org and a secret). Pages:
login form, paginated users table, deactivate and change-tier actions. Test hooks under
/_admin/: login counters, fault injection (latency, HTTP 500s, session expiry, changed layout).

Run it with `greenroom demo-saas`, or in-process with `running_demo_saas()`.
"""

from greenroom.demo.saas.app import create_app
from greenroom.demo.saas.config import Faults, SaasConfig
from greenroom.demo.saas.data import (
    TIER_COST,
    Credentials,
    Organization,
    User,
    admin_credentials,
    org_slugs,
    organization,
)
from greenroom.demo.saas.server import DemoSaaS, SaasOptions, make_config, running_demo_saas

__all__ = [
    "TIER_COST",
    "Credentials",
    "DemoSaaS",
    "Faults",
    "Organization",
    "SaasConfig",
    "SaasOptions",
    "User",
    "admin_credentials",
    "create_app",
    "make_config",
    "org_slugs",
    "organization",
    "running_demo_saas",
]
