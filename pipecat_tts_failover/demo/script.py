"""The demo call's script, when the primary breaks and is fixed, and the call's timings."""

from dataclasses import dataclass

PRIMARY = "cartesia"
BACKUP = "elevenlabs"


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange: what the caller says (not synthesized), then the bot's sentences.

    Parameters:
        caller: The caller's line before the bot speaks, or None.
        bot: The bot's sentences, sent to TTS together, as an LLM reply arrives.
    """

    caller: str | None
    bot: tuple[str, ...]


SCRIPT: tuple[Turn, ...] = (
    Turn(
        None,
        (
            "Thanks for calling Northwind Internet, this is Ava.",
            "I'm sorry to hear your connection keeps dropping.",
        ),
    ),
    Turn(
        "It cuts out every evening.",
        (
            "Let me run a line test on your modem.",
            "The test shows a weak signal outside your home.",
            "That usually means a damaged cable in the street.",
        ),
    ),
    Turn(
        "Can someone fix it?",
        (
            "Yes, I can send a technician to repair it.",
            "The first free slot is Thursday morning.",
        ),
    ),
    Turn(
        "Thursday works.",
        (
            "Great, you're booked for Thursday between eight and noon.",
            "You'll get a text an hour before they arrive.",
            "Is there anything else I can help with today?",
        ),
    ),
)

# The primary breaks while the caller speaks before this turn...
BREAK_BEFORE_TURN = 1
# ...and is fixed while the caller speaks before this one.
FIX_BEFORE_TURN = 2


def sentences(script: tuple[Turn, ...] = SCRIPT) -> list[str]:
    """Every bot sentence of the script, in order."""
    return [text for turn in script for text in turn.bot]


# Wall-clock floors of the deadlines when the call runs faster than real time,
# so a busy machine is not mistaken for a failing provider.
_MIN_DEADLINE_WALL = 0.3
_MIN_STOP_FRAME_WALL = 0.5
_MIN_GIVE_UP_WALL = 1.0


@dataclass(frozen=True, slots=True)
class Timing:
    """The call's durations in seconds of the call, and ``speed`` to run it faster.

    With ``speed`` above 1 the emulators stream faster and every duration here
    is divided by it, so the call looks the same, only sooner: the timeline
    multiplies measured times back by ``speed``. The deadlines keep a floor of
    wall-clock time (the ``*_wall`` properties), so at high speeds a failover
    shows a little more dead air than at real time.

    Parameters:
        speed: How many times faster than real time the whole call runs.
        first_audio_timeout: FailoverTTSService's deadline for first audio.
        stall_timeout: FailoverTTSService's deadline for audio that stops.
        cooldown: How long a failed provider stays marked down (then probed).
        probe_backoff: Wait after a first failed probe.
        probe_backoff_max: Longest wait between probes.
        stop_frame_timeout: How long pipecat's services wait for more audio
            before closing a sentence's context.
        caller_speaks: How long each caller line lasts.
        give_up: A turn with no new frame for this long is over: a sentence
            still missing by then is lost. Never less than a second of wall
            time, so a busy machine does not end a turn early.
        ms_per_char: How long the emulators speak each character.
    """

    speed: float = 1.0
    first_audio_timeout: float = 1.0
    stall_timeout: float = 1.0
    cooldown: float = 3.0
    probe_backoff: float = 1.0
    probe_backoff_max: float = 2.0
    stop_frame_timeout: float = 1.5
    caller_speaks: float = 1.0
    give_up: float = 2.5
    ms_per_char: float = 60.0

    def wall(self, seconds: float) -> float:
        """Wall-clock seconds for ``seconds`` of the call."""
        return seconds / self.speed

    @property
    def first_audio_wall(self) -> float:
        """FailoverTTSService's ``first_audio_timeout``, in wall-clock seconds."""
        return max(self.wall(self.first_audio_timeout), _MIN_DEADLINE_WALL)

    @property
    def stall_wall(self) -> float:
        """FailoverTTSService's ``stall_timeout``, in wall-clock seconds."""
        return max(self.wall(self.stall_timeout), _MIN_DEADLINE_WALL)

    @property
    def stop_frame_wall(self) -> float:
        """pipecat's ``stop_frame_timeout_s``, in wall-clock seconds."""
        return max(self.wall(self.stop_frame_timeout), _MIN_STOP_FRAME_WALL)

    @property
    def give_up_wall(self) -> float:
        """Wall-clock seconds a turn may go without a frame before the call gives up on it."""
        return max(self.wall(self.give_up), _MIN_GIVE_UP_WALL)

    def expected(self, text: str) -> float:
        """Seconds of audio the emulators speak ``text`` in."""
        return len(text) * self.ms_per_char / 1000
