"""What RedisHealthStore keeps in Redis: key layout, Lua scripts, and their replies.

Every key shares one hash tag, so a Redis Cluster keeps them in one slot and
the scripts may touch several at once::

    {tts-failover}:provider:<id>   hash: rev, failures (in a row), down_until, reason, since,
                                   attempts, window_failures, ejections (as last written),
                                   ejection_count, ejected_at (the ejection history)
    {tts-failover}:window:<id>     hash: the health policy's time buckets, a:<index> attempts
                                   and f:<index> failures (expires when idle)
    {tts-failover}:providers       set of the provider ids ever written
    {tts-failover}:registered      list of the provider ids workers use, in preference order
    {tts-failover}:epoch           token set once per dataset (detects data loss)
    {tts-failover}:controls        hash: rev, value (the operator's controls as JSON)
    {tts-failover}:lock:<name>     string: the holder's token, with a TTL
    {tts-failover}:events          pub/sub channel: one JSON message per change

A message is a provider's record (``{"p": id, "rev", "failures", "attempts",
"window_failures", "ejections", ...}``) or the controls (``{"k": "controls",
"rev", "value"}``); a store ignores what it does not understand and takes
missing fields as 0, so versions can share a channel.

Times are wall-clock seconds from the writing store's clock, passed to the
scripts as arguments (not Redis ``TIME``), so the local view and Redis agree
and tests can inject a clock. ``record_attempt.lua`` applies
:class:`~pipecat_tts_failover.health.HealthWindow`'s rules with the same
arithmetic, so a store in memory and one in Redis reach the same verdicts.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.health import AttemptVerdict, HealthPolicy
from pipecat_tts_failover.store._redis_view import ControlsRevision, Revision
from pipecat_tts_failover.store.base import Controls, ProviderHealth

RECORD_SCRIPTS = ("record_attempt", "mark_down", "mark_up", "extend_down")
"""The scripts that change one provider's record; they share ``common.lua``."""

SCRIPT_NAMES = (
    *RECORD_SCRIPTS,
    "snapshot",
    "set_controls",
    "release_lock",
    "register_providers",
)
"""Every Lua script under ``store/lua/``."""

# A record's fields in a reply, a snapshot row or a message: rev, failures,
# down_until, reason, since, attempts, window_failures, ejections.
_RECORD_FIELDS = 8
_RECORD_END = 1 + _RECORD_FIELDS  # in a script's reply, after ``changed``


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys and channel of one key prefix.

    Args:
        prefix: The user's key prefix; wrapped in ``{}`` unless it already
            holds a hash tag.
    """

    prefix: str

    @property
    def tag(self) -> str:
        """The prefix as a hash tag."""
        has_tag = "{" in self.prefix and "}" in self.prefix.split("{", 1)[1]
        return self.prefix if has_tag else f"{{{self.prefix}}}"

    def provider(self, provider_id: str) -> str:
        """The hash holding one provider's record."""
        return f"{self.tag}:provider:{provider_id}"

    @property
    def index(self) -> str:
        """The set of provider ids."""
        return f"{self.tag}:providers"

    @property
    def registered(self) -> str:
        """The list of provider ids workers registered, in preference order."""
        return f"{self.tag}:registered"

    @property
    def epoch(self) -> str:
        """The dataset's epoch token."""
        return f"{self.tag}:epoch"

    @property
    def controls(self) -> str:
        """The hash holding the operator's controls."""
        return f"{self.tag}:controls"

    def window(self, provider_id: str) -> str:
        """The hash holding one provider's time buckets of attempts and failures."""
        return f"{self.tag}:window:{provider_id}"

    def lock(self, name: str) -> str:
        """The key of a named lock."""
        return f"{self.tag}:lock:{name}"

    @property
    def channel(self) -> str:
        """The pub/sub channel changes are published on."""
        return f"{self.tag}:events"


def script_source(name: str) -> str:
    """The Lua source of one script, with the shared helpers prepended to record scripts."""
    lua = resources.files("pipecat_tts_failover.store").joinpath("lua")
    body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name not in RECORD_SCRIPTS:
        return body
    return lua.joinpath("common.lua").read_text(encoding="utf-8") + "\n" + body


@dataclass(frozen=True, slots=True)
class Reply:
    """What a record script answered.

    Parameters:
        changed: The script's verdict (the transition happened; for
            ``mark_up`` and ``extend_down``: the provider was down).
        revision: The provider's record after the script.
    """

    changed: bool
    revision: Revision


def parse_reply(provider_id: str, raw: Sequence[Any]) -> Reply:
    """Parse a record script's reply: ``changed``, then the record (see ``common.lua``)."""
    return Reply(bool(int(raw[0])), _revision(provider_id, raw[1:_RECORD_END]))


def attempt_args(
    failure: FailureReason | None, policy: HealthPolicy, draw: float, now: float
) -> list[Any]:
    """``record_attempt.lua``'s arguments after the channel and provider id.

    Floats go as ``repr``, which Lua reads back to the same double.
    """
    return [
        repr(float(now)),
        failure.value if failure is not None else "",
        "1" if failure is not None and failure.is_permanent else "",
        policy.consecutive,
        repr(float(policy.failure_rate)),
        policy.min_volume,
        repr(float(policy.bucket)),
        policy.buckets,
        repr(float(policy.ejection)),
        repr(float(policy.max_ejection)),
        repr(float(policy.jitter)),
        repr(float(policy.forgive_after)),
        repr(float(draw)),
        # The window hash outlives its oldest bucket; it is tidying, not a rule.
        math.ceil(policy.buckets * policy.bucket) + 1,
    ]


def parse_verdict(provider_id: str, raw: Sequence[Any]) -> tuple[AttemptVerdict, Revision]:
    """Parse ``record_attempt.lua``'s reply: the record, then the rule and whether it was spared."""
    reply = parse_reply(provider_id, raw)
    rule = _text(raw[_RECORD_END]) or None
    health = reply.revision.health
    verdict = AttemptVerdict(
        ejected=reply.changed,
        rule=rule,
        down_until=health.down_until,
        spared=bool(int(raw[_RECORD_END + 1])),
        consecutive=health.failures,
        attempts=health.attempts,
        failures=health.window_failures,
        ejections=health.ejections,
    )
    return verdict, reply.revision


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the snapshot script read.

    Parameters:
        epoch: The dataset's epoch token.
        controls: The operator's controls (revision 0 if never set).
        revisions: Every provider's record.
    """

    epoch: str
    controls: ControlsRevision
    revisions: list[Revision]


def parse_snapshot(raw: Sequence[Any]) -> Snapshot:
    """Parse ``{epoch, {controls rev, controls value}, {id, rev, ...}, ...}``."""
    rev, value = raw[1]
    try:
        controls = decode_controls(value)
    except ValueError:
        # Written by hand, or by a version whose format this one cannot read.
        controls = Controls()
    return Snapshot(
        _text(raw[0]),
        ControlsRevision(controls, int(rev or 0)),
        [_revision(_text(row[0]), row[1:]) for row in raw[2:]],
    )


def parse_message(data: str | bytes) -> Revision | ControlsRevision:
    """Parse a change published on the channel: a provider's record, or the controls.

    Raises:
        ValueError: The message is not one this version understands.
    """
    try:
        m = json.loads(data)
        if m.get("k") == "controls":
            return ControlsRevision(decode_controls(m["value"]), int(m["rev"]))
        fields = [
            m["rev"],
            m["failures"],
            m.get("down_until"),
            m.get("reason"),
            m.get("since"),
            m.get("attempts"),
            m.get("window_failures"),
            m.get("ejections"),
        ]
        return _revision(str(m["p"]), fields)
    except (AttributeError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"unexpected health message: {e!r}") from e


def encode_controls(controls: Controls) -> str:
    """The controls as the JSON object kept in Redis."""
    return json.dumps({"pinned": controls.pinned, "failover_enabled": controls.failover_enabled})


def decode_controls(value: str | bytes | None) -> Controls:
    """Read controls written by :func:`encode_controls`; None (never set) gives the defaults.

    Fields this version does not know are ignored; missing ones take their defaults.

    Raises:
        ValueError: ``value`` is not a JSON object with fields of the right types.
    """
    if value is None:
        return Controls()
    try:
        fields = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"controls are not JSON: {e}") from e
    if not isinstance(fields, dict):
        raise ValueError(f"controls are not a JSON object: {value!r}")  # noqa: TRY004 - bad data
    pinned = fields.get("pinned")
    enabled = fields.get("failover_enabled", True)
    if not (pinned is None or isinstance(pinned, str)) or not isinstance(enabled, bool):
        raise ValueError(f"controls have fields of the wrong type: {value!r}")
    return Controls(pinned=pinned, failover_enabled=enabled)


def decode_ids(raw: Any) -> list[str]:
    """The provider ids of an ``SMEMBERS`` reply, sorted."""
    return sorted(_text(i) for i in raw)


def decode_registered(raw: Any) -> list[str]:
    """The provider ids of a ``register_providers`` or ``LRANGE`` reply, in their order."""
    return [_text(i) for i in raw]


def _revision(provider_id: str, fields: Sequence[Any]) -> Revision:
    rev, failures, down_until, reason, since, attempts, window_failures, ejections = fields
    health = ProviderHealth(
        provider_id,
        down_until=_float(down_until),
        reason=_reason(reason) if down_until is not None and reason is not None else None,
        since=_float(since),
        failures=int(failures or 0),
        attempts=int(attempts or 0),
        window_failures=int(window_failures or 0),
        ejections=int(ejections or 0),
    )
    return Revision(health, int(rev or 0))


def _reason(value: Any) -> FailureReason:
    try:
        return FailureReason(_text(value))
    except ValueError:
        # Written by a newer version with a reason this one does not know.
        return FailureReason.ERROR


def _float(value: Any) -> float | None:
    return None if value is None else float(_text(value))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
