"""Opaque keyset cursors: the last row's sort key, base64 JSON. Following one never skips or repeats."""
from __future__ import annotations

import base64
import json

from ..errors import ApiError


def encode_cursor(key: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(raw: str, shape: tuple[type, ...]) -> list:
    """The key a cursor holds, checked against the expected types; a 400 naming `cursor` otherwise."""
    try:
        padded = raw + "=" * (-len(raw) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(key, list) or len(key) != len(shape):
            raise ValueError
        for value, kind in zip(key, shape):
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError
        return key
    except (ValueError, TypeError):
        raise ApiError("validation_error", "invalid request; see details",
                       [{"field": "cursor", "message": "is not a cursor this API returned"}]) from None
