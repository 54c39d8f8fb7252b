"""The aggregator's side of the stream: consumer group reads, claims, acks and dead letters.

Entries are acknowledged only after the batch they belong to is committed; a consumer that dies leaves
them pending and another one claims them (XAUTOCLAIM) once they have been idle long enough.
"""
from __future__ import annotations

import logging
from typing import Iterable

import redis

from visiontrack.redis_client import is_cluster
from visiontrack.stream import fields_dict

log = logging.getLogger("aggregator.consumer")

Raw = tuple[str, list | dict]  # (entry id, fields: XREADGROUP's flat list, or a dict)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(items) -> tuple[list[Raw], list[str]]:
    """Readable entries, and the ids of pending entries whose content is gone (deleted while pending).
    Fields stay as Redis sent them: XAUTOCLAIM's as a dict, XREADGROUP's (read without redis-py's reply
    parsing) as the flat [name, value, ...] list; `visiontrack.stream.fields_dict` turns either into a dict."""
    out, gone = [], []
    for entry_id, fields in items or ():
        entry_id = entry_id.decode() if type(entry_id) is bytes else entry_id
        if fields is None:
            gone.append(entry_id)
        else:
            out.append((entry_id, fields))
    return out, gone


def _stream_reply(reply, key: str) -> list:
    """XREADGROUP's entries for one key, from its unparsed reply: RESP2 [[key, entries], ...], RESP3 a map;
    None when a blocking read timed out."""
    if isinstance(reply, dict):
        reply = reply.items()
    for k, entries in reply or ():
        if _text(k) == key:
            return entries
    return []


def unparsed_client(client: redis.Redis) -> redis.Redis:
    """A client on the same connections whose XREADGROUP replies come back as Redis sent them. redis-py
    turns every entry's field list into a dict; for entries of one reading that was a fifth of the
    aggregator's time, and the fields are read by position instead (`visiontrack.stream.decode_fields`).

    A Redis Cluster client parses with each node's own client, made and remade as the cluster changes: it is
    used as it is, and the batches take its dicts (`batching` decodes either shape)."""
    if is_cluster(client):
        return client
    raw = redis.Redis(connection_pool=client.connection_pool)
    raw.response_callbacks.pop("XREADGROUP", None)
    return raw


class StreamConsumer:
    # Most entries one Redis call reads, claims or acknowledges. Redis runs a command to its end while every
    # other client waits: an XREADGROUP of 10,000 one-reading entries (a batch) held it 21-26 ms, and the
    # XACK of their ids 5 ms. Writers sending 1,000 XADDs a second while such a backlog drained waited p99
    # 71-90 ms in calls of a whole batch, 27-30 ms in calls of 1,000, with the drain as fast
    # (bench/redis_stalls.py, which sets it on an instance to measure the whole-batch calls).
    chunk = 1000

    def __init__(self, client: redis.Redis, key: str, group: str, consumer: str, dead_letter_key: str,
                 claim_idle_ms: int, max_deliveries: int):
        self.redis = client
        self.unparsed = unparsed_client(client)
        self.key = key
        self.group = group
        self.consumer = consumer
        self.dead_letter_key = dead_letter_key
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        # Pending entries whose dead letter Redis refused: this consumer's own-pending reads pass over them
        # (they would come back at once, and be refused again at once); claim() retries them once idle.
        self.refused: set[str] = set()

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, start: str, block_ms: int | None = None) -> list[Raw]:
        """Up to `count` entries, in calls of at most `chunk`. `start` "0": this consumer's own pending entries
        (after a restart), but for those whose dead letter was refused (left to claim()); ">": new ones.
        `block_ms`: with nothing new, the first call waits up to that long for an entry (">" only)."""
        out: list[Raw] = []
        block = max(1, int(block_ms)) if block_ms is not None and start == ">" else None
        while len(out) < count:
            want = min(self.chunk, count - len(out))
            try:
                reply = self.unparsed.xreadgroup(self.group, self.consumer, {self.key: start}, count=want,
                                                 block=block)
                block = None  # only the first call waits: the rest pick up what is already there
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.ensure_group()
                return out
            items = _stream_reply(reply, self.key)
            entries, gone = _entries(items)
            self.ack(gone)  # nothing left to store; acking keeps them from coming back forever
            if start != ">":
                if self.refused:
                    entries = [e for e in entries if e[0] not in self.refused]
                if items:
                    start = _text(items[-1][0])  # own pending ones are read by id: go on after this page
            out.extend(entries)
            if len(items) < want:  # nothing more to read
                break
        return out

    def claim(self, count: int) -> tuple[list[Raw], list[Raw]]:
        """Take over entries a dead consumer left; split off those delivered too often (poison suspects)."""
        claimed: list[Raw] = []
        cursor = "0-0"
        while len(claimed) < count:
            reply = self.redis.xautoclaim(self.key, self.group, self.consumer, self.claim_idle_ms,
                                          start_id=cursor, count=min(self.chunk, count - len(claimed)))
            cursor = _text(reply[0])
            entries, gone = _entries(reply[1])
            self.ack(gone)
            claimed.extend(entries)
            self.refused.difference_update(entry_id for entry_id, _ in entries)  # tried again now
            if cursor == "0-0":
                break
        if not claimed:
            return [], []
        deliveries = self.delivery_counts([entry_id for entry_id, _ in claimed])
        fresh = [e for e in claimed if deliveries.get(e[0], 0) <= self.max_deliveries]
        tired = [e for e in claimed if deliveries.get(e[0], 0) > self.max_deliveries]
        return fresh, tired

    def delivery_counts(self, ids: list[str]) -> dict[str, int]:
        """How often each of `ids` (this consumer's pending entries) was delivered, from pages of at most
        `chunk` pending entries between the lowest and the highest id (ordered as ids, not as text: "5-10"
        comes after "5-9"). An id no longer pending is left out."""
        wanted = set(ids)
        ordered = sorted(wanted, key=_parse_id)
        counts: dict[str, int] = {}
        start, end = ordered[0], ordered[-1]
        while wanted:
            rows = self.redis.xpending_range(self.key, self.group, min=start, max=end, count=self.chunk,
                                             consumername=self.consumer)
            for row in rows:
                entry_id = _text(row["message_id"])
                if entry_id in wanted:
                    counts[entry_id] = int(row["times_delivered"])
                    wanted.discard(entry_id)
            if len(rows) < self.chunk:
                break
            start = "(" + _text(rows[-1]["message_id"])  # exclusive: the page after this one
        return counts

    def ack(self, ids: Iterable[str]) -> None:
        """In calls of at most `chunk` ids, each its own round trip, so that other clients get their turn in
        between."""
        ids = list(ids)
        for i in range(0, len(ids), self.chunk):
            self.redis.xack(self.key, self.group, *ids[i:i + self.chunk])
        self.refused.difference_update(ids)

    def dead_letter(self, items: list[tuple[str, dict, str]]) -> int:
        """Move unstorable entries (or requests of an entry of format 2) aside with the reason, then ack the
        entries moved; return how many entries were.

        Two round trips: the XADDs to the dead-letter stream, then one XACK of the entries whose XADD Redis
        accepted. Not one transaction: a shard and the dead-letter stream hash to different Redis Cluster
        slots, where MULTI across them is refused. An entry whose XADD Redis refused (over maxmemory with
        noeviction, which refuses XADD but not XACK; the dead-letter key holding another type) is logged and
        not acked: it stays pending, the own-pending read passes over it, and claim() takes it again once
        idle for claim_idle_ms, to be dead-lettered then. A connection lost during a round trip raises before
        anything more is acked. A crash between the two leaves moved entries pending too: they are
        dead-lettered again (a second copy with the same source_id), never lost."""
        if not items:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, fields, reason in items:
            log.warning("dead-lettering entry %s of %s: %s", entry_id, self.key, reason)
            pipe.xadd(self.dead_letter_key, {**fields_dict(fields), "reason": reason[:1000], "source": self.key,
                                             "source_id": entry_id})
        replies = pipe.execute(raise_on_error=False)
        refused = [(entry_id, reply) for (entry_id, _, _), reply in zip(items, replies) if isinstance(reply, Exception)]
        # An entry of several requests may have several letters: it is acked only once all of them are in.
        kept = {entry_id for entry_id, _ in refused}
        moved = list(dict.fromkeys(entry_id for entry_id, _, _ in items if entry_id not in kept))
        if refused:
            self.refused.update(entry_id for entry_id, _ in refused)
            log.error("could not dead-letter %d entr%s of %s to %s; left pending for a later try: %s",
                      len(refused), "y" if len(refused) == 1 else "ies", self.key, self.dead_letter_key,
                      "; ".join(f"{entry_id}: {reply}" for entry_id, reply in refused[:10])
                      + (f"; and {len(refused) - 10} more" if len(refused) > 10 else ""))
        self.ack(moved)
        return len(moved)

    def safe_trim_point(self) -> str | None:
        """The oldest id any group still needs; everything below it may go."""
        oldest: list[tuple[int, int]] = []
        for info in self.redis.xinfo_groups(self.key):
            name = _text(info["name"])
            pending = self.redis.xpending(self.key, name)
            if pending and int(pending["pending"]) > 0:
                oldest.append(_parse_id(_text(pending["min"])))
            else:
                ms, seq = _parse_id(_text(info["last-delivered-id"]))
                oldest.append((ms, seq + 1))
        if not oldest:
            return None
        ms, seq = min(oldest)
        return f"{ms}-{seq}"

    def trim(self) -> int:
        point = self.safe_trim_point()
        if point is None:
            return 0
        return int(self.redis.xtrim(self.key, minid=point, approximate=False))


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
