"""The one error type for bad input: it names the key, the value and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A config value (or a file it points to) that cannot be used."""

    def __init__(self, key: str, value: Any, allowed: str, hint: str = "") -> None:
        self.key, self.value, self.allowed = key, value, allowed
        msg = f"{key}={value!r} is not valid: {allowed}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """'did you mean X?' for the known name closest to a misspelt one, else ''."""
    close = difflib.get_close_matches(word, [str(k) for k in known], n=1)
    return f"did you mean {close[0]}?" if close else ""
