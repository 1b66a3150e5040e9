"""Metrics listeners: what a Prometheus scrape (or an OpenTelemetry reader) sees after events."""

import asyncio
import subprocess
import sys

import pytest
from pipecat.frames.frames import TTSSpeakFrame, TTSStoppedFrame

from pipecat_tts_failover import FailoverTTSService
from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.events import (
    FailedOver,
    FailoverListener,
    ProbeFinished,
    ProviderDown,
    ProviderUp,
    SentenceAttempted,
)

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from pipecat_tts_failover.metrics import PrometheusMetrics
from pipecat_tts_failover.store import InMemoryHealthStore
from tests.support.pipeline import PipelineHarness
from tests.support.scripted import ScriptedTTSService, plan

EVENTS = [
    SentenceAttempted("cartesia", None),
    SentenceAttempted("cartesia", None),
    SentenceAttempted("cartesia", FailureReason.NO_FIRST_AUDIO),
    SentenceAttempted("elevenlabs", None),
    FailedOver("cartesia", "elevenlabs", FailureReason.NO_FIRST_AUDIO, 0.75),
    FailedOver("cartesia", "elevenlabs", FailureReason.NO_FIRST_AUDIO, 0.5),
    FailedOver("elevenlabs", "cartesia", FailureReason.STALLED, None),  # never spoke: no gap
    ProviderDown("cartesia", FailureReason.NO_FIRST_AUDIO, "timeout", 1_700_000_000.0, 3),
    ProviderUp("elevenlabs", None),
    ProbeFinished("cartesia", ok=False, reason=FailureReason.SILENT_AUDIO, seconds=0.3),
    ProbeFinished("cartesia", ok=True, reason=None, seconds=0.2),
]


def scrape(events, namespace="tts_failover") -> str:
    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry, namespace=namespace)
    for event in events:
        metrics.on_event(event)
    return prometheus_client.generate_latest(registry).decode()


def test_sentences_are_counted_by_provider_and_outcome():
    text = scrape(EVENTS)
    assert 'tts_failover_sentences_total{outcome="spoken",provider="cartesia"} 2.0' in text
    assert 'tts_failover_sentences_total{outcome="no_first_audio",provider="cartesia"} 1.0' in text
    assert 'tts_failover_sentences_total{outcome="spoken",provider="elevenlabs"} 1.0' in text


def test_failovers_are_counted_by_route_and_reason():
    text = scrape(EVENTS)
    assert (
        'tts_failover_failovers_total{from_provider="cartesia",reason="no_first_audio",'
        'to_provider="elevenlabs"} 2.0'
    ) in text
    assert (
        'tts_failover_failovers_total{from_provider="elevenlabs",reason="stalled",'
        'to_provider="cartesia"} 1.0'
    ) in text


def test_failover_gaps_fill_the_histogram_only_when_known():
    text = scrape(EVENTS)
    assert "tts_failover_failover_gap_seconds_count 2.0" in text
    assert "tts_failover_failover_gap_seconds_sum 1.25" in text
    assert 'tts_failover_failover_gap_seconds_bucket{le="0.5"} 1.0' in text
    assert 'tts_failover_failover_gap_seconds_bucket{le="0.01"} 0.0' in text
    assert 'tts_failover_failover_gap_seconds_bucket{le="5.0"} 2.0' in text


def test_provider_up_gauge_follows_down_and_up():
    text = scrape(EVENTS)
    assert 'tts_failover_provider_up{provider="cartesia"} 0.0' in text
    assert 'tts_failover_provider_up{provider="elevenlabs"} 1.0' in text

    text = scrape([*EVENTS, ProviderUp("cartesia", 12.0)])
    assert 'tts_failover_provider_up{provider="cartesia"} 1.0' in text


def test_probes_are_counted_by_result():
    text = scrape([*EVENTS, ProbeFinished("cartesia", ok=False, reason=None, seconds=1.0)])
    assert 'tts_failover_probes_total{provider="cartesia",result="ok"} 1.0' in text
    assert 'tts_failover_probes_total{provider="cartesia",result="silent_audio"} 1.0' in text
    assert 'tts_failover_probes_total{provider="cartesia",result="failed"} 1.0' in text


def test_namespace_prefixes_every_metric():
    text = scrape(EVENTS[:1], namespace="bot")
    assert 'bot_sentences_total{outcome="spoken",provider="cartesia"} 1.0' in text
    assert "tts_failover_" not in text


def test_a_broken_metric_never_raises_into_the_caller():
    metrics = PrometheusMetrics(registry=prometheus_client.CollectorRegistry())
    metrics.on_event(FailedOver("a", "b", FailureReason.ERROR, float("nan")))  # fine for prometheus
    metrics.on_event(object())  # type: ignore[arg-type] - not an event: ignored
    metrics._counters = {}  # break it
    metrics.on_event(SentenceAttempted("a", None))


def test_prometheus_metrics_is_a_failover_listener():
    metrics = PrometheusMetrics(registry=prometheus_client.CollectorRegistry())
    assert isinstance(metrics, FailoverListener)


def test_importing_the_package_never_imports_prometheus_client():
    code = (
        "import sys, pipecat_tts_failover, pipecat_tts_failover.metrics,"
        " pipecat_tts_failover.alerts;"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client imported';"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules), 'otel imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_prometheus_client_construction_names_the_extra():
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from pipecat_tts_failover.metrics import PrometheusMetrics\n"
        "try:\n"
        "    PrometheusMetrics()\n"
        "except ImportError as e:\n"
        "    assert 'pip install \"pipecat-tts-failover[metrics]\"' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_opentelemetry_metrics_record_the_same_things():
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from pipecat_tts_failover.metrics import OpenTelemetryMetrics

    reader = InMemoryMetricReader()
    metrics = OpenTelemetryMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    for event in EVENTS:
        metrics.on_event(event)

    points = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, tuple(sorted(point.attributes.items())))
                    points[key] = point
    spoken = ("tts_failover.sentences", (("outcome", "spoken"), ("provider", "cartesia")))
    assert points[spoken].value == 2
    assert points[("tts_failover.provider_up", (("provider", "cartesia"),))].value == 0
    assert points[("tts_failover.provider_up", (("provider", "elevenlabs"),))].value == 1
    gap = points[("tts_failover.failover_gap", ())]
    assert gap.count == 2 and gap.sum == pytest.approx(1.25)
    assert tuple(gap.explicit_bounds)[:3] == (0.01, 0.025, 0.05)
    assert points[("tts_failover.probes", (("provider", "cartesia"), ("result", "ok")))].value == 1


def test_opentelemetry_import_hint_names_the_extra():
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from pipecat_tts_failover.metrics import OpenTelemetryMetrics\n"
        "try:\n"
        "    OpenTelemetryMetrics()\n"
        "except ImportError as e:\n"
        "    assert 'pip install \"pipecat-tts-failover[otel]\"' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_metrics_built_per_call_share_one_set_of_collectors():
    registry = prometheus_client.CollectorRegistry()
    first = PrometheusMetrics(registry=registry)
    second = PrometheusMetrics(registry=registry)
    other = PrometheusMetrics(registry=registry, namespace="bot")
    for metrics in (first, second, other):
        metrics.on_event(SentenceAttempted("cartesia", None))

    text = prometheus_client.generate_latest(registry).decode()
    assert 'tts_failover_sentences_total{outcome="spoken",provider="cartesia"} 2.0' in text
    assert 'bot_sentences_total{outcome="spoken",provider="cartesia"} 1.0' in text
    # Another registry starts from zero.
    assert scrape(EVENTS[:1]).count("sentences_total{") == 1


def test_metrics_namespace_is_checked():
    with pytest.raises(TypeError, match="namespace"):
        PrometheusMetrics(registry=prometheus_client.CollectorRegistry(), namespace=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        PrometheusMetrics(registry=prometheus_client.CollectorRegistry(), namespace="")


async def test_three_calls_each_with_its_own_metrics_add_up_in_one_exposition():
    """As a bot builds its pipeline per call: ``metrics=PrometheusMetrics()`` every time."""
    registry = prometheus_client.REGISTRY  # what PrometheusMetrics() uses
    sample = registry.get_sample_value

    def spoken(provider: str) -> float:
        labels = {"provider": provider, "outcome": "spoken"}
        return sample("tts_failover_sentences_total", labels) or 0.0

    def failovers() -> float:
        labels = {"from_provider": "per-call-a", "to_provider": "per-call-b", "reason": "error"}
        return sample("tts_failover_failovers_total", labels) or 0.0

    before = spoken("per-call-a"), spoken("per-call-b"), failovers()

    async def call(primary_fails: bool):
        tts = FailoverTTSService(
            services={
                "per-call-a": ScriptedTTSService(
                    provider_index=0, faults=plan({0: "error"} if primary_fails else {})
                ),
                "per-call-b": ScriptedTTSService(provider_index=1),
            },
            store=InMemoryHealthStore(),
            first_audio_timeout=0.5,
            metrics=PrometheusMetrics(),
        )
        async with PipelineHarness(tts) as h:
            for i, text in enumerate(["Hello there caller.", "Your order shipped."]):
                await h.send(TTSSpeakFrame(text))
                await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i)

    await asyncio.gather(call(False), call(True), call(False))

    after = spoken("per-call-a"), spoken("per-call-b"), failovers()
    # Two healthy calls on a; the third fails over to b and stays there.
    assert [a - b for a, b in zip(after, before)] == [4.0, 2.0, 1.0]
    text = prometheus_client.generate_latest(registry).decode()
    families = [
        f.name for f in text_string_to_metric_families(text) if f.name.startswith("tts_failover_")
    ]
    assert sorted(families) == sorted(set(families))  # each metric once
    assert {"tts_failover_sentences", "tts_failover_failovers"} <= set(families)
