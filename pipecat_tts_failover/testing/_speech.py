"""Deterministic speech-like audio for text, with the character and word timings behind it.

Every character lasts ``ms_per_char``. Letters, digits, apostrophes and hyphens
are voiced: a few harmonics of a pitch between 110 and 220 Hz chosen from the
word, gliding a little, under a syllable-rate amplitude envelope. Whitespace,
punctuation and symbols (emoji) are silent, which gives the gaps between words;
a word without a letter or digit (``...``, ``:)``, a lone quote) is silent
whole, as real providers answer it. The same text always
gives the same samples, so tests can compare audio across runs.
"""

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["ENCODINGS", "Speech", "bytes_per_sample", "encode", "synthesize", "wav_header"]

_WORD_GROUP = re.compile(r"\s*\S+\s*|\s+")
_VOICED_MARKS = frozenset("'-")
_HARMONICS = (1.0, 0.55, 0.35, 0.22, 0.12)
_AMPLITUDE = 0.3
_SYLLABLE_S = 0.18
_FADE_S = 0.008

#: Raw encodings the emulators can produce, by Cartesia's names.
ENCODINGS = ("pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw")


@dataclass(frozen=True, slots=True)
class Speech:
    """Synthesized audio for one piece of text.

    Attributes:
        text: The text spoken.
        sample_rate: Samples per second.
        samples: Mono float32 samples in [-1, 1].
        char_starts: Start of each character of ``text``, in seconds.
        char_durations: Duration of each character of ``text``, in seconds.
        words: ``(word, start, end)`` for each whitespace-separated word, in
            seconds; ``end`` is the end of its last character.
    """

    text: str
    sample_rate: int
    samples: np.ndarray
    char_starts: tuple[float, ...]
    char_durations: tuple[float, ...]
    words: tuple[tuple[str, float, float], ...]

    @property
    def duration(self) -> float:
        """Length of the audio in seconds."""
        return len(self.samples) / self.sample_rate

    @property
    def char_groups(self) -> tuple[range, ...]:
        """Character index ranges of each word with the whitespace around it.

        They tile the text, so alignment sent a group at a time never splits a word.
        """
        return tuple(range(m.start(), m.end()) for m in _WORD_GROUP.finditer(self.text))

    def sample_at(self, seconds: float) -> int:
        """The sample index at ``seconds`` into the audio."""
        return min(len(self.samples), max(0, round(seconds * self.sample_rate)))


def synthesize(text: str, sample_rate: int, ms_per_char: float = 60.0) -> Speech:
    """Make speech-like audio for ``text``.

    Args:
        text: The text to speak. Empty text gives empty audio.
        sample_rate: Samples per second of the result.
        ms_per_char: How long each character lasts.

    Returns:
        The audio and its timings.
    """
    char_s = ms_per_char / 1000.0
    starts = tuple(i * char_s for i in range(len(text)))
    durations = (char_s,) * len(text)
    samples = np.zeros(round(len(text) * char_s * sample_rate), dtype=np.float32)

    words: list[tuple[str, float, float]] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        j = i
        while j < len(text) and not text[j].isspace():
            j += 1
        word = text[i:j]
        words.append((word, i * char_s, j * char_s))
        _voice_word(samples, text, i, j, char_s, sample_rate)
        i = j
    return Speech(text, sample_rate, samples, starts, durations, tuple(words))


def _voice_word(
    samples: np.ndarray, text: str, start: int, end: int, char_s: float, sample_rate: int
):
    """Write the voiced runs of the word ``text[start:end]`` into ``samples``."""
    if not any(c.isalnum() for c in text[start:end]):
        return
    seed = zlib.crc32(text[start:end].lower().encode("utf-8"))
    pitch = 110.0 + seed % 111
    i = start
    while i < end:
        if _silent(text[i]):
            i += 1
            continue
        j = i
        while j < end and not _silent(text[j]):
            j += 1
        a = round(i * char_s * sample_rate)
        b = min(len(samples), round(j * char_s * sample_rate))
        samples[a:b] = _voiced(b - a, pitch, sample_rate)
        i = j


def _silent(char: str) -> bool:
    return not (char.isalnum() or char in _VOICED_MARKS)


def _voiced(n: int, pitch: float, sample_rate: int) -> np.ndarray:
    """``n`` samples of a harmonic tone gliding around ``pitch``, syllable by syllable."""
    if n <= 0:
        return np.zeros(0, dtype=np.float32)
    t = np.arange(n, dtype=np.float64) / sample_rate
    duration = n / sample_rate
    frequency = pitch * (1.0 + 0.06 * np.sin(2 * math.pi * 1.3 * t) - 0.08 * t / duration)
    phase = 2 * math.pi * np.cumsum(frequency) / sample_rate
    tone = sum(weight * np.sin(h * phase) for h, weight in enumerate(_HARMONICS, start=1))
    tone /= sum(_HARMONICS)
    syllables = max(1, round(duration / _SYLLABLE_S))
    envelope = 0.3 + 0.7 * np.sin(math.pi * syllables * t / duration) ** 2
    fade = np.minimum(1.0, np.minimum(t, duration - t) / _FADE_S)
    return (_AMPLITUDE * tone * envelope * fade).astype(np.float32)


def encode(samples: np.ndarray, encoding: str = "pcm_s16le") -> bytes:
    """Encode float samples as raw audio bytes.

    Args:
        samples: Mono float samples in [-1, 1].
        encoding: One of :data:`ENCODINGS`.

    Returns:
        The encoded bytes.

    Raises:
        ValueError: If the encoding is not supported.
    """
    clipped = np.clip(samples, -1.0, 1.0)
    if encoding == "pcm_s16le":
        return (clipped * 32767).astype("<i2").tobytes()
    if encoding == "pcm_f32le":
        return clipped.astype("<f4").tobytes()
    if encoding == "pcm_mulaw":
        return _mulaw(clipped).tobytes()
    if encoding == "pcm_alaw":
        return _alaw(clipped).tobytes()
    raise ValueError(f"unsupported encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")


def bytes_per_sample(encoding: str) -> int:
    """Bytes one sample takes in ``encoding``."""
    return {"pcm_s16le": 2, "pcm_f32le": 4}.get(encoding, 1)


def wav_header(num_samples: int, sample_rate: int, encoding: str) -> bytes:
    """A 44-byte RIFF/WAVE header for mono audio of known length.

    Args:
        num_samples: Samples that follow the header.
        sample_rate: Samples per second.
        encoding: One of :data:`ENCODINGS`.

    Returns:
        The header.
    """
    width = bytes_per_sample(encoding)
    format_tag = {"pcm_s16le": 1, "pcm_f32le": 3, "pcm_alaw": 6, "pcm_mulaw": 7}[encoding]
    data_size = num_samples * width
    return b"".join(
        [
            b"RIFF",
            (36 + data_size).to_bytes(4, "little"),
            b"WAVEfmt ",
            (16).to_bytes(4, "little"),
            format_tag.to_bytes(2, "little"),
            (1).to_bytes(2, "little"),
            sample_rate.to_bytes(4, "little"),
            (sample_rate * width).to_bytes(4, "little"),
            width.to_bytes(2, "little"),
            (8 * width).to_bytes(2, "little"),
            b"data",
            data_size.to_bytes(4, "little"),
        ]
    )


def _mulaw(x: np.ndarray) -> np.ndarray:
    """G.711 mu-law encode."""
    pcm = np.clip((x * 32767).astype(np.int32), -32635, 32635)
    sign = np.where(pcm < 0, 0x80, 0)
    magnitude = np.abs(pcm) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _alaw(x: np.ndarray) -> np.ndarray:
    """G.711 A-law encode."""
    pcm = np.clip((x * 32767).astype(np.int32), -32767, 32767) >> 3
    sign = np.where(pcm >= 0, 0x80, 0)
    magnitude = np.abs(pcm)
    exponent = np.where(
        magnitude < 32, 0, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4
    )
    exponent = np.clip(exponent, 0, 7)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8)
