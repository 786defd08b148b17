"""Flask apps for each deployable piece, and the all-in-one app of the local stack."""

from __future__ import annotations

from flask import Flask, redirect

from lbtrain.api import common, dashboard, ingress, push
from lbtrain.deps import Deps


def ingress_app(deps: Deps) -> Flask:
    """Webhooks, REST API and the `runs` topic's push endpoint (services/ingress)."""
    app = Flask("lbtrain-ingress")
    common.install(app, deps)
    app.register_blueprint(ingress.bp)
    app.register_blueprint(push.blueprint([], job_events=False, dead_letter=True))
    return app


def launcher_app(deps: Deps) -> Flask:
    """Push endpoint of `step-<stage>` (services/launcher, one deployment per STAGE)."""
    app = Flask("lbtrain-launcher")
    common.install(app, deps)
    stages = [deps.config.stage] if deps.config.stage else push.all_stages()
    app.register_blueprint(push.blueprint(stages, runs=False, job_events=False, dead_letter=False))
    return app


def dashboard_app(deps: Deps) -> Flask:
    """The Firestore state dashboard at `/dashboard` (services/dashboard); `/` leads there."""
    app = Flask("lbtrain-dashboard")
    common.install(app, deps)
    app.register_blueprint(dashboard.bp)
    app.add_url_rule("/", "root", lambda: redirect("/dashboard/"))
    return app


def dev_app(deps: Deps) -> Flask:
    """Everything on one port (docs/architecture.md §10). The pieces still talk only through Pub/Sub,
    Firestore and storage: this is hosting, not coupling."""
    app = Flask("lbtrain-dev")
    common.install(app, deps)
    app.register_blueprint(ingress.bp)
    app.register_blueprint(push.blueprint())
    app.register_blueprint(dashboard.bp)
    return app
