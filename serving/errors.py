"""Errors the serving side raises: a refused request (with its HTTP status) and a refused version."""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status it maps to."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):  # keep status across Ray's pickling of exceptions
        return (RequestError, (self.status, self.message))

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "message": self.message}
        if request_id:
            error["request_id"] = request_id
        return {"error": error}


def not_found(message: str) -> RequestError:
    return RequestError(404, message)


def unprocessable(message: str) -> RequestError:
    return RequestError(422, message)


class BundleLoadError(RuntimeError):
    """A published version cannot be served (incoherent, missing or corrupt files, failed warm-up)."""
