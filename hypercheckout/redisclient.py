"""Connecting to Redis: one server, or a Redis Cluster.

``HC_REDIS_URL`` names one server as redis-py reads it (``redis://``, ``rediss://``, ``unix://``), or a cluster as
``redis+cluster://[[user]:password@]host:port[,host:port…]`` (``rediss+cluster://`` with TLS): the seed nodes the
client asks for the cluster's layout; it learns every other node, and every change of masters, from them. One
seed is enough, more keep a start-up possible while one is down. A cluster has no database number.
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

RedisClient: TypeAlias = aioredis.Redis | RedisCluster

# redis-py (8.1) can fail a call on a connection closed under it with AttributeError or TypeError instead of
# ConnectionError (redis/redis-py#4287); seen here when a cluster master was killed mid-load: "'NoneType' object
# has no attribute 'writelines'". To a caller they mean what a dropped connection means: the call failed.
CLIENT_FAULTS = (AttributeError, TypeError)

# RedisClusterException is no RedisError: a cluster client raises it when no node answers for its layout or a slot
# has no master (SlotNotCoveredError, while one fails over), which is Redis trouble all the same.
REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError, asyncio.TimeoutError)
# ...and what redis-py itself may raise for a call that failed: caught only around the call itself, so that a bug of
# ours is not taken for Redis trouble.
CALL_FAILED = (*REDIS_ERRORS, *CLIENT_FAULTS)

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS

# Connections per cluster node. A cluster node's pool does not queue a call for a free connection, it raises, which
# the limiter would take for Redis being down; admission control (HC_MAX_IN_FLIGHT) already bounds how many calls
# one replica makes at once, so the bound here only has to be above it.
CLUSTER_CONNECTIONS_PER_NODE = 1024


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The ``host:port`` pairs of a ``redis+cluster://`` URL."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    seeds = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a Redis Cluster URL names its nodes as host:port[,host:port…], not {part!r}")
        seeds.append((host.strip("[]"), int(port)))
    return seeds


def connect(url: str, *, timeout: float, max_connections: int) -> RedisClient:
    """A client for ``url``; ``timeout`` bounds every connect and every reply (seconds)."""
    if not is_cluster_url(url):
        # Blocking: a call waits (up to ``timeout``) for a free connection. redis-py's default pool raises "Too many
        # connections" at once instead, which the limiter took for Redis being down: under a burst it failed open
        # and let a bot through for a second (seen in `make bench`: 2,254 purchases at 1/s in 10 s).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry_on_timeout=False,
        )
        return aioredis.Redis.from_pool(pool)
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_seeds(url)],
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=CLUSTER_SCHEMES[parts.scheme],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=max(max_connections, CLUSTER_CONNECTIONS_PER_NODE),
        # A master that died fails the call after one more try with a fresh layout: a call that waits for the
        # failover would hold a purchase; the limiter fails open instead and asks again a second later.
        retry=Retry(NoBackoff(), 1),
        # Slots of healthy masters stay usable while another master's replica takes over.
        require_full_coverage=False,
    )
