"""Metrics listeners: Prometheus (extra ``[metrics]``) or OpenTelemetry, imported lazily.

Both count the same things from the FailoverEvents the processor reports:

- ``sentences_total{provider,outcome}``: sentences per provider, ``outcome`` is
  ``"spoken"`` or the failure reason.
- ``failovers_total{from_provider,to_provider,reason}``: sentences moved.
- ``provider_up{provider}``: 1 once a provider is marked up, 0 once marked down.
- ``failover_gap_seconds``: dead air of each failover that was eventually spoken.
- ``probes_total{provider,result}``: recovery and confirmation probes,
  ``result`` is ``"ok"`` or the failure reason.
- ``ejections_total{provider,rule}``: fleet ejections by the health rule that
  made them (``permanent``, ``consecutive``, ``rate``; ``operator`` by hand).
- ``failures_excused_total{provider,cause}``: failed attempts not held against
  the provider (``loop_lag``, ``client_misuse``, ``panic_floor``).

Neither ``prometheus_client`` nor ``opentelemetry`` is imported until a listener
is constructed.
"""

import threading
import weakref
from collections.abc import Mapping
from typing import Any

from loguru import logger

from pipecat_tts_failover.events import (
    FailedOver,
    FailoverEvent,
    FailureExcused,
    ProbeFinished,
    ProviderDown,
    ProviderUp,
    SentenceAttempted,
)

__all__ = ["OpenTelemetryMetrics", "PrometheusMetrics"]

# Dead air from 10 ms (a fast error) to 5 s (a hung provider past its deadline).
_GAP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class _MetricsListener:
    """Turns FailoverEvents into metric updates; subclasses implement the updates."""

    _failed = False

    def on_event(self, event: FailoverEvent) -> None:
        """Update the metrics for one event; returns at once, never raises.

        Args:
            event: Any FailoverEvent.
        """
        try:
            match event:
                case SentenceAttempted():
                    self._count("sentences", provider=event.provider_id, outcome=event.outcome)
                case FailedOver():
                    self._count(
                        "failovers",
                        from_provider=event.from_id,
                        to_provider=event.to_id,
                        reason=event.reason.value,
                    )
                    if event.gap_seconds is not None:
                        self._observe_gap(event.gap_seconds)
                case ProviderDown():
                    self._set_up(event.provider_id, False)
                    self._count(
                        "ejections", provider=event.provider_id, rule=event.rule or "operator"
                    )
                case ProviderUp():
                    self._set_up(event.provider_id, True)
                case FailureExcused():
                    self._count("excused", provider=event.provider_id, cause=event.cause)
                case ProbeFinished():
                    result = (
                        "ok" if event.ok else (event.reason.value if event.reason else "failed")
                    )
                    self._count("probes", provider=event.provider_id, result=result)
        except Exception as e:  # noqa: BLE001 - metrics must never break the audio path
            if not self._failed:  # once, not once per sentence
                self._failed = True
                logger.warning(f"{type(self).__name__}: could not record {event}: {e}")

    def _count(self, metric: str, **labels: str) -> None:
        raise NotImplementedError

    def _observe_gap(self, seconds: float) -> None:
        raise NotImplementedError

    def _set_up(self, provider: str, up: bool) -> None:
        raise NotImplementedError


class _PrometheusCollectors:
    """The collectors of one namespace in one registry, shared by every PrometheusMetrics on them."""

    def __init__(self, prom: Any, registry: Any, namespace: str):
        kw: dict[str, Any] = {"namespace": namespace, "registry": registry}
        self.counters: Mapping[str, Any] = {
            "sentences": prom.Counter(
                "sentences", "Sentences per provider, by outcome.", ["provider", "outcome"], **kw
            ),
            "failovers": prom.Counter(
                "failovers",
                "Sentences moved from one provider to another.",
                ["from_provider", "to_provider", "reason"],
                **kw,
            ),
            "probes": prom.Counter(
                "probes", "Recovery probes per provider, by result.", ["provider", "result"], **kw
            ),
            "ejections": prom.Counter(
                "ejections", "Fleet ejections per provider, by rule.", ["provider", "rule"], **kw
            ),
            "excused": prom.Counter(
                "failures_excused",
                "Failed attempts not held against the provider, by cause.",
                ["provider", "cause"],
                **kw,
            ),
        }
        self.provider_up = prom.Gauge(
            "provider_up", "1 if the provider is marked up, 0 if marked down.", ["provider"], **kw
        )
        self.gap = prom.Histogram(
            "failover_gap_seconds",
            "Dead air from the failed request until the new provider's first audible audio.",
            buckets=_GAP_BUCKETS,
            **kw,
        )


# Registry -> namespace -> its collectors. A registry registers a metric name
# once, so every PrometheusMetrics of a process (one per call) shares them.
_shared: "weakref.WeakKeyDictionary[Any, dict[str, _PrometheusCollectors]]" = (
    weakref.WeakKeyDictionary()
)
_shared_lock = threading.Lock()


class PrometheusMetrics(_MetricsListener):
    """Exports failover metrics with ``prometheus_client``.

    Install it with ``pip install "pipecat-tts-failover[metrics]"``.

    Names are prefixed with ``namespace`` (``tts_failover_sentences_total``, ...).
    Build one per call if that is how your bot builds its pipeline: every
    ``PrometheusMetrics`` on the same registry and namespace shares one set of
    collectors, so the counts of every call add up in one exposition.

    Args:
        registry: The ``CollectorRegistry`` to register in; the default global
            registry if None.
        namespace: Prefix of the metric names.

    Raises:
        ImportError: If ``prometheus_client`` is not installed.
        TypeError: If ``namespace`` is not a string.
        ValueError: If ``namespace`` is empty, or the registry already holds a
            metric of the same name that this class did not register.

    Example::

        prometheus_client.start_http_server(9100)
        ...
        # per call:
        tts = FailoverTTSService(services=[cartesia, elevenlabs], metrics=PrometheusMetrics())
    """

    def __init__(self, registry: Any = None, namespace: str = "tts_failover"):
        try:
            import prometheus_client as prom
        except ImportError as e:
            raise ImportError(
                "PrometheusMetrics needs prometheus_client: "
                'pip install "pipecat-tts-failover[metrics]"'
            ) from e
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if not namespace:
            raise ValueError("namespace must not be empty")
        registry = prom.REGISTRY if registry is None else registry
        with _shared_lock:
            by_namespace = _shared.setdefault(registry, {})
            collectors = by_namespace.get(namespace)
            if collectors is None:
                collectors = by_namespace[namespace] = _PrometheusCollectors(
                    prom, registry, namespace
                )
        self._counters: Mapping[str, Any] = collectors.counters
        self._provider_up = collectors.provider_up
        self._gap = collectors.gap

    def _count(self, metric: str, **labels: str) -> None:
        self._counters[metric].labels(**labels).inc()

    def _observe_gap(self, seconds: float) -> None:
        self._gap.observe(seconds)

    def _set_up(self, provider: str, up: bool) -> None:
        self._provider_up.labels(provider=provider).set(1 if up else 0)


class OpenTelemetryMetrics(_MetricsListener):
    """Records failover metrics with the OpenTelemetry metrics API (``opentelemetry-api>=1.27``).

    Instruments are named ``tts_failover.sentences``, ``tts_failover.failovers``,
    ``tts_failover.provider_up``, ``tts_failover.failover_gap`` (unit ``s``) and
    ``tts_failover.probes``, with the same attributes as the Prometheus labels.
    Your SDK's exporter decides where they go.

    Args:
        meter: The meter to create instruments on; the global meter provider's
            ``pipecat_tts_failover`` meter if None.

    Raises:
        ImportError: If ``opentelemetry-api`` is not installed (the ``[otel]`` extra).
    """

    def __init__(self, meter: Any = None):
        try:
            from opentelemetry import metrics as otel
        except ImportError as e:
            raise ImportError(
                "OpenTelemetryMetrics needs opentelemetry-api: "
                'pip install "pipecat-tts-failover[otel]"'
            ) from e
        meter = meter or otel.get_meter("pipecat_tts_failover")
        self._counters: Mapping[str, Any] = {
            "sentences": meter.create_counter(
                "tts_failover.sentences", unit="{sentence}", description="Sentences per provider."
            ),
            "failovers": meter.create_counter(
                "tts_failover.failovers", unit="{sentence}", description="Sentences moved."
            ),
            "probes": meter.create_counter(
                "tts_failover.probes", unit="{probe}", description="Recovery probes."
            ),
            "ejections": meter.create_counter(
                "tts_failover.ejections", unit="{ejection}", description="Fleet ejections."
            ),
            "excused": meter.create_counter(
                "tts_failover.failures_excused",
                unit="{attempt}",
                description="Failed attempts not held against the provider.",
            ),
        }
        self._provider_up = meter.create_gauge(
            "tts_failover.provider_up", description="1 if the provider is marked up, 0 if down."
        )
        self._gap = meter.create_histogram(
            "tts_failover.failover_gap",
            unit="s",
            description="Dead air of a failover.",
            explicit_bucket_boundaries_advisory=_GAP_BUCKETS,
        )

    def _count(self, metric: str, **labels: str) -> None:
        self._counters[metric].add(1, labels)

    def _observe_gap(self, seconds: float) -> None:
        self._gap.record(seconds)

    def _set_up(self, provider: str, up: bool) -> None:
        self._provider_up.set(1 if up else 0, {"provider": provider})
