"""Errors the store raises and the HTTP layer maps to status codes. Kept apart from the
Firestore adapter so that importing them does not load google-cloud-firestore."""


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    """The request is valid but the run is in a state that forbids it (HTTP 409)."""


class Busy(RuntimeError):
    """Another handler holds the step right now, or contention outlasted retries (HTTP 503)."""
