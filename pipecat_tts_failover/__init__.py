"""Keep a pipecat voice agent speaking when its TTS provider fails."""

from importlib.metadata import PackageNotFoundError, version

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.errors import AllProvidersFailedError, FailoverError, HealthStoreError
from pipecat_tts_failover.providers import normalize_provider_id
from pipecat_tts_failover.service import FailoverTTSService
from pipecat_tts_failover.store import HealthStore, InMemoryHealthStore, ProviderHealth

try:
    __version__ = version("pipecat-tts-failover")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "AllProvidersFailedError",
    "FailoverError",
    "FailoverTTSService",
    "FailureReason",
    "HealthStore",
    "HealthStoreError",
    "InMemoryHealthStore",
    "ProviderHealth",
    "__version__",
    "normalize_provider_id",
]
