"""The one exception type for expected failures.

Bad input, an invalid configuration, or a corrupt or mismatched artefact raise
``TigerrecError`` (a ``ValueError``) with a message that names the key, file or
value at fault; the command line prints it as one line and exits with code 2.
Any other exception is a bug.
"""

from __future__ import annotations


class TigerrecError(ValueError):
    """An expected failure; the message says what is wrong and where (key, file, line, value)."""


def brief(error: BaseException, limit: int = 300) -> str:
    """``error``'s message on one line, cut to ``limit`` characters: for wrapping library errors
    (torch, safetensors, YAML) whose messages run over many lines."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
