"""Keep a pipecat voice agent speaking when its TTS provider fails.

The public names are imported on first use, so ``import pipecat_tts_failover``
(and its command line) stays light until the processor is needed.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipecat_tts_failover.alerts import CallbackAlerter, SlackWebhookAlerter
    from pipecat_tts_failover.detection import FailureReason
    from pipecat_tts_failover.errors import (
        AllProvidersFailedError,
        FailoverError,
        HealthStoreError,
    )
    from pipecat_tts_failover.health import HealthPolicy
    from pipecat_tts_failover.latency import AdaptiveTimeout
    from pipecat_tts_failover.probes import CartesiaProbe, ElevenLabsProbe, ServiceProbe
    from pipecat_tts_failover.providers import ServiceFactory, normalize_provider_id
    from pipecat_tts_failover.service import FailoverTTSService
    from pipecat_tts_failover.store import (
        Controls,
        HealthStore,
        InMemoryHealthStore,
        ProviderHealth,
        RedisHealthStore,
    )

try:
    __version__ = version("pipecat-tts-failover")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

_EXPORTS = {
    "AdaptiveTimeout": "pipecat_tts_failover.latency",
    "AllProvidersFailedError": "pipecat_tts_failover.errors",
    "CallbackAlerter": "pipecat_tts_failover.alerts",
    "CartesiaProbe": "pipecat_tts_failover.probes",
    "Controls": "pipecat_tts_failover.store",
    "ElevenLabsProbe": "pipecat_tts_failover.probes",
    "FailoverError": "pipecat_tts_failover.errors",
    "FailoverTTSService": "pipecat_tts_failover.service",
    "FailureReason": "pipecat_tts_failover.detection",
    "HealthPolicy": "pipecat_tts_failover.health",
    "HealthStore": "pipecat_tts_failover.store",
    "HealthStoreError": "pipecat_tts_failover.errors",
    "InMemoryHealthStore": "pipecat_tts_failover.store",
    "ProviderHealth": "pipecat_tts_failover.store",
    "RedisHealthStore": "pipecat_tts_failover.store",
    "ServiceFactory": "pipecat_tts_failover.providers",
    "ServiceProbe": "pipecat_tts_failover.probes",
    "SlackWebhookAlerter": "pipecat_tts_failover.alerts",
    "normalize_provider_id": "pipecat_tts_failover.providers",
}

__all__ = [
    "AdaptiveTimeout",
    "AllProvidersFailedError",
    "CallbackAlerter",
    "CartesiaProbe",
    "Controls",
    "ElevenLabsProbe",
    "FailoverError",
    "FailoverTTSService",
    "FailureReason",
    "HealthPolicy",
    "HealthStore",
    "HealthStoreError",
    "InMemoryHealthStore",
    "ProviderHealth",
    "RedisHealthStore",
    "ServiceFactory",
    "ServiceProbe",
    "SlackWebhookAlerter",
    "__version__",
    "normalize_provider_id",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
