"""The batch decode of an MGET's values reads each value exactly as the one-value decode does:
every header check (length, magic, format byte, codec id, expiry) holds for a value of full
length too, and counts the same misses."""

from __future__ import annotations

import math

from tiered_cache_redis.stored import CODEC_IDS, StoredFormat

from tiered_cache.tier import MISSING, Entry

NOW = 1_000.0


def stored() -> StoredFormat:
    return StoredFormat("redis", namespace="ns", ttl=None, ttl_jitter=0.0, codec="json")


def test_decode_many_refuses_what_decode_refuses_header_by_header() -> None:
    fmt = stored()
    _, good, _ = fmt.encode("k", Entry({"n": 1}, NOW, NOW + 10, NOW + 20, 0.5, 7), NOW)
    assert good is not None
    expired = fmt.encode("e", Entry("x", NOW - 30, NOW - 20, NOW + 5), NOW - 30)[1]
    assert expired is not None
    values: dict[str, bytes | None] = {
        "good": good,
        "short": good[:20],
        "magic": b"xc" + good[2:],  # full length, another program's bytes
        "format": good[:2] + bytes([2]) + good[3:],  # a later format of ours
        "codec": good[:3] + bytes([CODEC_IDS["msgpack"]]) + good[4:],
        "expired": expired,
        "absent": None,
    }
    found = fmt.decode_many(list(values), list(values.values()), NOW + 6)
    assert found == {"good": Entry({"n": 1}, NOW, NOW + 10, NOW + 20, 0.5, 7)}
    # short, magic, format, codec: logged misses
    assert fmt.report() == {"undecodable": 4, "too_large": 0}
    one_by_one = stored()
    for key, data in values.items():
        if data is not None:
            expect = found.get(key, MISSING)
            assert one_by_one.decode(key, data, NOW + 6) == expect
    assert one_by_one.report() == {"undecodable": 4, "too_large": 0}
    assert not math.isinf(found["good"].hard_expiry)
