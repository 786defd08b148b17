"""Fake Vertex AI routes: automl (filled in by the automl work). See tests/fakes/vertex.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.vertex import FakeVertex


def route(fake: FakeVertex, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any] | None:
    return None
