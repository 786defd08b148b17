"""The ingress Flask app's validation, without emulators: store, bus, Labelbox and backend are
recording fakes, so each test can also check that a refused request touched nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from lbtrain import pipelines, signature
from lbtrain.adapters.firestore_store import CreateResult
from lbtrain.api.apps import ingress_app
from lbtrain.config import Config
from lbtrain.deps import Deps
from lbtrain.messages import encode_push

DATA = Path(__file__).resolve().parent.parent / "data"
DELIVERY = json.loads((DATA / "labelbox_model_run_delivery.json").read_text(encoding="utf-8"))
SECRET = DELIVERY["test_secret"]
TOKEN = "api-token-for-unit-tests"
MAX_BODY = 4096
MODEL_TYPE = "text_single_classification"


class Recorder:
    """Records every method call made on it; answers with canned results where a handler needs one."""

    def __init__(self, name: str, results: dict[str, Any] | None = None):
        self._name = name
        self._results = results or {}
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)

        def method(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((attr, args, kwargs))
            result = self._results.get(attr)
            return result(*args, **kwargs) if callable(result) else result

        return method

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture()
def fakes() -> dict[str, Recorder]:
    return {
        "store": Recorder("store", {"create_run": lambda **kw: CreateResult("0123456789abcdef", True),
                                    "list_runs": lambda **kw: []}),
        "bus": Recorder("bus", {"publish": "msg-1"}),
        "labelbox": Recorder("labelbox"),
        "backend": Recorder("backend"),
    }


def _app(fakes: dict[str, Recorder], **overrides: Any) -> FlaskClient:
    settings: dict[str, Any] = {"labelbox_webhook_secret": SECRET, "api_token": TOKEN, "max_body_bytes": MAX_BODY,
                                "project": "unit", "deployment_name": "unit", **overrides}
    cfg = Config(**settings)
    deps = Deps(cfg)
    for name, fake in fakes.items():
        setattr(deps, name, fake)  # Deps' adapters are cached_property: instance assignment wins
    app = ingress_app(deps)
    app.testing = True
    return app.test_client()


@pytest.fixture()
def client(fakes: dict[str, Recorder]) -> FlaskClient:
    return _app(fakes)


def _untouched(fakes: dict[str, Recorder]) -> None:
    for name, fake in fakes.items():
        assert fake.calls == [], f"{name} was called: {fake.names()}"


def _post_signed(client: FlaskClient, raw: bytes, extra: dict[str, str] | None = None, path: str = "/model_run"):
    headers = {"Content-Type": "application/json", **signature.headers(SECRET, raw), **(extra or {})}
    return client.post(path, data=raw, headers=headers)


def _model_run_body(**fields: Any) -> bytes:
    body = {"modelId": "m1", "modelRunId": "mr1", "modelType": MODEL_TYPE}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


# -- the golden delivery --------------------------------------------------------------------------

def test_golden_delivery_is_accepted_and_starts_a_run(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    raw = DELIVERY["body"].encode()
    resp = client.post(DELIVERY["path"], data=raw, headers=DELIVERY["headers"])
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"run_id": "0123456789abcdef", "created": True}
    (call,) = [c for c in fakes["store"].calls if c[0] == "create_run"]
    kw = call[2]
    body = json.loads(raw)
    assert kw["model_run_id"] == body["modelRunId"] and kw["model_id"] == body["modelId"]
    assert kw["model_type"] == body["modelType"]
    assert kw["trigger"]["source"] == "labelbox"
    assert kw["trigger"]["delivery_id"] == DELIVERY["headers"]["X-Labelbox-Id"]
    assert DELIVERY["headers"]["X-Labelbox-Id"] in kw["delivery_key"]
    (publish,) = fakes["bus"].calls
    assert publish[1][0] == "step-etl"
    assert publish[1][1] == {"run_id": "0123456789abcdef", "stage": "etl", "attempt": 1}
    assert [c[1][1] for c in fakes["labelbox"].calls] == ["EXPORTING_DATA"]


def test_golden_delivery_with_lowercase_header_names(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    headers = {k.lower(): v for k, v in DELIVERY["headers"].items()}
    resp = client.post("/model_run", data=DELIVERY["body"].encode(), headers=headers)
    assert resp.status_code == 200


def test_reserialized_golden_body_is_refused(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    raw = json.dumps(json.loads(DELIVERY["body"])).encode()
    resp = client.post("/model_run", data=raw, headers=DELIVERY["headers"])
    assert resp.status_code == 401
    _untouched(fakes)


# -- signatures -----------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {},
    {"X-Hub-Signature": "sha1=" + "0" * 40},
    {"X-Hub-Signature-256": "sha256=" + "0" * 64},
    {"X-Hub-Signature": "garbage"},
])
def test_bad_signature_is_401_and_nothing_happens(client: FlaskClient, fakes: dict[str, Recorder],
                                                  headers: dict[str, str]) -> None:
    resp = client.post("/model_run", data=_model_run_body(), headers={"Content-Type": "application/json", **headers})
    assert resp.status_code == 401
    assert "error" in resp.get_json() and "Signature" in resp.get_json()["error"]
    _untouched(fakes)


def test_signature_with_another_secret_is_401(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    raw = _model_run_body()
    resp = client.post("/model_run", data=raw, headers=signature.headers("not-the-secret", raw))
    assert resp.status_code == 401
    _untouched(fakes)


def test_bad_signature_is_checked_before_the_body_is_parsed(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    resp = client.post("/model_run", data=b"{not json", headers={"X-Hub-Signature": "sha1=" + "1" * 40})
    assert resp.status_code == 401
    _untouched(fakes)


def test_no_secret_configured_refuses_everything(fakes: dict[str, Recorder]) -> None:
    client = _app(fakes, labelbox_webhook_secret="")
    raw = _model_run_body()
    resp = client.post("/model_run", data=raw, headers=signature.headers("", raw))
    assert resp.status_code == 401
    assert "LABELBOX_WEBHOOK_SECRET" in resp.get_json()["error"]
    _untouched(fakes)


# -- body validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"modelRunId": "mr1",', b"\xff\xfe"])
def test_malformed_json_is_400_naming_it(client: FlaskClient, fakes: dict[str, Recorder], raw: bytes) -> None:
    resp = _post_signed(client, raw)
    assert resp.status_code == 400
    assert "malformed JSON" in resp.get_json()["error"]
    _untouched(fakes)


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"3", b"null"])
def test_body_that_is_not_an_object_is_400(client: FlaskClient, fakes: dict[str, Recorder], raw: bytes) -> None:
    resp = _post_signed(client, raw)
    assert resp.status_code == 400
    assert "JSON object" in resp.get_json()["error"]
    _untouched(fakes)


@pytest.mark.parametrize("missing", ["modelRunId", "modelType"])
def test_missing_field_is_400_naming_it(client: FlaskClient, fakes: dict[str, Recorder], missing: str) -> None:
    resp = _post_signed(client, _model_run_body(**{missing: None}))
    assert resp.status_code == 400
    assert missing in resp.get_json()["error"]
    _untouched(fakes)


def test_empty_model_run_id_is_missing(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    resp = _post_signed(client, _model_run_body(modelRunId=""))
    assert resp.status_code == 400 and "modelRunId" in resp.get_json()["error"]
    _untouched(fakes)


@pytest.mark.parametrize("field,value", [("modelRunId", 12), ("modelType", ["x"]), ("modelId", 5)])
def test_non_string_field_is_400_naming_it(client: FlaskClient, fakes: dict[str, Recorder], field: str,
                                           value: Any) -> None:
    resp = _post_signed(client, _model_run_body(**{field: value}))
    assert resp.status_code == 400
    assert field in resp.get_json()["error"]
    _untouched(fakes)


def test_unknown_model_type_is_400_naming_it(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    resp = _post_signed(client, _model_run_body(modelType="sentiment_regression"))
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert "sentiment_regression" in error
    assert all(name in error for name in pipelines.names())  # and says what is known
    # Nothing is written or published; Labelbox's model run is told why (its UI never shows our answer).
    labelbox = fakes.pop("labelbox")
    _untouched(fakes)
    assert [(c[0], c[1]) for c in labelbox.calls] == [("update_status", ("mr1", "FAILED"))]
    assert "sentiment_regression" in labelbox.calls[0][2]["error_message"]


@pytest.mark.parametrize("model_run_id", ["../etc", "a/b", "mr 1", "x" * 201, "..", ".", "__reserved__"])
def test_unsafe_model_run_id_is_400(client: FlaskClient, fakes: dict[str, Recorder], model_run_id: str) -> None:
    # Used as a Firestore document id (model_runs/{id}) and a directory name (FileLabelbox):
    # "." and ".." are neither valid document ids nor safe directory names, and ids matching
    # __.*__ are reserved by Firestore (the emulator answers InvalidArgument for all three).
    resp = _post_signed(client, _model_run_body(modelRunId=model_run_id))
    assert resp.status_code == 400, resp.get_json()
    assert "model_run_id" in resp.get_json()["error"]
    _untouched(fakes)


def test_body_over_the_limit_is_413(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    raw = _model_run_body(padding="x" * MAX_BODY)
    assert len(raw) > MAX_BODY
    resp = _post_signed(client, raw)
    assert resp.status_code == 413
    assert str(MAX_BODY) in resp.get_json()["error"]
    _untouched(fakes)


def test_unsigned_body_over_the_limit_is_413(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    resp = client.post("/model_run", data=b"x" * (MAX_BODY + 1))
    assert resp.status_code == 413
    _untouched(fakes)


def test_body_at_the_limit_is_read(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    raw = _model_run_body()
    raw = raw[:-1] + b', "padding": "' + b"x" * (MAX_BODY - len(raw) - 15) + b'"}'
    assert len(raw) == MAX_BODY
    resp = _post_signed(client, raw)
    assert resp.status_code == 200


# -- GET /models ----------------------------------------------------------------------------------

def test_models_signed_over_the_empty_body(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    resp = client.get("/models", headers=signature.headers(SECRET, b""))
    assert resp.status_code == 200
    data = resp.get_json()
    assert isinstance(data, dict)
    assert sorted(data) == pipelines.names()
    assert MODEL_TYPE in data
    _untouched(fakes)


def test_models_sha1_only_as_labelbox_sends_it(client: FlaskClient) -> None:
    resp = client.get("/models", headers={"X-Hub-Signature": signature.sign(SECRET, b"")})
    assert resp.status_code == 200


def test_models_unsigned_is_401(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers=signature.headers("wrong", b"")).status_code == 401
    _untouched(fakes)


# -- REST API auth --------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [("GET", "/runs"), ("POST", "/runs"), ("GET", "/runs/0123456789abcdef"),
                                         ("POST", "/runs/0123456789abcdef/cancel"),
                                         ("POST", "/runs/0123456789abcdef/retry")])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Bearer ", "Basic " + TOKEN, TOKEN,
                                  "Bearer " + TOKEN + "x", "X-API-Token: wrong", "X-API-Token: " + TOKEN + "x",
                                  "X-API-Token: "])
def test_rest_api_without_the_right_token_is_401(client: FlaskClient, fakes: dict[str, Recorder], method: str,
                                                 path: str, auth: str | None) -> None:
    if auth is not None and auth.startswith("X-API-Token: "):
        headers = {"X-API-Token": auth.removeprefix("X-API-Token: ")}
    else:
        headers = {"Authorization": auth} if auth is not None else {}
    body = {"model_type": MODEL_TYPE, "model_run_id": "mr1"}
    resp = client.open(path, method=method, json=body, headers=headers)
    assert resp.status_code == 401
    assert "error" in resp.get_json()
    _untouched(fakes)


def test_rest_api_disabled_without_a_configured_token(fakes: dict[str, Recorder]) -> None:
    client = _app(fakes, api_token="")
    resp = client.get("/runs", headers={"Authorization": "Bearer "})
    assert resp.status_code == 401 and "API_TOKEN" in resp.get_json()["error"]
    _untouched(fakes)


def test_rest_api_with_the_token(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    resp = client.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200 and resp.get_json() == {"runs": [], "next_before": None}
    resp = client.post("/runs", json={"model_type": MODEL_TYPE, "model_run_id": "mr1"},
                       headers={"Authorization": f"bearer {TOKEN}", "Idempotency-Key": "k-1"})
    assert resp.status_code == 200 and resp.get_json()["run_id"] == "0123456789abcdef"
    (call,) = [c for c in fakes["store"].calls if c[0] == "create_run"]
    assert call[2]["delivery_key"] == "api:k-1" and call[2]["trigger"]["source"] == "api"
    # Behind IAP / Cloud Run IAM the Authorization header is Google's: the token may come as X-API-Token.
    resp = client.get("/runs", headers={"X-API-Token": TOKEN, "Authorization": "Bearer a-google-identity-token"})
    assert resp.status_code == 200


@pytest.mark.parametrize("body,needle", [
    ({"model_run_id": "mr1"}, "model_type"),
    ({"model_type": MODEL_TYPE}, "model_run_id"),
    ({"model_type": "nope", "model_run_id": "mr1"}, "nope"),
    ({"model_type": MODEL_TYPE, "model_run_id": "mr1", "params": [1]}, "params"),
])
def test_rest_api_create_run_validation(client: FlaskClient, fakes: dict[str, Recorder], body: dict,
                                        needle: str) -> None:
    resp = client.post("/runs", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 400 and needle in resp.get_json()["error"]
    _untouched(fakes)


@pytest.mark.parametrize("query,needle", [("status=WHATEVER", "WHATEVER"), ("model_type=zzz", "zzz"),
                                          ("limit=ten", "limit")])
def test_rest_api_list_validation(client: FlaskClient, fakes: dict[str, Recorder], query: str, needle: str) -> None:
    resp = client.get(f"/runs?{query}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 400 and needle in resp.get_json()["error"]
    _untouched(fakes)


# -- the runs topic's push endpoint ---------------------------------------------------------------

def test_push_runs_bad_body_is_400(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    assert client.post("/push/runs", data=b"not json", content_type="application/json").status_code == 400
    assert client.post("/push/runs", json={"message": "nope"}).status_code == 400
    env = encode_push({"model_type": "nope", "model_run_id": "mr1"})
    assert client.post("/push/runs", json=env).status_code == 400
    _untouched(fakes)


def test_push_runs_data_not_base64_is_400(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    env = encode_push({})
    env["message"]["data"] = "ünïcode is not base64"
    resp = client.post("/push/runs", json=env)
    assert resp.status_code == 400
    _untouched(fakes)


def test_push_runs_valid_message_starts_a_run(client: FlaskClient, fakes: dict[str, Recorder]) -> None:
    env = encode_push({"model_type": MODEL_TYPE, "model_run_id": "mr1"}, message_id="777")
    resp = client.post("/push/runs", json=env)
    assert resp.status_code == 204
    (call,) = [c for c in fakes["store"].calls if c[0] == "create_run"]
    assert call[2]["delivery_key"] == "pubsub:777"
