"""A small client for lbtrain's HTTP API (the CLI, the demo, tests). stdlib only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from lbtrain import signature

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class Client:
    base_url: str
    token: str = ""
    timeout: float = 30.0
    retries: int = 3

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if self.token:
            hdrs.setdefault("Authorization", f"Bearer {self.token}")
        url = self.base_url.rstrip("/") + path
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.status, _decode(resp.read())
            except urllib.error.HTTPError as exc:
                payload = _decode(exc.read())
                if exc.code in (502, 503, 504) and attempt < self.retries:
                    time.sleep(0.5 * 2**attempt)
                    continue
                message = payload.get("error") if isinstance(payload, dict) else str(payload)
                raise ApiError(exc.code, message or exc.reason) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if attempt < self.retries:
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise ApiError(0, f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
        raise AssertionError("unreachable")

    # -- REST API
    def start_run(self, model_type: str, model_run_id: str, model_id: str = "", params: dict | None = None,
                  idempotency_key: str = "") -> dict[str, Any]:
        body = {"model_type": model_type, "model_run_id": model_run_id, "model_id": model_id,
                "params": params or {}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/runs", body, headers)[1]

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        query = "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in filters.items() if v)
        return self.request("GET", "/runs" + (f"?{query}" if query else ""))[1]

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runs/{run_id}")[1]

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self.request("POST", f"/runs/{run_id}/cancel")[1]

    def retry(self, run_id: str) -> dict[str, Any]:
        return self.request("POST", f"/runs/{run_id}/retry")[1]

    def wait(self, run_id: str, timeout: float = 1800.0, interval: float = 1.0, on_change=None) -> dict[str, Any]:  # noqa: ANN001
        """Poll until the run ends; `on_change(run)` sees every change of status/stage/step state, and
        of the running step's progress (`run["progress"]`, when its job reports any)."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            run = self.get_run(run_id)
            key = (run["status"], run.get("stage"), tuple((s["stage"], s["state"], s["attempt"])
                                                          for s in run.get("steps", [])),
                   json.dumps(run.get("progress"), sort_keys=True))
            if key != last and on_change is not None:
                on_change(run)
            last = key
            if run["status"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout:.0f}s")
            time.sleep(interval)

    # -- retraining rules
    def list_triggers(self) -> list[dict[str, Any]]:
        return self.request("GET", "/triggers")[1]["triggers"]

    def get_trigger(self, project_id: str) -> dict[str, Any]:
        return self.request("GET", f"/triggers/{project_id}")[1]

    def set_trigger(self, project_id: str, rule: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", f"/triggers/{project_id}", rule)[1]

    def delete_trigger(self, project_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/triggers/{project_id}")[1]

    # -- Labelbox's side
    def send_webhook(self, path: str, body: dict[str, Any] | None, secret: str, delivery_id: str = "",
                     method: str = "POST", event: str = "") -> tuple[int, Any]:
        raw = json.dumps(body).encode() if body is not None else b""
        headers = signature.headers(secret, raw)
        if delivery_id:
            headers["X-Labelbox-Id"] = delivery_id
        if event:
            headers["X-Labelbox-Event"] = event
        return Client(self.base_url, token="", timeout=self.timeout, retries=self.retries).request(
            method, path, raw=raw if method != "GET" else None, headers=headers)


def _decode(data: bytes) -> Any:
    if not data:
        return {}
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        return data.decode(errors="replace")
