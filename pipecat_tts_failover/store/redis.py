"""RedisHealthStore: provider health shared by every worker of a fleet through Redis."""

try:
    import redis  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        'RedisHealthStore needs the redis package: pip install "pipecat-tts-failover[redis]"'
    ) from e

import asyncio
import enum
import functools
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from loguru import logger
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from pipecat_tts_failover.config import positive_seconds
from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.errors import HealthStoreError
from pipecat_tts_failover.health import AttemptVerdict, HealthPolicy
from pipecat_tts_failover.loop_lag import LagGrace
from pipecat_tts_failover.store._redis_client import OwnedClient, make_client, mask_url, redact
from pipecat_tts_failover.store._redis_scripts import (
    SCRIPT_NAMES,
    Keys,
    Reply,
    attempt_args,
    decode_ids,
    decode_registered,
    encode_controls,
    parse_message,
    parse_reply,
    parse_snapshot,
    parse_verdict,
    script_source,
)
from pipecat_tts_failover.store._redis_view import (
    ControlsRevision,
    LocalView,
    Owed,
    PendingWrites,
    Revision,
)
from pipecat_tts_failover.store.base import (
    Clock,
    Controls,
    ProviderHealth,
    check_provider_ids,
    merge_registered,
    wall_clock,
)

__all__ = ["RedisHealthStore", "mask_url"]

# An idle subscription sends PING this often; two silent periods mean the link is dead.
_HEARTBEAT = 5.0
# First delay before reconnecting; it doubles up to max_reconnect_delay.
_FIRST_RETRY_DELAY = 0.05
# What a caller's Redis call returns when it failed (None is a valid reply).
_FAILED: Any = object()
_T = TypeVar("_T")


class _Link(enum.Enum):
    """Where the store stands with Redis."""

    CONNECTING = "connecting"  # started, first synchronization not finished
    ONLINE = "online"  # subscribed, view synchronized: callers use Redis
    OFFLINE = "offline"  # callers use the local view; the link task reconnects


class RedisHealthStore:
    """Provider health in Redis, shared by every worker, read from a local view.

    Evidence and state changes are Lua scripts, so each is atomic across the
    fleet: ``record_attempt`` ejects, and ``mark_down`` returns True, for
    exactly one caller per incident. Each change is published; every store
    subscribes and keeps a local view of every provider, so ``get()`` answers
    from memory and sees another worker's mark-down within milliseconds.

    Redis never blocks a call. Each Redis call made for a caller is bounded by
    ``op_timeout``; if it fails, or the subscription drops, the store answers
    from its local view, judges attempts and marks locally, logs once
    (WARNING), and a background task reconnects with backoff, writes back the
    mark-downs and mark-ups it made, resynchronizes and logs once more (INFO).
    While Redis is away each worker decides ejections on its own evidence, so
    one incident may alert once per worker.

    The operator's controls are published too and read from the view, so
    ``get_controls()`` costs no round trip. ``set_controls()`` is an
    operator's action, not a call's: it waits up to a few seconds for Redis
    and raises :class:`~pipecat_tts_failover.errors.HealthStoreError` if
    Redis cannot take it. Locks (``try_lock``) are ``SET NX PX`` with a token
    of this store's, released only by their holder; while Redis is away no
    lock can be proven, so ``try_lock`` returns False at once.

    Nothing touches the network until the first call (or :meth:`connect`).
    Expiry uses wall-clock times from ``clock`` passed to the scripts, so
    workers' clocks should agree (NTP) to well under a cooldown. Locks expire
    on Redis's own clock.

    Keys share one hash tag (``{tts-failover}:provider:cartesia``,
    ``{tts-failover}:window:cartesia``, ``{tts-failover}:providers``,
    ``{tts-failover}:registered``, ``{tts-failover}:epoch``,
    ``{tts-failover}:controls``, ``{tts-failover}:lock:<name>``) and changes
    are published on ``{tts-failover}:events``; see ``_redis_scripts``.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
            for TLS, or ``unix://``. With ``cluster=True``, any node of a
            Redis Cluster.
        client: A ``redis.asyncio`` ``Redis`` or ``RedisCluster`` of your
            own, instead of ``url``; the store never closes it.
        key_prefix: Prefix of every key and of the channel; wrapped in ``{}``
            as a cluster hash tag unless it already has one.
        cluster: Treat ``url`` as a Redis Cluster node.
        sentinels: ``(host, port)`` of Redis Sentinels, instead of ``url``;
            requires ``service_name``.
        service_name: The Sentinel service (master) name.
        op_timeout: Seconds one Redis call made for a caller may take before
            the store falls back to its local view.
        socket_timeout: Socket connect and read timeout of the client the
            store creates; bounds background work. ``set_controls`` waits
            ``max(2, 2 * socket_timeout)`` seconds.
        max_reconnect_delay: Longest wait between reconnection attempts.
        connection_options: More keyword arguments for the client the store
            creates (``ssl_ca_certs``, ``username``, ``password``...).
        clock: Wall-clock source, injectable for tests.

    Raises:
        ValueError: Not exactly one of ``url``, ``client``, ``sentinels``, or
            a bad URL or prefix, or a timeout that is not a finite number of
            seconds above zero.
        TypeError: ``client`` is not a ``redis.asyncio`` client, or a timeout
            is not a number.

    Example::

        store = RedisHealthStore("rediss://tts:secret@redis.internal:6380/0")
        tts = FailoverTTSService(services=[...], store=store)
        ...
        await store.close()
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | RedisCluster | None = None,
        key_prefix: str = "tts-failover",
        cluster: bool = False,
        sentinels: Sequence[tuple[str, int]] | None = None,
        service_name: str | None = None,
        op_timeout: float = 0.05,
        socket_timeout: float = 1.0,
        max_reconnect_delay: float = 2.0,
        connection_options: Mapping[str, Any] | None = None,
        clock: Clock = wall_clock,
    ):
        if sum(x is not None for x in (url, client, sentinels)) != 1:
            raise ValueError("pass exactly one of url, client or sentinels")
        if not isinstance(key_prefix, str) or not key_prefix.strip():
            raise ValueError(f"key_prefix must be a non-empty string, got {key_prefix!r}")
        op_timeout = positive_seconds("op_timeout", op_timeout)
        socket_timeout = positive_seconds("socket_timeout", socket_timeout)
        max_reconnect_delay = positive_seconds("max_reconnect_delay", max_reconnect_delay)

        self._owned: OwnedClient | None = None
        if client is not None:
            if not isinstance(client, (Redis, RedisCluster)):
                raise TypeError(
                    f"client must be a redis.asyncio Redis or RedisCluster, not {type(client).__name__}"
                )
            if cluster or connection_options:
                raise ValueError("cluster and connection_options apply only to a url")
            self._client = client
            self._description, self._secrets = f"client={type(client).__name__}", []
        else:
            self._owned = make_client(
                url=url,
                cluster=cluster,
                sentinels=sentinels,
                service_name=service_name,
                options=connection_options or {},
                socket_timeout=socket_timeout,
            )
            self._client = self._owned.client
            self._description, self._secrets = self._owned.description, self._owned.secrets

        self._keys = Keys(key_prefix)
        self._scripts = {n: self._client.register_script(_source(n)) for n in SCRIPT_NAMES}
        self._op_timeout = op_timeout
        self._sync_timeout = max(2.0, 2 * socket_timeout)  # background and operator work
        self._max_reconnect_delay = max_reconnect_delay
        self._clock = clock

        self._view = LocalView()
        self._pending = PendingWrites()
        self._owed_controls: Controls | None = None  # to restore if Redis lost them
        self._registered: list[str] = []  # what this store registered and last read
        self._owe_registration = False  # registered while Redis was away
        self._locks: dict[str, str] = {}  # lock name -> the token we hold it with
        self._link = _Link.CONNECTING
        self._generation = 0  # bumped on each (re)connection, to ignore stale failures
        self._epoch: str | None = None
        self._settled = asyncio.Event()  # the first connection attempt has finished
        self._online = asyncio.Event()
        self._lost = asyncio.Event()  # a caller's Redis call failed: reconnect
        self._outage_started: float | None = None
        self._written_back = 0
        self._task: asyncio.Task | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisHealthStore({self._description}, key_prefix={self._keys.prefix!r})"

    @property
    def connected(self) -> bool:
        """Whether the store is subscribed and its view synchronized with Redis."""
        return self._link is _Link.ONLINE and not self._closed

    async def connect(self, timeout: float = 5.0) -> bool:
        """Start the store and wait until it is synchronized with Redis.

        Optional: the store starts on first use anyway. Useful at startup, so
        the first call's ``get()`` already has the fleet's view.

        Args:
            timeout: Seconds to wait.

        Returns:
            Whether the store is connected; if not, it keeps trying in the background.
        """
        if self._closed:
            return False
        self._start()
        try:
            async with asyncio.timeout(timeout):
                await self._online.wait()
        except TimeoutError:
            pass
        return self.connected

    async def get(self, provider_ids: Sequence[str]) -> Mapping[str, ProviderHealth]:
        """Return the health of each provider, from the local view (no Redis round trip).

        Raises:
            TypeError: ``provider_ids`` is one id, not a sequence of ids.
        """
        ids = check_provider_ids(provider_ids)
        await self._ready()
        now = self._clock()
        return {pid: self._view.get(pid, now) for pid in ids}

    async def known_providers(self) -> list[str]:
        """Every provider the fleet has a record of (from the local view)."""
        await self._ready()
        return self._view.provider_ids

    async def register_providers(self, provider_ids: Sequence[str]) -> None:
        """Merge a worker's provider ids, in its preference order, into the fleet's list.

        One script, so two workers registering at once never lose an id.
        While Redis is away the ids are kept and written once it is back.

        Raises:
            TypeError: ``provider_ids`` is one id, not a sequence of ids.
        """
        ids = check_provider_ids(provider_ids)
        self._registered = merge_registered(self._registered, ids)
        if await self._ready():
            raw = await self._call(lambda: self._register(ids))
            if raw is not _FAILED:
                self._registered = merge_registered(raw, self._registered)
                return
        self._owe_registration = True

    async def registered_providers(self) -> list[str]:
        """Every provider id the fleet's workers registered, in the merged preference order.

        Read from Redis (one round trip); while Redis is away, what this store
        registered and last read.
        """
        if await self._ready():
            raw = await self._call(lambda: self._client.lrange(self._keys.registered, 0, -1))
            if raw is not _FAILED:
                self._registered = merge_registered(decode_registered(raw), self._registered)
        return list(self._registered)

    async def record_attempt(
        self,
        provider_id: str,
        failure: FailureReason | None,
        *,
        policy: HealthPolicy,
        peers: Sequence[str] = (),
        draw: float = 0.0,
    ) -> AttemptVerdict:
        """Add one attempt's outcome to the fleet's evidence; eject the provider if a rule says so.

        One script (``record_attempt.lua``, one round trip) adds the attempt
        to the provider's window, applies ``policy`` as
        :class:`~pipecat_tts_failover.health.HealthWindow` does, reading the
        peers' records for the panic floor, and publishes the record: exactly
        one worker's attempt ejects per incident.

        While Redis is away the rules run on the local view, on this worker's
        own evidence since the outage began; an ejection decided then is
        written back as a mark-down with its ejection count once Redis answers
        again (the attempts themselves are not: see ``Owed``).

        Args:
            provider_id: The provider.
            failure: Why the attempt failed, or None if it spoke.
            policy: The ejection rules.
            peers: The other providers of the caller's group (for the panic floor).
            draw: A random number in [-1, 1] for the ejection's jitter.

        Returns:
            What the write did; ``ejected`` is True for exactly one writer per
            incident (while Redis is reachable).

        Raises:
            TypeError: ``peers`` is one id, not a sequence of ids, or
                ``policy`` is not a HealthPolicy.
        """
        if not isinstance(policy, HealthPolicy):
            raise TypeError(f"policy must be a HealthPolicy, not {type(policy).__name__}")
        failure = FailureReason(failure) if failure is not None else None
        others = [p for p in dict.fromkeys(check_provider_ids(peers, "peers")) if p != provider_id]
        now = self._clock()
        if await self._ready():
            keys = [self._keys.window(provider_id), *map(self._keys.provider, others)]
            args = attempt_args(failure, policy, draw, now)
            raw = await self._call(
                lambda: self._script("record_attempt", provider_id, *args, keys=keys)
            )
            if raw is not _FAILED:
                verdict, revision = parse_verdict(provider_id, raw)
                self._view.apply(revision)
                return verdict
        verdict = self._view.record_attempt(
            provider_id, failure, policy=policy, peers=others, draw=draw, now=now
        )
        if verdict.ejected:
            self._pending.mark_down(self._view.get_raw(provider_id), ejection=True)
        return verdict

    async def mark_down(self, provider_id: str, *, reason: FailureReason, cooldown: float) -> bool:
        """Mark a provider down for ``cooldown`` seconds; True if this call took it down."""
        reason = FailureReason(reason)
        now = self._clock()
        if await self._ready():
            reply = await self._run(
                "mark_down", provider_id, now, now + cooldown, reason.value, now
            )
            if reply is not None:
                return reply.changed
        health = self._view.mark_down(
            provider_id, reason=reason, down_until=now + cooldown, now=now
        )
        if health is None:
            return False
        self._pending.mark_down(health)
        return True

    async def mark_up(self, provider_id: str) -> bool:
        """Mark a provider healthy; True if it was down before."""
        now = self._clock()
        if await self._ready():
            reply = await self._run("mark_up", provider_id, now, "")
            if reply is not None:
                return reply.changed
        was_down, changed = self._view.mark_up(provider_id, now)
        if changed:
            self._pending.mark_up(provider_id, now)
        return was_down

    async def extend_down(self, provider_id: str, cooldown: float) -> bool:
        """Keep a provider that is down marked down until at least ``cooldown`` seconds from now.

        Not a new incident: ``reason`` and ``since`` stay. While Redis is away
        the extension is made in the local view and written back later.

        Returns:
            True if it was down, False if it was up (then nothing changes).
        """
        now = self._clock()
        if await self._ready():
            reply = await self._run("extend_down", provider_id, now, now + cooldown)
            if reply is not None:
                return reply.changed
        was_down, changed = self._view.extend_down(provider_id, down_until=now + cooldown, now=now)
        if changed:
            self._pending.extend_down(provider_id, now + cooldown)
        return was_down

    async def try_lock(self, name: str, ttl: float) -> bool:
        """Take a named lock for ``ttl`` seconds; False while someone else holds it.

        False at once, too, while Redis is away: a lock that cannot be proven
        is not taken.
        """
        if not await self._ready():
            return False
        token = uuid.uuid4().hex
        ttl_ms = max(1, math.ceil(ttl * 1000))
        key = self._keys.lock(name)
        taken = await self._call(lambda: self._client.set(key, token, nx=True, px=ttl_ms))
        if taken is _FAILED or not taken:
            return False
        self._locks[name] = token
        return True

    async def release_lock(self, name: str) -> None:
        """Release a named lock this store holds; a lock someone else holds is left alone.

        While Redis is away the lock is left to run out.
        """
        token = self._locks.pop(name, None)
        if token is None or not await self._ready():
            return
        await self._call(
            lambda: self._scripts["release_lock"](
                keys=[self._keys.lock(name)], args=[token], client=self._client
            )
        )

    async def get_controls(self) -> Controls:
        """The operator's controls for new calls, from the local view (no round trip).

        While Redis is away: the last controls the store heard of.
        """
        await self._ready()
        return self._view.controls.controls

    async def set_controls(self, controls: Controls) -> None:
        """Replace the operator's controls; every worker's view has them within milliseconds.

        Raises:
            TypeError: ``controls`` is not a ``Controls``.
            HealthStoreError: The store is closed, or Redis did not take the
                controls within a few seconds.
        """
        if not isinstance(controls, Controls):
            raise TypeError(f"controls must be a Controls, not {type(controls).__name__}")
        if self._closed:
            raise HealthStoreError(f"{self!r} is closed")
        self._start()
        generation = self._generation
        try:
            rev = await _within(self._sync_timeout, self._write_controls(controls, restore=False))
        except Exception as e:  # noqa: BLE001 - any failure is the operator's to see
            self._lose(e, generation)
            # Not chained: the description is the redacted form of ``e``.
            raise HealthStoreError(
                f"{self!r}: could not set the controls: {self._describe(e, self._sync_timeout)}"
            ) from None
        self._view.apply_controls(ControlsRevision(controls, rev))
        logger.info(
            f"{self!r}: controls set: pinned={controls.pinned}, "
            f"failover_enabled={controls.failover_enabled}"
        )

    async def close(self) -> None:
        """Stop the background task and close the client if the store created it.

        Safe to call twice. Changes still owed to an unreachable Redis are lost
        (with a warning).
        """
        if self._closed:
            return
        self._closed = True
        self._link = _Link.OFFLINE  # quietly: nothing is lost, the store is done
        self._online.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        if len(self._pending):
            logger.warning(f"{self!r}: closing with {len(self._pending)} change(s) Redis never got")
        if self._owned is not None:
            try:
                await self._owned.aclose()
            except Exception as e:  # noqa: BLE001 - closing must not fail the caller
                logger.debug(f"{self!r}: closing the Redis client failed: {self._describe(e)}")

    # -- callers' side ------------------------------------------------------

    def _start(self):
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._maintain(), name=f"{self!r}::link")

    async def _ready(self) -> bool:
        """Start the store if needed; whether a caller should use Redis now."""
        if self._closed:
            return False
        self._start()
        if self._link is _Link.CONNECTING:
            try:
                async with asyncio.timeout(self._op_timeout):
                    await self._settled.wait()
            except TimeoutError:
                pass
        return self._link is _Link.ONLINE

    async def _run(self, name: str, provider_id: str, *args: Any) -> Reply | None:
        """Run a record script for a caller; None (and offline) if Redis failed it."""
        raw = await self._call(lambda: self._script(name, provider_id, *args))
        if raw is _FAILED:
            return None
        reply = parse_reply(provider_id, raw)
        self._view.apply(reply.revision)
        return reply

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """Run one Redis call for a caller within ``op_timeout``; ``_FAILED`` (and offline) if it failed."""
        generation = self._generation
        try:
            return await _within(self._op_timeout, command(), lag_cap=self._sync_timeout)
        except Exception as e:  # noqa: BLE001 - whatever Redis does, the caller goes on
            self._lose(e, generation)
            return _FAILED

    async def _write_controls(self, controls: Controls, *, restore: bool) -> int:
        """Write (or with ``restore``, write only if Redis has none) the controls; their revision."""
        rev = await self._scripts["set_controls"](
            keys=[self._keys.controls],
            args=[self._keys.channel, encode_controls(controls), "1" if restore else ""],
            client=self._client,
        )
        return int(rev)

    async def _register(self, ids: Sequence[str]) -> list[str]:
        """Run the registration script; the fleet's merged list."""
        raw = await self._scripts["register_providers"](
            keys=[self._keys.registered], args=list(ids), client=self._client
        )
        return decode_registered(raw)

    async def _script(
        self, name: str, provider_id: str, *args: Any, keys: Sequence[str] = ()
    ) -> Any:
        """Run a record script: the provider's record and the index, then ``keys``."""
        keys = [self._keys.provider(provider_id), self._keys.index, *keys]
        args = (self._keys.channel, provider_id, *args)
        return await self._scripts[name](keys=keys, args=args, client=self._client)

    def _lose(self, error: Exception, generation: int | None = None):
        """Go offline (logging once per outage) after ``error``."""
        if self._link is _Link.OFFLINE or generation not in (None, self._generation):
            return
        self._link = _Link.OFFLINE
        self._online.clear()
        self._settled.set()
        self._lost.set()
        self._outage_started = time.monotonic()
        logger.warning(
            f"{self!r}: Redis unavailable ({self._describe(error)}); "
            "answering from the local view and reconnecting in the background"
        )

    def _describe(self, error: Exception, timeout: float | None = None) -> str:
        text = str(error) or f"no reply within {timeout or self._op_timeout:g}s"
        return redact(f"{type(error).__name__}: {text}", self._secrets)

    # -- the link task ------------------------------------------------------

    async def _maintain(self):
        """Keep the subscription and view current; reconnect with backoff."""
        delay = _FIRST_RETRY_DELAY
        while True:
            pubsub = None
            try:
                if isinstance(self._client, RedisCluster):
                    # Its pubsub needs the slot map.
                    await _within(self._sync_timeout, self._client.initialize())
                pubsub = self._client.pubsub()
                await _within(self._sync_timeout, self._subscribe(pubsub))
                delay = _FIRST_RETRY_DELAY
                await self._listen(pubsub)
            except Exception as e:  # noqa: BLE001 - any failure means: reconnect
                self._lose(e)
            finally:
                if pubsub is not None:
                    await self._close_pubsub(pubsub)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._max_reconnect_delay)

    async def _subscribe(self, pubsub: PubSub):
        await pubsub.subscribe(self._keys.channel)
        await self._sync()

    async def _sync(self):
        """Write back what is owed, then replace the view with Redis's records; go online."""
        for name in SCRIPT_NAMES:  # so callers' first EVALSHA does not miss
            await self._client.script_load(_source(name))
        while True:
            await self._flush()
            ids = decode_ids(await self._client.smembers(self._keys.index))
            raw = await self._scripts["snapshot"](
                keys=[self._keys.epoch, self._keys.controls, *map(self._keys.provider, ids)],
                args=[uuid.uuid4().hex, "", *ids],
                client=self._client,
            )
            snapshot = parse_snapshot(raw)
            if self._epoch is not None and snapshot.epoch != self._epoch:
                # Redis came back without its data: restore the mark-downs we know
                # of, and the controls if an operator ever set them.
                active = self._view.active_mark_downs(self._clock())
                logger.warning(
                    f"{self!r}: Redis lost its data; writing back {len(active)} mark-down(s)"
                )
                for health in active:
                    self._pending.mark_down(health)
                if self._view.controls.rev:
                    self._owed_controls = self._view.controls.controls
                self._owe_registration = self._owe_registration or bool(self._registered)
            self._epoch = snapshot.epoch
            owed = len(self._pending) or self._owed_controls is not None or self._owe_registration
            if not owed:
                self._view.replace(snapshot.revisions, snapshot.controls)
                self._go_online()
                return

    async def _flush(self):
        """Write back the changes made while Redis was away, and controls Redis lost."""
        if self._owed_controls is not None:
            # Only if there are none: an operator may have set new ones since.
            await self._write_controls(self._owed_controls, restore=True)
            self._owed_controls = None
        if self._owe_registration:
            self._registered = await self._register(self._registered)
            self._owe_registration = False
        while (item := self._pending.pop()) is not None:
            provider_id, owed = item
            written = False
            try:
                await self._write_back(provider_id, owed)
                written = True
            finally:
                if not written:  # failed or cancelled: owed until the next connection
                    self._pending.put_back(provider_id, owed)
            self._written_back += 1

    async def _write_back(self, provider_id: str, owed: Owed):
        now = self._clock()
        down = owed.mark_down
        if down is not None and down.is_down(now):
            reason = down.reason or FailureReason.ERROR
            ejections = down.ejections if owed.ejection else ""
            await self._script(
                "mark_down", provider_id, now, down.down_until, reason.value, down.since, ejections
            )
        elif owed.mark_up_at is not None:
            await self._script("mark_up", provider_id, now, owed.mark_up_at)
        if owed.extend_to is not None and owed.extend_to > now:
            await self._script("extend_down", provider_id, now, owed.extend_to)

    def _go_online(self):
        self._generation += 1
        self._link = _Link.ONLINE
        self._lost.clear()
        self._online.set()
        self._settled.set()
        if self._outage_started is not None:
            outage = time.monotonic() - self._outage_started
            logger.info(
                f"{self!r}: Redis reachable again after {outage:.1f}s; "
                f"wrote back {self._written_back} provider record(s)"
            )
        else:
            logger.debug(f"{self!r}: connected")
        self._outage_started = None
        self._written_back = 0

    async def _listen(self, pubsub: PubSub):
        """Apply published changes until the subscription fails or a caller's call does."""
        reader = asyncio.create_task(self._read(pubsub), name=f"{self!r}::subscription")
        lost = asyncio.create_task(self._lost.wait(), name=f"{self!r}::lost")
        try:
            done, _ = await asyncio.wait({reader, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, lost):
                task.cancel()
            await asyncio.wait({reader, lost})
        if reader in done:
            reader.result()  # raises what ended the subscription

    async def _read(self, pubsub: PubSub):
        heard = time.monotonic()
        awaiting_pong = False
        subscribed = False
        while True:
            message = await pubsub.get_message(timeout=_HEARTBEAT)
            if message is not None:
                heard, awaiting_pong = time.monotonic(), False
                kind = message.get("type")
                if kind == "message":
                    self._on_message(message["data"])
                elif kind == "subscribe":
                    if subscribed:
                        # redis-py reconnected and subscribed again by itself:
                        # whatever was published in between never reached us.
                        logger.debug(f"{self!r}: subscribed again; resynchronizing")
                        await _within(self._sync_timeout, self._sync())
                    subscribed = True
            elif time.monotonic() - heard >= _HEARTBEAT:
                if awaiting_pong:
                    raise ConnectionError("no reply to PING on the subscription")
                await pubsub.ping()
                heard, awaiting_pong = time.monotonic(), True

    def _on_message(self, data: str | bytes):
        try:
            change = parse_message(data)
        except ValueError as e:
            logger.debug(f"{self!r}: ignoring a message: {e}")
            return
        if isinstance(change, Revision):
            self._view.apply(change)
        elif self._view.apply_controls(change):
            logger.debug(f"{self!r}: controls are now {change.controls}")

    async def _close_pubsub(self, pubsub: PubSub):
        try:
            # aclose() arrived in redis-py 5.0.1; reset() is the older name.
            await _within(self._op_timeout * 4, getattr(pubsub, "aclose", pubsub.reset)())
        except Exception as e:  # noqa: BLE001 - the subscription is being dropped anyway
            logger.trace(f"{self!r}: closing the subscription: {self._describe(e)}")


async def _within(seconds: float, awaitable: Awaitable[_T], *, lag_cap: float = 0.0) -> _T:
    """Await ``awaitable`` for at most ``seconds``; TimeoutError once they run out.

    With ``lag_cap``, the time this process's event loop lost meanwhile is
    given back, up to that many seconds (:class:`LagGrace`): a worker whose
    loop lags must not take Redis for gone.

    Not a bare ``asyncio.timeout``: on Python 3.11 redis-py waits with
    ``wait_for2``, which, cancelled just as its wait completes, raises
    ``CancelledWithResultError``, a CancelledError subclass that
    ``asyncio.timeout`` lets through instead of turning it into TimeoutError.
    It would escape ``except Exception`` and end the caller's task (a
    processor's store writer, or the link task). A cancellation of the task
    itself still propagates.
    """
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    deadline = asyncio.timeout(seconds)
    grace: LagGrace | None = None
    try:
        async with deadline:
            if lag_cap:
                grace = LagGrace(deadline, seconds, lag_cap)
            return await awaitable
    except asyncio.CancelledError:
        if deadline.expired() and task.cancelling() <= cancelling:
            raise TimeoutError from None
        raise
    finally:
        if grace is not None:
            grace.cancel()


@functools.cache
def _source(name: str) -> str:
    return script_source(name)
