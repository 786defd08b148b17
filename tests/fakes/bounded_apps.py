"""Every lbtrain Flask app with a 1000-byte body limit, for serving under gunicorn in tests
(`gunicorn tests.fakes.bounded_apps:ingress`). Nothing here reaches a cloud service at import."""

from __future__ import annotations

from lbtrain.api import apps
from lbtrain.config import Config
from lbtrain.deps import Deps

LIMIT = 1000
CONFIG = Config(max_body_bytes=LIMIT, api_token="tok", labelbox_webhook_secret="whs", stage="etl")

ingress = apps.ingress_app(Deps(CONFIG))
launcher = apps.launcher_app(Deps(CONFIG))
dashboard = apps.dashboard_app(Deps(CONFIG))
dev = apps.dev_app(Deps(CONFIG))
