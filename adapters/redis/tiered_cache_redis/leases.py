"""Leases in Redis: ``SET NX PX`` to take one, a Lua script to fill only while holding it.

The lease of ``ns:key`` lives at ``{ns:key}:lease``. The braces are a Redis Cluster hash tag:
they put the lease in the data key's slot, so the fill script may touch both atomically. (A key
that itself contains braces has a hash tag of its own; on a cluster such keys get no lease and
load as if the chain had no shared tier.)
"""

from __future__ import annotations

LEASE_SUFFIX = ":lease"

#: KEYS: data, lease. ARGV: token, PX in ms. Returns {1 if the lease was taken else 0, the data
#: or false}: taking the lease and looking at the key cost one round trip.
ACQUIRE_AND_GET = """
local taken = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
local data = redis.call('GET', KEYS[1])
if taken then
  return {1, data}
end
return {0, data}
"""

#: KEYS: data, lease. ARGV: token, value (empty: the entry has nothing to keep, past its
#: expiry, and the older copy goes), PX in ms ("0": no expiry). 1 if filled, 0 if lost. A fill
#: with nothing to keep drops the data only under its lease too: dropped unasked, it deleted
#: a write made since the load began, the only copy on a chain without a source.
FILL_IF_HOLDING = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('UNLINK', KEYS[1])
elseif ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
redis.call('DEL', KEYS[2])
return 1
"""

#: KEYS: lease. ARGV: token. Deletes the lease only if the token still holds it.
RELEASE_IF_HOLDING = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_key(data_key: str) -> str:
    """The lease key of a data key, in the same cluster slot."""
    return "{" + data_key + "}" + LEASE_SUFFIX


def cluster_safe(data_key: str) -> bool:
    """True when the data key and its lease share a cluster slot (no braces of its own)."""
    return "{" not in data_key and "}" not in data_key
