"""Process set-up shared by the services' and functions' main.py (Cloud Run template style)."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from lbtrain import config as configmod
from lbtrain import log as logmod
from lbtrain.deps import Deps


def bootstrap() -> Deps:
    config = configmod.from_env()
    logmod.setup(secrets=config.secrets(), project=config.project)
    return Deps(config)


def install_sigterm_handler() -> None:
    """Cloud Run sends SIGTERM 10 s before stopping an instance: log it and exit cleanly."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("lbtrain").info("SIGTERM received, shutting down")
        logging.shutdown()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
