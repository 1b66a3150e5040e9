"""Building the redis-py client a RedisHealthStore owns, and keeping its secrets out of logs."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

RedisClient = Redis | RedisCluster

_SCHEMES = ("redis", "rediss", "unix")
_MASK = "***"


def mask_url(url: str) -> str:
    """A Redis URL fit for logs: its password (and any secret query value) masked.

    ``redis://alice:s3cret@host:6379/0`` becomes ``redis://alice:***@host:6379/0``.
    A lone userinfo token is masked too, since some clients read it as a password.

    Args:
        url: Any string; one that does not parse is replaced whole.

    Returns:
        The URL without secrets.
    """
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "<unparseable redis url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{_MASK}@{hostport}" if has_password else f"{_MASK}@{hostport}"
    masked = urlencode([(k, _MASK if _is_secret(k) else v) for k, v in query], safe="*")
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{masked}" if masked else "")


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every occurrence of each secret masked (for exception messages)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _MASK)
    return text


def _is_secret(name: str) -> bool:
    name = name.lower()
    return any(word in name for word in ("pass", "secret", "token", "key"))


@dataclass
class OwnedClient:
    """A client the store created, and what closing it involves.

    Parameters:
        client: The client for commands and pub/sub.
        description: How to name the server in logs and reprs (no secrets).
        secrets: Strings to mask in exception messages.
        sentinel: The Sentinel whose connections close with the client, if any.
    """

    client: RedisClient
    description: str
    secrets: list[str] = field(default_factory=list)
    sentinel: Sentinel | None = None

    async def aclose(self):
        """Close the client and the sentinel connections."""
        await self.client.aclose()
        if self.sentinel is not None:
            for sentinel in self.sentinel.sentinels:
                await sentinel.aclose()


# Connections one store keeps to a single Redis server, at most.
_MAX_CONNECTIONS = 64


def make_client(
    *,
    url: str | None,
    cluster: bool,
    sentinels: Sequence[tuple[str, int]] | None,
    service_name: str | None,
    options: Mapping[str, Any],
    socket_timeout: float,
) -> OwnedClient:
    """Create the client for a URL, a cluster URL, or a Sentinel service.

    No network I/O happens here: redis-py connects on first use.

    Raises:
        ValueError: The URL or sentinel arguments are unusable.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "decode_responses": True,
        **options,
    }
    secrets = [str(options[k]) for k in options if _is_secret(k) and options[k]]
    if sentinels is not None:
        if not service_name:
            raise ValueError("service_name is required with sentinels")
        if cluster:
            raise ValueError("cluster=True cannot be combined with sentinels")
        hosts = [(str(h), int(p)) for h, p in sentinels]
        sentinel = Sentinel(
            hosts, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        client = sentinel.master_for(service_name, **kwargs)
        return OwnedClient(client, f"sentinel:{service_name}", secrets, sentinel)

    assert url is not None
    scheme = url.split(":", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"url must start with redis://, rediss:// or unix://, not {scheme!r}")
    try:
        password = urlsplit(url).password
    except ValueError as e:
        raise ValueError(f"url is not a valid Redis URL: {mask_url(url)}") from e
    if password:
        secrets += [password, unquote(password)]
    if cluster:
        client: RedisClient = RedisCluster.from_url(url, **kwargs)
    else:
        # One quick retry replaces a pooled connection that died with the server;
        # the store does its own reconnecting with backoff.
        kwargs.setdefault("retry", Retry(NoBackoff(), 1))
        # Hundreds of calls write at once: a command waits (as long as any
        # command may) for one of a bounded set of connections, rather than
        # failing on a full pool.
        kwargs.setdefault("max_connections", _MAX_CONNECTIONS)
        pool = BlockingConnectionPool.from_url(url, timeout=socket_timeout, **kwargs)
        client = Redis.from_pool(pool)
    return OwnedClient(client, mask_url(url), secrets)
