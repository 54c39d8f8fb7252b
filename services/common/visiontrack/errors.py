"""The one error shape of every service: {"error", "message", "details"}."""
from __future__ import annotations

STATUS = {
    "validation_error": 400,
    "malformed_json": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "internal_error": 500,
    "unavailable": 503,
}


class ApiError(Exception):
    """An answer other than success; `code` is one of STATUS."""

    def __init__(self, code: str, message: str, details: list | None = None, retry_after: int | None = None):
        super().__init__(message)
        if code not in STATUS:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        self.details = details or []
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def body(self) -> dict:
        return {"error": self.code, "message": self.message, "details": self.details}
