"""Cloud Run launcher, deployed once per stage (STAGE=etl …): push endpoint of step-<stage>."""

from lbtrain.api.apps import launcher_app
from lbtrain.service import bootstrap, install_sigterm_handler

app = launcher_app(bootstrap())

if __name__ == "__main__":
    import os

    install_sigterm_handler()
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))  # noqa: S104 - Cloud Run binds all
