"""`POST /api/telemetry/`: the original write path, same validation and same stream as `/api/ingest`.

A device token writes for its own device; an admin token names the device with `device_id`.
"""
from __future__ import annotations

import time

import redis
from flask import request

from visiontrack.errors import ApiError
from visiontrack.tokens import parse_index_value, token_sha256
from visiontrack.validation import Limits, Message, validate_telemetry
from visiontrack.web.auth import bearer_token
from visiontrack.web.fields import MAX_ID

from . import metrics

UNKNOWN_TOKEN = "a valid device or admin token is required (Authorization: Bearer <token>)"


def _device_for_token(svc, token: str) -> int:
    try:
        found = parse_index_value(svc.redis.hget(svc.config.token_index_key, token_sha256(token)))
    except redis.RedisError:
        raise ApiError("unavailable", "the token index (Redis) is unreachable; retry later",
                       retry_after=svc.config.retry_after_seconds) from None
    if found is None:
        raise ApiError("unauthorized", UNKNOWN_TOKEN)
    device_id, status = found
    if status != "active":
        raise ApiError("forbidden", f"device {device_id} is disabled")
    return device_id


def _check_admin_device(svc, device_id: int) -> None:
    with svc.db.transaction() as cur:
        cur.execute("SELECT status FROM devices WHERE id = %s", (device_id,))
        row = cur.fetchone()
    if row is None:
        raise ApiError("not_found", f"device {device_id} does not exist")
    if row["status"] != "active":
        raise ApiError("forbidden", f"device {device_id} is disabled")


def _named_device(messages: list[Message], token_device: int | None) -> int:
    """The one device the request writes for, from the token or from every message's `device_id`."""
    details, named = [], set()
    for i, msg in enumerate(messages):
        value = msg.device_id
        if value is None:
            if token_device is None:
                details.append({"index": i, "field": "device_id", "message": "is required with an admin token"})
            continue
        # Bounded like the id converters and query arguments: a larger id can name no device (it was a 404).
        if type(value) is not int or not 1 <= value <= MAX_ID:
            details.append({"index": i, "field": "device_id", "message": f"must be an integer from 1 to {MAX_ID}"})
            continue
        named.add(value)
    if details:
        raise ApiError("validation_error", "invalid readings; see details", details)
    if token_device is not None:
        if named - {token_device}:
            raise ApiError("forbidden", "a device token may only write its own device's telemetry")
        return token_device
    if len(named) > 1:
        raise ApiError("validation_error", "invalid readings; see details",
                       [{"index": None, "field": "device_id", "message": "all messages must name the same device"}])
    return named.pop()


def _read_body(limit: int) -> bytes:
    """At most one byte more than the limit, whatever Content-Length declares: enough for validate_telemetry
    to answer 413, after the media type (415) as docs/contracts.md section 3 orders the checks. (Refusing a
    declared length here, before the media type is known, answered 413 where the contract says 415.)"""
    return request.stream.read(limit + 1)


def ingest(svc, writer) -> int:
    """Authenticate, validate, append; return the number of readings accepted (and count the outcome)."""
    parsed = [0]  # readings of a request that got past validation
    try:
        accepted = _ingest(svc, writer, parsed)
    except ApiError as exc:
        metrics.rejected(exc.code, parsed[0])
        raise
    metrics.accepted(accepted)
    return accepted


def _ingest(svc, writer, parsed: list[int]) -> int:
    now_ms = time.time_ns() // 1_000_000
    token = bearer_token()
    if not token:
        raise ApiError("unauthorized", UNKNOWN_TOKEN)
    role = svc.auth.role(token)
    if role == "reader":
        raise ApiError("forbidden", "reader tokens may only read")
    token_device = None if role == "admin" else _device_for_token(svc, token)
    if token_device is not None:  # backpressure before the body; an admin names the device in it
        writer.check_room(token_device)
    limits = Limits.from_config(svc.config)
    body = _read_body(limits.max_body_bytes)
    messages = validate_telemetry(request.headers.get("Content-Type"), body, now_ms, limits,
                                  reserved=frozenset({"device_id"}))
    readings = [r for msg in messages for r in msg.readings]
    parsed[0] = len(readings)
    device_id = _named_device(messages, token_device)
    if token_device is None:
        _check_admin_device(svc, device_id)
        writer.check_room(device_id)
    writer.append(device_id, readings, now_ms)
    return len(readings)
