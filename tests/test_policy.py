"""CallPolicy: provider choice, threshold and stickiness, without a pipeline."""

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.policy import CallPolicy
from pipecat_tts_failover.store.base import ProviderHealth

IDS = ("a", "b", "c")
DOWN = ProviderHealth("a", down_until=2000.0, reason=FailureReason.STALLED, since=1000.0)


def test_call_starts_on_first_provider_not_marked_down():
    assert CallPolicy(IDS, 1).call_provider == "a"
    policy = CallPolicy(IDS, 1, {"a": DOWN})
    assert policy.call_provider == "b"
    assert policy.order_for_sentence() == ["b", "c", "a"]  # a only as a last resort


def test_every_provider_down_starts_on_the_preferred_one():
    health = {pid: ProviderHealth(pid, down_until=2000.0) for pid in IDS}
    assert CallPolicy(IDS, 1, health).call_provider == "a"


def test_unusable_services_are_left_out():
    assert CallPolicy(IDS, 1).order_for_sentence(unusable=["b"]) == ["a", "c"]


def test_failures_below_threshold_keep_the_call_on_its_provider():
    policy = CallPolicy(IDS, 3)
    for _ in range(2):
        outcome = policy.sentence_done([("a", FailureReason.ERROR)], spoken_by="b")
        assert outcome.left == () and outcome.moved_to is None
        assert policy.order_for_sentence() == ["a", "b", "c"]
    outcome = policy.sentence_done([("a", FailureReason.ERROR)], spoken_by="b")
    assert outcome.left == (("a", FailureReason.ERROR),)
    assert (outcome.moved_from, outcome.moved_to) == ("a", "b")
    assert policy.order_for_sentence() == ["b", "c", "a"]


def test_a_spoken_sentence_resets_the_count():
    policy = CallPolicy(IDS, 2)
    policy.sentence_done([("a", FailureReason.ERROR)], spoken_by="b")
    policy.sentence_done([], spoken_by="a")
    outcome = policy.sentence_done([("a", FailureReason.ERROR)], spoken_by="b")
    assert outcome.left == () and policy.call_provider == "a"


def test_permanent_failure_moves_at_once():
    policy = CallPolicy(IDS, 10)
    outcome = policy.sentence_done([("a", FailureReason.PERMANENT_ERROR)], spoken_by="b")
    assert outcome.left == (("a", FailureReason.PERMANENT_ERROR),)
    assert policy.call_provider == "b"


def test_call_moves_to_the_provider_that_spoke_and_stays():
    policy = CallPolicy(IDS, 1)
    outcome = policy.sentence_done(
        [("a", FailureReason.NO_FIRST_AUDIO), ("b", FailureReason.STALLED)], spoken_by="c"
    )
    assert [pid for pid, _ in outcome.left] == ["a", "b"]
    assert policy.call_provider == "c"
    # No flip-flop: a later sentence spoken fine keeps the call where it is.
    assert policy.sentence_done([], spoken_by="c").moved_to is None
    assert policy.order_for_sentence() == ["c", "a", "b"]


def test_all_failing_does_not_move_the_call_without_a_better_provider():
    policy = CallPolicy(("a", "b"), 1)
    outcome = policy.sentence_done(
        [("a", FailureReason.ERROR), ("b", FailureReason.ERROR)], spoken_by=None
    )
    assert outcome.moved_to is None
    assert policy.call_provider == "a"
    # Both are down for this call now, and the next sentence still tries both.
    assert policy.order_for_sentence() == ["a", "b"]


def test_pinned_provider_starts_every_call():
    from pipecat_tts_failover.store.base import Controls

    policy = CallPolicy(IDS, 1, {"b": ProviderHealth("b", down_until=2000.0)}, Controls(pinned="b"))
    assert policy.call_provider == "b"


def test_kill_switch_keeps_one_provider_and_marks_nothing_down():
    from pipecat_tts_failover.store.base import Controls

    policy = CallPolicy(IDS, 1, {"a": DOWN}, Controls(failover_enabled=False))
    assert policy.call_provider == "a"
    assert policy.order_for_sentence() == ["a"]
    assert policy.sentence_done([("a", FailureReason.ERROR)], spoken_by=None).left == ()


def test_canary_call_tries_a_provider_marked_down():
    assert CallPolicy(IDS, 1, {"a": DOWN}, canary="a").call_provider == "a"


def test_refresh_returns_to_a_recovered_primary_only_after_the_store_saw_it_down():
    policy = CallPolicy(IDS, 1)
    policy.sentence_done([("a", FailureReason.ERROR)], spoken_by="b")
    assert policy.call_provider == "b"
    # The store has not recorded the mark-down yet: that is no recovery.
    assert policy.refresh({"a": ProviderHealth("a")}) is None
    assert policy.refresh({"a": DOWN}) is None
    assert policy.refresh({"a": ProviderHealth("a")}) == ("b", "a")
    assert policy.call_provider == "a" and policy.order_for_sentence()[0] == "a"


def test_refresh_returns_once_the_calls_own_mark_down_landed_and_was_cleared():
    policy = CallPolicy(IDS, 1)
    policy.sentence_done([("a", FailureReason.ERROR)], spoken_by="b")
    policy.saw_down("a")  # the write reached the store...
    # ...and a probe marked it up before any sentence read it down.
    assert policy.refresh({"a": ProviderHealth("a")}) == ("b", "a")
