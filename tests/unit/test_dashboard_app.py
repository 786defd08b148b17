"""The dashboard's HTTP surface without emulators: security headers, token-guarded actions, the
static files it serves itself, and the composite indexes its list queries need."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from lbtrain.api.apps import dashboard_app
from lbtrain.config import Config
from lbtrain.deps import Deps

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "unit-dashboard-token-0123456789"


@pytest.fixture
def client(tmp_path: Path):
    deps = Deps(Config(api_token=TOKEN, artifact_root=str(tmp_path)))
    deps.__dict__["store"] = object()  # any read would fail loudly: these requests must not reach the store
    return dashboard_app(deps).test_client()


def test_actions_need_the_token_before_anything_happens(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"X-API-Token": "wrong"},
                    {"X-API-Token": "wrong", "Authorization": f"Bearer {TOKEN}"}):
        resp = client.post("/dashboard/api/runs/r1/retry", headers=headers)
        assert resp.status_code == 401 and resp.json["error"]
    assert client.post("/dashboard/api/runs/r1/delete", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    assert client.get("/dashboard/api/runs/r1/retry").status_code == 405


def test_static_files_are_served_by_the_app_with_a_strict_csp(client):
    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "text/css")):
        resp = client.get(f"/dashboard/static/{name}")
        assert resp.status_code == 200 and kind in resp.content_type
        assert b"http://" not in resp.data and b"https://" not in resp.data  # nothing from a CDN
    resp = client.get("/dashboard/?status=NOPE")
    assert resp.status_code == 400 and b"unknown status" in resp.data
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/").headers["Location"].endswith("/dashboard/")


def test_templates_reference_only_local_assets_and_never_the_token():
    for path in (ROOT / "lbtrain/api/templates/dashboard").glob("*.html"):
        text = path.read_text()
        assert "//" not in text.replace("http://www.w3.org", ""), f"{path.name} links outside the app"
        assert "api_token" not in text and "config" not in text, path.name
        assert "<script>" not in text and " on" + "click=" not in text, path.name  # no inline script (CSP)


def test_every_list_query_has_its_composite_index():
    """runs: any combination of equality filters on status, model_type, model_run_id, ordered by
    created_at descending (lbtrain/adapters/firestore_store.py list_runs)."""
    spec = json.loads((ROOT / "infra/firestore.indexes.json").read_text())
    declared = {tuple((f["fieldPath"], f["order"]) for f in ix["fields"])
                for ix in spec["indexes"] if ix["collectionGroup"] == "runs"}
    filters = ("status", "model_type", "model_run_id")
    for n in (1, 2, 3):
        for combo in itertools.combinations(filters, n):
            need = tuple((f, "ASCENDING") for f in combo) + (("created_at", "DESCENDING"),)
            assert need in declared, need


def test_package_data_ships_every_template_and_static_file():
    """A non-editable install (the Dockerfile's `pip install .`) must carry the dashboard's files."""
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lbtrain.api"]
    base = ROOT / "lbtrain/api"
    shipped = {p for pattern in patterns for p in base.glob(pattern)}
    files = {p for sub in ("templates", "static") for p in (base / sub).rglob("*") if p.is_file()}
    assert files and files <= shipped, sorted(str(p.relative_to(base)) for p in files - shipped)


def test_a_bad_id_in_the_path_is_refused_before_the_store(client):
    page = client.get("/dashboard/runs/..")
    assert page.status_code == 400 and page.mimetype == "text/html" and b"not a valid id" in page.data
    api = client.get("/dashboard/api/runs/__x__")
    assert api.status_code == 400 and "not a valid id" in api.json["error"]
    log = client.get("/dashboard/runs/r1/steps/%E2%98%83/log")
    assert log.status_code == 400 and log.mimetype == "text/html"
    raw = client.get("/dashboard/runs/x", environ_overrides={"PATH_INFO": "/dashboard/runs/\xff"})
    assert raw.status_code == 400 and b"not valid UTF-8" in raw.data
