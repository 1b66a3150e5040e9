"""What RedisHealthStore keeps in Redis: key layout, Lua scripts, and their replies.

Every key shares one hash tag, so a Redis Cluster keeps them in one slot and
the scripts may touch several at once::

    {tts-failover}:provider:<id>   hash: rev, failures, down_until, reason, since
    {tts-failover}:providers       set of the provider ids ever written
    {tts-failover}:epoch           token set once per dataset (detects data loss)
    {tts-failover}:events          pub/sub channel: one JSON record per change

Times are wall-clock seconds from the writing store's clock, passed to the
scripts as arguments (not Redis ``TIME``), so the local view and Redis agree
and tests can inject a clock.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.store._redis_view import Revision
from pipecat_tts_failover.store.base import ProviderHealth

SCRIPT_NAMES = ("record_failure", "record_success", "mark_down", "mark_up", "snapshot")
"""The Lua scripts under ``store/lua/``; all but ``snapshot`` share ``common.lua``."""


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
    def epoch(self) -> str:
        """The dataset's epoch token."""
        return f"{self.tag}:epoch"

    @property
    def channel(self) -> str:
        """The pub/sub channel changes are published on."""
        return f"{self.tag}:events"


def script_source(name: str) -> str:
    """The Lua source of one script, with the shared helpers prepended."""
    lua = resources.files("pipecat_tts_failover.store").joinpath("lua")
    body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name == "snapshot":
        return body
    return lua.joinpath("common.lua").read_text(encoding="utf-8") + "\n" + body


@dataclass(frozen=True, slots=True)
class Reply:
    """What a record script answered.

    Parameters:
        changed: The script's verdict (the transition happened; for
            ``mark_up``: the provider was down).
        revision: The provider's record after the script.
    """

    changed: bool
    revision: Revision

    @property
    def failures(self) -> int:
        """The consecutive failure count after the script."""
        return self.revision.health.failures


def parse_reply(provider_id: str, raw: Sequence[Any]) -> Reply:
    """Parse ``{changed, rev, failures, down_until, reason, since}``."""
    return Reply(bool(int(raw[0])), _revision(provider_id, raw[1:]))


def parse_snapshot(raw: Sequence[Any]) -> tuple[str, list[Revision]]:
    """Parse the snapshot script's reply into the epoch and every record."""
    epoch = _text(raw[0])
    return epoch, [_revision(_text(row[0]), row[1:]) for row in raw[1:]]


def parse_message(data: str | bytes) -> Revision:
    """Parse a change published on the channel.

    Raises:
        ValueError: The message is not a record this version understands.
    """
    try:
        m = json.loads(data)
        fields = [m["rev"], m["failures"], m.get("down_until"), m.get("reason"), m.get("since")]
        return _revision(str(m["p"]), fields)
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"unexpected health message: {e!r}") from e


def decode_ids(raw: Any) -> list[str]:
    """The provider ids of an ``SMEMBERS`` reply, sorted."""
    return sorted(_text(i) for i in raw)


def _revision(provider_id: str, fields: Sequence[Any]) -> Revision:
    rev, failures, down_until, reason, since = fields
    health = ProviderHealth(
        provider_id,
        down_until=_float(down_until),
        reason=_reason(reason) if down_until is not None and reason is not None else None,
        since=_float(since),
        failures=int(failures or 0),
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
