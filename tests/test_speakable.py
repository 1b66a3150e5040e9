import pytest
from pipecat.utils.text.alnum_utils import has_alnum as pipecat_has_alnum

from pipecat_tts_failover.speakable import has_alnum

TEXTS = [
    "",
    " ",
    "...",
    ":)",
    "Hello, world.",
    "3",
    "½",
    "٣",
    "é",
    "ナ",
    "한국어",
    "🙂🙂",
    "_",
    "__ --",
    "<break time='1s'/>",
    "<spell>4111</spell>",
    "5 < 10",
    "<3",
    "a_b",
    "\u0301",
    "Ⅻ",
    "—’“”",
]


@pytest.mark.parametrize("text", TEXTS)
def test_has_alnum_answers_as_pipecat_does(text):
    assert has_alnum(text) is pipecat_has_alnum(text)


def test_has_alnum_answers_as_pipecat_does_for_every_character():
    # Every code point of the Basic Multilingual Plane, alone and inside markup.
    for code in range(0x10000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue
        assert has_alnum(char) is pipecat_has_alnum(char), hex(code)
        marked = f"<say-as>{char}</say-as>"
        assert has_alnum(marked) is pipecat_has_alnum(marked), hex(code)
