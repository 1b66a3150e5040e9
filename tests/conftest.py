"""Shared fixtures."""

import pytest

from pipecat_tts_failover.store.memory import InMemoryHealthStore


@pytest.fixture
def store() -> InMemoryHealthStore:
    """A fresh in-memory health store per test, so tests don't share provider health."""
    return InMemoryHealthStore()
