"""Messages for people: one line that names the problem (logs, API errors, CLI)."""

from __future__ import annotations

from pydantic import ValidationError


def one_line(value: object, limit: int = 300) -> str:
    """``value`` on one line: an exception's text (its type name when it has none), a pydantic
    ValidationError as ``field: problem; …``; whitespace collapsed, cut at ``limit`` characters."""
    if isinstance(value, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in value.errors())
    elif isinstance(value, BaseException):
        text = str(value) or type(value).__name__
    else:
        text = str(value)
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
