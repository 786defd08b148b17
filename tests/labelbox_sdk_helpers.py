"""What the SDK adapter's wire tests share: the fake Labelbox API served for one test, the real
adapter pointed at it with fast retries, and a small text project (every 5th row unlabeled)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from lbtrain.adapters.labelbox_sdk import SdkLabelbox
from tests.fakes.labelbox_server import FakeLabelbox, serve

API_KEY = "lb-test-key-5f1c0ffee0ddba11"


@contextlib.contextmanager
def served(fake: FakeLabelbox) -> Iterator[FakeLabelbox]:
    server = serve(fake)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def sdk_adapter(fake: FakeLabelbox, **kwargs: Any) -> SdkLabelbox:
    opts: dict[str, Any] = {"backoff_seconds": 0.01, "import_poll_seconds": 0.01, **kwargs}
    return SdkLabelbox(API_KEY, endpoint=f"{fake.base_url}/graphql", **opts)


def text_project_rows(project_id: str, n: int) -> list[dict[str, Any]]:
    """Export v2 project rows with one radio label each, but every 5th row, which has none."""
    return [{"data_row": {"id": f"dr-{i:03d}", "global_key": f"t{i}", "row_data": f"text {i}"},
             "media_attributes": {"mime_type": "text/plain"},
             "projects": {project_id: {"name": "p", "labels": [] if i % 5 == 0 else [
                 {"id": f"lab-{i:03d}", "annotations": {"objects": [], "classifications": [
                     {"name": "sentiment", "value": "sentiment",
                      "radio_answer": {"name": "positive", "value": "positive", "classifications": []}}],
                     "relationships": []}}]}}}
            for i in range(n)]
