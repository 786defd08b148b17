"""`{state_dir}/dev.json` holds the local stack's generated secrets: always 0600, whatever was there."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from lbtrain.config import Config
from lbtrain.devstack import local_secrets, read_local_secrets


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_file_is_0600_even_with_an_open_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        cfg = local_secrets(Config(state_dir=str(tmp_path)))
    finally:
        os.umask(old)
    path = tmp_path / "dev.json"
    assert _mode(path) == 0o600
    assert read_local_secrets(str(tmp_path))["api_token"] == cfg.api_token


def test_an_existing_world_readable_file_becomes_0600_and_keeps_its_secrets(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"api_token": "kept-token", "labelbox_webhook_secret": "kept-secret"}))
    path.chmod(0o644)
    cfg = local_secrets(Config(state_dir=str(tmp_path)))
    assert _mode(path) == 0o600
    assert (cfg.api_token, cfg.labelbox_webhook_secret) == ("kept-token", "kept-secret")
    assert [p.name for p in tmp_path.iterdir()] == ["dev.json"]  # no temporary file left


def test_a_link_in_its_place_is_replaced_not_written_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not yours")
    elsewhere.chmod(0o644)
    state = tmp_path / "state"
    state.mkdir()
    (state / "dev.json").symlink_to(elsewhere)
    local_secrets(Config(state_dir=str(state)))
    assert elsewhere.read_text() == "not yours" and _mode(elsewhere) == 0o644
    assert not (state / "dev.json").is_symlink() and _mode(state / "dev.json") == 0o600
