"""Devices and tokens in Postgres, with the Redis token index changed before each commit.

Every transaction here that writes a device takes its locks in one order (the device's row, its token,
its rules and purge, the index lock last) and is run again when Postgres rolls it back as a deadlock
victim (`_retried`). Why, and how it fits the aggregator's locks: see docs/design.md, "Device
authentication and the token index" and "Lock order in the registry".
"""
from __future__ import annotations

import logging
import random
import time

import psycopg2.errors
import psycopg2.extras
import redis

from visiontrack.errors import ApiError
from visiontrack.tokens import index_value, lock_index_for_change, new_device_token, record_change, token_sha256

_COLUMNS = "id, name, type, location, metadata, status, created_at, updated_at, last_seen_at"
# A transaction Postgres chose to roll back as a whole (40P01, 40001): safe to run again as it is.
_RETRYABLE = (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure)
_ATTEMPTS = 3

log = logging.getLogger("registry.device_store")


def _retried(run):
    """run() again, up to _ATTEMPTS in all, while Postgres rolls it back for a deadlock or a serialization
    failure; the last such error goes to the caller (errors.py answers 503, "a concurrent change conflicted")."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return run()
        except _RETRYABLE as exc:
            if attempt == _ATTEMPTS:
                raise
            log.warning("transaction rolled back by Postgres (%s), running it again (attempt %d of %d)",
                        exc.pgcode, attempt + 1, _ATTEMPTS)
            time.sleep(random.uniform(0, 0.02 * attempt))  # the two no longer in step


def _conflict_on_name() -> ApiError:
    return ApiError("conflict", "a device with this name already exists",
                    [{"field": "name", "message": "is already taken"}])


def _not_found(device_id: int) -> ApiError:
    return ApiError("not_found", f"device {device_id} does not exist")


class DeviceStore:
    def __init__(self, db, redis_client, index_key: str):
        self.db = db
        self.redis = redis_client
        self.index_key = index_key

    def _index(self, cur, apply, *shas: str) -> None:
        """Change the index entries of `shas` (by `apply`), held against a rebuild until the commit."""
        lock_index_for_change(cur)
        try:
            pipe = self.redis.pipeline(transaction=True)
            apply(pipe)
            record_change(pipe, self.index_key, *shas)
            pipe.execute()
        except redis.RedisError:
            raise ApiError("unavailable", "the token index (Redis) is unreachable; nothing was changed",
                           retry_after=2) from None

    def create(self, fields: dict) -> dict:
        token = new_device_token()
        sha = token_sha256(token)
        return {**_retried(lambda: self._create(fields, sha)), "token": token}

    def _create(self, fields: dict, sha: str) -> dict:
        try:
            with self.db.transaction() as cur:
                cur.execute(f"""INSERT INTO devices (name, type, location, metadata)
                                VALUES (%(name)s, %(type)s, %(location)s, %(metadata)s)
                                RETURNING {_COLUMNS}""",
                            {**fields, "metadata": psycopg2.extras.Json(fields["metadata"])})
                device = cur.fetchone()
                cur.execute("INSERT INTO device_tokens (device_id, token_sha256) VALUES (%s, %s)",
                            (device["id"], sha))
                self._index(cur, lambda p: p.hset(self.index_key, sha, index_value(device["id"], "active")), sha)
        except psycopg2.errors.UniqueViolation:
            raise _conflict_on_name() from None
        return device

    def get(self, device_id: int) -> dict:
        with self.db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM devices WHERE id = %s", (device_id,))
            device = cur.fetchone()
        if device is None:
            raise _not_found(device_id)
        return device

    def list(self, after: list | None, limit: int, type_: str | None, status: str | None,
             name_prefix: str | None) -> list[dict]:
        """Devices in id order after the key `after` ([id] or None), filtered by those given."""
        where, params = ["TRUE"], {"limit": limit}
        if after is not None:
            where.append("id > %(after)s")
            params["after"] = after[0]
        if type_ is not None:
            where.append("type = %(type)s")
            params["type"] = type_
        if status is not None:
            where.append("status = %(status)s")
            params["status"] = status
        if name_prefix is not None:
            where.append("starts_with(name, %(prefix)s)")
            params["prefix"] = name_prefix
        with self.db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM devices WHERE {' AND '.join(where)} ORDER BY id LIMIT %(limit)s",
                        params)
            return cur.fetchall()

    def update(self, device_id: int, changes: dict) -> dict:
        if not changes:
            return self.get(device_id)
        return _retried(lambda: self._update(device_id, changes))

    def _update(self, device_id: int, changes: dict) -> dict:
        sets = ", ".join(f"{col} = %({col})s" for col in changes)
        params = {**changes, "id": device_id}
        if "metadata" in params:
            params["metadata"] = psycopg2.extras.Json(params["metadata"])
        try:
            with self.db.transaction() as cur:
                cur.execute(f"UPDATE devices SET {sets}, updated_at = now() WHERE id = %(id)s RETURNING {_COLUMNS}",
                            params)
                device = cur.fetchone()
                if device is None:
                    raise _not_found(device_id)
                if "status" in changes:
                    cur.execute("SELECT token_sha256 FROM device_tokens WHERE device_id = %s", (device_id,))
                    row = cur.fetchone()
                    if row:
                        self._index(cur, lambda p: p.hset(self.index_key, row["token_sha256"],
                                                          index_value(device_id, device["status"])),
                                    row["token_sha256"])
        except psycopg2.errors.UniqueViolation:
            raise _conflict_on_name() from None
        return device

    def delete(self, device_id: int) -> None:
        _retried(lambda: self._delete(device_id))

    def _delete(self, device_id: int) -> None:
        with self.db.transaction() as cur:
            # The device's row first (the module's lock order), as its DELETE would lock it (no upgrade):
            # a rotation or status change under way finishes first; one after this waits, then finds no device.
            cur.execute("SELECT id FROM devices WHERE id = %s FOR UPDATE", (device_id,))
            if cur.fetchone() is None:
                raise _not_found(device_id)
            cur.execute("DELETE FROM device_tokens WHERE device_id = %s RETURNING token_sha256", (device_id,))
            token = cur.fetchone()
            cur.execute("DELETE FROM devices WHERE id = %s", (device_id,))
            # Its rules are marked deleted, as DELETE /api/alert-rules/ does: the aggregator resolves their
            # firing alerts with webhooks, then removes them. After the device's row lock, which waits for a
            # rule being created for it (the rule's device check locks the row), so that rule is marked too.
            cur.execute("UPDATE alert_rules SET deleted_at = now(), enabled = false "
                        "WHERE device_id = %s AND deleted_at IS NULL", (device_id,))
            cur.execute("INSERT INTO device_purges (device_id) VALUES (%s) ON CONFLICT DO NOTHING", (device_id,))
            if token:
                self._index(cur, lambda p: p.hdel(self.index_key, token["token_sha256"]), token["token_sha256"])

    def rotate_token(self, device_id: int) -> str:
        token = new_device_token()
        sha = token_sha256(token)
        _retried(lambda: self._rotate_token(device_id, sha))
        return token

    def _rotate_token(self, device_id: int, sha: str) -> None:
        with self.db.transaction() as cur:
            cur.execute("SELECT status FROM devices WHERE id = %s FOR UPDATE", (device_id,))
            device = cur.fetchone()
            if device is None:
                raise _not_found(device_id)
            cur.execute("SELECT token_sha256 FROM device_tokens WHERE device_id = %s", (device_id,))
            row = cur.fetchone()
            old = row["token_sha256"] if row else None
            cur.execute("""INSERT INTO device_tokens (device_id, token_sha256) VALUES (%s, %s)
                           ON CONFLICT (device_id) DO UPDATE SET token_sha256 = excluded.token_sha256,
                                                                 created_at = now()""",
                        (device_id, sha))

            def apply(pipe):
                if old:
                    pipe.hdel(self.index_key, old)
                pipe.hset(self.index_key, sha, index_value(device_id, device["status"]))

            self._index(cur, apply, *([old] if old else []), sha)
