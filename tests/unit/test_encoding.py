"""Stream entries and their binary COPY encoding."""
from __future__ import annotations

import json
import struct

import pytest

from aggregator.copy_encoding import PG_EPOCH_MS, encode_entry, fold_rollups
from visiontrack.stream import Entry, PoisonEntry, decode_entry, decode_fields, encode_entry as encode_stream_entry
from visiontrack.stream import letter_fields, shard_key_for


def test_stream_entry_round_trip_is_small_and_exact():
    fields = encode_stream_entry(42, [("temperature", 1_795_748_400_123, 0.1 + 0.2)], 1_795_748_400_200)
    assert fields == {"v": "1", "d": "42", "r": '[["temperature",1795748400123,0.30000000000000004]]',
                      "at": "1795748400200"}
    [entry] = decode_entry("1-0", {k: v.encode() for k, v in fields.items()})
    assert entry.device_id == 42 and entry.readings == [["temperature", 1_795_748_400_123, 0.1 + 0.2]]
    assert entry.received_ms == 1_795_748_400_200 and entry.part is None


GROUP = b'[[42,1795748400200,[["t",1795748400123,21.5]]],[7,1795748400201,[["h",1795748400124,40],["h",1,2]]]]'


def test_an_entry_of_several_requests_gives_each_its_own_part():
    expected = [Entry("5-0", 42, [["t", 1_795_748_400_123, 21.5]], 1_795_748_400_200, 0),
                Entry("5-0", 7, [["h", 1_795_748_400_124, 40], ["h", 1, 2]], 1_795_748_400_201, 1)]
    assert decode_fields("5-0", [b"v", b"2", b"g", GROUP]) == expected
    assert decode_entry("5-0", {"g": GROUP, "v": b"2"}) == expected  # by name, in any order


def test_both_formats_read_by_position_match_the_named_reading():
    one = [b"v", b"1", b"d", b"42", b"r", b'[["t",5,1.5]]', b"at", b"9"]
    assert decode_fields("1-0", one) == decode_entry("1-0", dict(zip(["v", "d", "r", "at"], one[1::2])))
    assert decode_fields("1-0", one) == [Entry("1-0", 42, [["t", 5, 1.5]], 9)]


@pytest.mark.parametrize("group,reason", [
    (b"[]", "'g' is not a non-empty array"),
    (b"{}", "'g' is not a non-empty array"),
    (b"[[1,2]]", "part 0 of 'g' is not"),
    (b'[[1,2,[["t",1,1]]],[0,2,[["t",1,1]]]]', "part 1 of 'g': bad device id 0"),
    (b'[[1,"2",[["t",1,1]]]]', "part 0 of 'g': bad receive time"),
    (b"[[1,2,[]]]", "part 0 of 'g': readings are not"),
    (b"[[1,2,", "unreadable entry"),
])
def test_a_broken_group_is_poison_with_a_reason(group, reason):
    with pytest.raises(PoisonEntry, match=reason):
        decode_fields("1-0", [b"v", b"2", b"g", group])


def test_a_dead_letter_of_one_request_carries_that_request_alone():
    whole = [b"v", b"1", b"d", b"42", b"r", b'[["t",5,1.5]]', b"at", b"9"]
    [entry] = decode_fields("1-0", whole)
    assert letter_fields(entry, whole) == {"v": b"1", "d": b"42", "r": b'[["t",5,1.5]]', "at": b"9"}
    part = decode_fields("5-0", [b"v", b"2", b"g", GROUP])[1]
    assert letter_fields(part, [b"v", b"2", b"g", GROUP]) == {
        "v": "1", "d": "7", "r": '[["h",1795748400124,40],["h",1,2]]', "at": "1795748400201", "part": "1"}


@pytest.mark.parametrize("fields,reason", [
    ({"v": b"3", "d": b"1", "r": b"[]", "at": b"1"}, "unknown format version"),
    ({"v": b"2", "d": b"1", "r": b"[]", "at": b"1"}, "missing field 'g'"),
    ({"v": b"1", "d": b"x", "r": b"[]", "at": b"1"}, "unreadable entry"),
    ({"v": b"1", "d": b"1", "r": b"[1e400]", "at": b"1"}, "unreadable entry"),
    ({"v": b"1", "d": b"1", "r": b"[]", "at": b"1"}, "not a non-empty array"),
    ({"v": b"1", "d": b"0", "r": b"[1]", "at": b"1"}, "bad device id"),
    ({"v": b"1", "d": b"1", "at": b"1"}, "missing field 'r'"),
])
def test_unreadable_entries_are_poison_with_a_reason(fields, reason):
    with pytest.raises(PoisonEntry, match=reason):
        decode_entry("1-0", fields)


def test_a_batch_folds_into_one_partial_per_device_metric_and_minute():
    minute = 29_929_140  # a UTC minute since the epoch
    at = minute * 60_000
    batch = [encode_entry(Entry(f"{i}-0", device, readings, 0), -10**9, 10**9) for i, (device, readings) in
             enumerate([(1, [["t", at + 5_000, 2.0], ["h", at + 5_000, 40]]),
                        (1, [["t", at + 1_000, 5.0]]),  # older, arriving later: not the newest
                        (1, [["t", at + 9_000, -1.0], ["t", at + 60_000, 7.0]]),  # the second: the next minute
                        (2, [["t", at + 2_000, 3.0]])])]
    assert fold_rollups(batch) == {
        (1, "t", minute): [3, 6.0, -1.0, 5.0, at + 9_000, -1.0],
        (1, "h", minute): [1, 40, 40, 40, at + 5_000, 40],
        (1, "t", minute + 1): [1, 7.0, 7.0, 7.0, at + 60_000, 7.0],
        (2, "t", minute): [1, 3.0, 3.0, 3.0, at + 2_000, 3.0],
    }


def test_copy_rows_carry_device_metric_microseconds_and_value():
    ts = PG_EPOCH_MS + 1500
    encoded = encode_entry(Entry("1-0", 7, [["t", ts, 2.5]], 0), -10**9, 10**9)
    assert encoded.rows == (struct.pack(">hiq", 4, 8, 7) + struct.pack(">i", 1) + b"t"
                            + struct.pack(">iqid", 8, 1_500_000, 8, 2.5))
    assert encoded.count == 1 and encoded.first_day == encoded.last_day == ts // 86_400_000


@pytest.mark.parametrize("reading,reason", [
    (["bad name", 1, 1.0], "bad metric name"), (["t", 1.5, 1.0], "bad timestamp"),
    (["t", 1, "x"], "bad value"), (["t", 1, True], "bad value"), (["t", 1], "not \\[metric"),
    (["t", 1, 10**400], "not \\[metric"),
])
def test_unstorable_readings_make_the_entry_poison(reading, reason):
    with pytest.raises(PoisonEntry, match=reason):
        encode_entry(Entry("1-0", 1, [reading], 0), -10**9, 10**9)


def test_readings_outside_the_storable_days_are_poison():
    with pytest.raises(PoisonEntry, match="storable range"):
        encode_entry(Entry("1-0", 1, [["t", 10 * 86_400_000, 1.0]], 0), 0, 5)


def test_shards_by_device_id():
    assert shard_key_for("vt:telemetry", 1, 99) == "vt:telemetry"
    assert shard_key_for("vt:telemetry", 4, 6) == "vt:telemetry:{2}"
    assert json.loads(encode_stream_entry(1, [("a", 1, 1.0)], 1)["r"]) == [["a", 1, 1.0]]
