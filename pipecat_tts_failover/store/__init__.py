"""Health stores: where provider health is kept between calls and across workers."""

from pipecat_tts_failover.store.base import Clock, HealthStore, ProviderHealth
from pipecat_tts_failover.store.memory import InMemoryHealthStore, default_store

__all__ = ["Clock", "HealthStore", "InMemoryHealthStore", "ProviderHealth", "default_store"]
