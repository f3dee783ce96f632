"""The API test app (tests.api_helpers.build_app) for `greenroom api` and `greenroom up`
subprocesses: --db chooses its database; its secret key is random per process."""

from greenroom.settings import load_settings
from tests.api_helpers import build_app

app = build_app(load_settings().db)
