"""Whether text has anything to say: pipecat's rule, without its per-character work."""

import re

from pipecat.utils.text.markup_utils import strip_complete_markup

# A letter or digit: a word character that is not the underscore. Python's
# ``\w`` is ``str.isalnum()`` plus ``_``, so this matches exactly what
# pipecat's ``alnum_only`` keeps.
_ALNUM = re.compile(r"[^\W_]")


def has_alnum(text: str) -> bool:
    """Whether ``text`` holds a letter or digit once complete markup is stripped.

    The same answer as pipecat's ``has_alnum`` (its rule for text with
    something to say), which folds every character's accents and case to
    build a string only to test it for emptiness; this is one regex search.
    """
    return _ALNUM.search(strip_complete_markup(text)) is not None
