"""The SDK adapter's own decisions, without a server: what is retried, how uploads are batched,
and that choosing it stays cheap (the labelbox SDK is imported only when the adapter is built)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
from lbox import exceptions as lbx

from lbtrain.adapters.labelbox import from_config
from lbtrain.adapters.labelbox_sdk import SdkLabelbox, retryable
from lbtrain.config import Config, from_env


def _http_error(code: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = code
    return requests.HTTPError(f"{code}", response=response)


@pytest.mark.parametrize("exc, expected", [
    (lbx.ApiLimitError("You have exceeded"), True),
    (lbx.LabelboxError("429 Too Many Requests", "slow down"), True),
    (lbx.NetworkError(ConnectionError("reset")), True),
    (requests.ConnectionError("refused"), True),
    (requests.Timeout("read timed out"), True),
    (_http_error(503), True),
    (_http_error(429), True),
    (_http_error(404), False),
    # the SDK already retried these for up to 120 s: never again on top
    (lbx.InternalServerError("502 Bad Gateway"), False),
    (lbx.TimeoutError("timed out"), False),
    (lbx.AuthenticationError("Invalid API key"), False),
    (lbx.InvalidQueryError("bad query"), False),
    (ValueError("bad rows"), False),
])
def test_what_is_retried(exc: BaseException, expected: bool) -> None:
    assert retryable(exc) is expected


def test_batches_by_rows_and_bytes() -> None:
    lb = SdkLabelbox("key", endpoint="http://127.0.0.1:9/graphql", batch_rows=3, batch_bytes=10_000)
    rows = [{"i": i} for i in range(7)]
    assert [len(b) for b in lb.batches(rows)] == [3, 3, 1]
    lb.batch_rows, lb.batch_bytes = 100, 2 * (len(json.dumps(rows[0])) + 1)
    assert [len(b) for b in lb.batches(rows)] == [2, 2, 2, 1]
    lb.batch_bytes = 1  # a row larger than the byte budget still goes, alone
    assert [len(b) for b in lb.batches(rows)] == [1] * 7
    assert [r for b in lb.batches(rows) for r in b] == rows


def test_a_missing_api_key_is_a_clear_error_at_construction() -> None:
    with pytest.raises(ValueError, match="LABELBOX_BACKEND=sdk needs a Labelbox API key"):
        SdkLabelbox("")
    with pytest.raises(ValueError, match="LABELBOX_API_KEY"):
        from_config(Config(labelbox_backend="sdk", labelbox_api_key=""))


def test_endpoint_comes_from_config() -> None:
    config = from_env({"LABELBOX_BACKEND": "sdk", "LABELBOX_API_KEY": "k", "LABELBOX_ENDPOINT": "http://h:1/graphql"})
    assert config.labelbox_endpoint == "http://h:1/graphql"
    assert from_config(config).client.endpoint == "http://h:1/graphql"
    assert from_config(from_env({"LABELBOX_BACKEND": "sdk", "LABELBOX_API_KEY": "k"})).client.endpoint == (
        "https://api.labelbox.com/graphql")


def test_the_labelbox_sdk_is_imported_only_when_the_adapter_is_built() -> None:
    code = ("import sys; import lbtrain.adapters.labelbox, lbtrain.adapters.labelbox_sdk, lbtrain.reporting; "
            "print('labelbox' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
