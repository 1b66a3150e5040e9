"""Health stores: where provider health is kept between calls and across workers.

``RedisHealthStore`` is imported on first use, so this package does not need
the ``redis`` extra unless it is used.
"""

from typing import TYPE_CHECKING, Any

from pipecat_tts_failover.store.base import Clock, Controls, HealthStore, ProviderHealth
from pipecat_tts_failover.store.memory import InMemoryHealthStore, default_store

if TYPE_CHECKING:
    from pipecat_tts_failover.store.redis import RedisHealthStore as RedisHealthStore

__all__ = [
    "Clock",
    "Controls",
    "HealthStore",
    "InMemoryHealthStore",
    "ProviderHealth",
    "default_store",
]


def __getattr__(name: str) -> Any:
    """Import ``RedisHealthStore`` lazily; a missing extra raises ImportError naming it."""
    if name == "RedisHealthStore":
        from pipecat_tts_failover.store.redis import RedisHealthStore

        return RedisHealthStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
