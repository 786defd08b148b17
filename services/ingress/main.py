"""Cloud Run ingress: Labelbox webhooks, REST API, runs-topic push endpoint."""

from lbtrain.api.apps import ingress_app
from lbtrain.service import bootstrap, install_sigterm_handler

app = ingress_app(bootstrap())

if __name__ == "__main__":
    import os

    install_sigterm_handler()
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))  # noqa: S104 - Cloud Run binds all
