"""Devices and tokens in Postgres, with the Redis token index changed before each commit.

The Redis change happens inside the Postgres transaction: if Redis fails, the transaction rolls back and
the caller gets 503, so the index never lags a committed revocation. The aggregator's periodic rebuild
repairs the rare opposite case (Redis changed, commit failed); the change holds the index lock
(visiontrack.tokens) until its commit so that a rebuild never undoes it.
"""
from __future__ import annotations

import psycopg2.errors
import psycopg2.extras
import redis

from visiontrack.errors import ApiError
from visiontrack.tokens import index_value, lock_index_for_change, new_device_token, record_change, token_sha256

_COLUMNS = "id, name, type, location, metadata, status, created_at, updated_at, last_seen_at"


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
        return {**device, "token": token}

    def get(self, device_id: int) -> dict:
        with self.db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM devices WHERE id = %s", (device_id,))
            device = cur.fetchone()
        if device is None:
            raise _not_found(device_id)
        return device

    def list(self, limit: int, after_id: int | None, type_: str | None, status: str | None,
             name_prefix: str | None) -> list[dict]:
        where, params = ["TRUE"], {"limit": limit}
        if after_id is not None:
            where.append("id > %(after)s")
            params["after"] = after_id
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
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM device_tokens WHERE device_id = %s RETURNING token_sha256", (device_id,))
            token = cur.fetchone()
            cur.execute("DELETE FROM devices WHERE id = %s RETURNING id", (device_id,))
            if cur.fetchone() is None:
                raise _not_found(device_id)
            # Its rules are marked deleted, as DELETE /api/alert-rules/ does: the aggregator resolves their
            # firing alerts with webhooks, then removes them. After the device's delete, which waits for a
            # rule being created for it (the rule's device check locks the row), so that rule is marked too.
            cur.execute("UPDATE alert_rules SET deleted_at = now(), enabled = false "
                        "WHERE device_id = %s AND deleted_at IS NULL", (device_id,))
            cur.execute("INSERT INTO device_purges (device_id) VALUES (%s) ON CONFLICT DO NOTHING", (device_id,))
            if token:
                self._index(cur, lambda p: p.hdel(self.index_key, token["token_sha256"]), token["token_sha256"])

    def rotate_token(self, device_id: int) -> str:
        token = new_device_token()
        sha = token_sha256(token)
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
        return token
