"""Cloud Run dashboard: the Firestore state dashboard at /dashboard (behind IAP / Cloud Run auth)."""

from lbtrain.api.apps import dashboard_app
from lbtrain.service import bootstrap, install_sigterm_handler

app = dashboard_app(bootstrap())

if __name__ == "__main__":
    import os

    install_sigterm_handler()
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))  # noqa: S104 - Cloud Run binds all
