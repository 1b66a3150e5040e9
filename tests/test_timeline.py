"""WordTimeline: which words of a sentence the audio received shows were said."""

from pipecat_tts_failover.timeline import HEARD_SHARE, TYPICAL_SECONDS_PER_CHAR, WordTimeline

MS = 1_000_000  # nanoseconds in a millisecond, the unit of pts


def test_the_first_word_is_judged_at_a_typical_rate():
    timeline = WordTimeline("Thanks for calling")
    timeline.word_started(0, pts=5_000 * MS, arrived_at=0.0)
    needed = HEARD_SHARE * len("Thanks") * TYPICAL_SECONDS_PER_CHAR
    timeline.add_audio(needed - 0.01)
    assert not timeline.current_said
    timeline.add_audio(0.02)
    assert timeline.current_said


def test_later_words_are_judged_at_the_rate_of_the_words_before_them():
    # A fast speaker: 30 ms a character. "Thanks " is 7 characters, so "for"
    # starts 210 ms in and needs 0.75 x 3 x 30 ms of audio after that.
    timeline = WordTimeline("Thanks for calling")
    timeline.word_started(0, pts=1_000 * MS, arrived_at=0.05)
    timeline.word_started(1, pts=1_210 * MS, arrived_at=0.3)
    timeline.add_audio(0.05 + 0.21 + 0.0675 - 0.005)
    assert not timeline.current_said
    timeline.add_audio(0.01)
    assert timeline.current_said
    assert timeline.current_index == 1


def test_words_whose_text_never_came_count_once_the_audio_covers_them():
    timeline = WordTimeline("Acme support today.")
    timeline.word_started(0, pts=0, arrived_at=0.0)
    timeline.word_started(1, pts=300 * MS, arrived_at=0.3)  # 60 ms a character
    timeline.add_audio(0.3 + 0.48 + 0.06 + 0.2)  # "support" and part of "today."
    assert timeline.said_after_current() == []
    timeline.add_audio(0.2)
    assert timeline.said_after_current() == ["today."]


def test_nothing_started_nothing_said():
    timeline = WordTimeline("Hello there")
    timeline.add_audio(5.0)
    assert timeline.current_index is None
    assert not timeline.current_said
    assert timeline.said_after_current() == []
