"""Where the rate limiter keeps its state in Redis: each identity's keys and each shard's indexes.

Keys are spread over ``SHARDS`` hash tags by identity: an identity's ban, bucket and strike keys and its shard's
two dashboard indexes share one tag, hence one Redis Cluster slot, so that one script call can touch them all.
"""

from __future__ import annotations

import zlib

SHARDS = 64  # hash tags the limiter's keys are spread over: at most this many cluster masters share its load


def shard_of(member: str) -> int:
    """The shard of identity ``member`` ("user:7", "ip:10.0.0.1")."""
    return zlib.crc32(member.encode()) % SHARDS


def shard_prefix(prefix: str, shard: int) -> str:
    """``{prefix}{rl<n>}:``, the start of every key of a shard: the braces make it the key's cluster hash tag."""
    return f"{prefix}{{rl{shard}}}:"


def limit_key(prefix: str, kind: str, member: str) -> str:
    """The ``kind`` key ("ban", "tat" or "strikes") of identity ``member``."""
    return f"{shard_prefix(prefix, shard_of(member))}{kind}:{member}"


def index_keys(prefix: str, shard: int) -> tuple[str, str]:
    """The banned and limited indexes of a shard."""
    start = shard_prefix(prefix, shard)
    return f"{start}index:banned", f"{start}index:limited"


def script_keys(prefix: str, member: str) -> tuple[str, ...]:
    """The five keys the limiter's script takes for identity ``member``, in its order: ban, bucket (tat), strikes,
    and its shard's banned and limited indexes (one hash of the identity for all five)."""
    shard = shard_of(member)
    start = shard_prefix(prefix, shard)
    return (f"{start}ban:{member}", f"{start}tat:{member}", f"{start}strikes:{member}", *index_keys(prefix, shard))
