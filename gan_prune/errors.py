"""The one exception type the CLI turns into a single line and a non-zero exit, and how text read from files
is made safe to print in that line."""
from __future__ import annotations

import reprlib


class GanPruneError(Exception):
    """A problem the user can fix: bad input, a missing file, a refused pickle, an impossible request.

    The message is one line saying what is wrong and what to do. The CLI prints it without a traceback
    (unless --debug) and exits with `exit_code`.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# ------------------------------------------------------------------------------------------------------------
# Text that came from a file

_UNTRUSTED_TEXT_LIMIT = 200


def untrusted_text(text: str, limit: int | None = _UNTRUSTED_TEXT_LIMIT) -> str:
    """`text` (read from a file, so possibly hostile) made safe to print in a one-line message.

    Characters that are not printable (newlines, carriage returns, escape sequences, bidi overrides, line
    separators) are written as Python escapes, so a name cannot draw on the terminal or fake extra lines;
    text longer than `limit` characters is cut short with '...'.
    """
    if not isinstance(text, str):
        text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:max(limit - 3, 0)] + '...'
    if text.isprintable():
        return text
    return ''.join(char if char.isprintable() else _escape_char(char) for char in text)


def untrusted_repr(value: object, limit: int = _UNTRUSTED_TEXT_LIMIT) -> str:
    """A short, printable repr of a value read from a file: strings quoted, containers abbreviated.

    reprlib bounds both the nesting and the length, so a deep or huge value costs little to describe; objects
    of other types than the builtin ones appear as <TypeName>.
    """
    shortener = _Shortener()
    shortener.maxstring = shortener.maxother = limit
    shortener.maxlevel = 3
    try:
        text = shortener.repr(value)
    except Exception:  # pylint: disable=broad-except
        text = f'<{type(value).__name__}>'
    return untrusted_text(text, limit)


class _Shortener(reprlib.Repr):
    """reprlib with every object of a non-builtin type shown as <TypeName>: its own __repr__ is never run
    (a tensor's is long, multi-line and slow)."""

    _PLAIN = (int, float, bool, complex, bytes, bytearray, type(None))

    def repr_instance(self, x: object, level: int) -> str:
        if type(x) in self._PLAIN:
            return super().repr_instance(x, level)
        return f'<{type(x).__name__}>'


def _escape_char(char: str) -> str:
    code = ord(char)
    if char in '\n\r\t':
        return {'\n': '\\n', '\r': '\\r', '\t': '\\t'}[char]
    if code < 0x100:
        return f'\\x{code:02x}'
    if code < 0x10000:
        return f'\\u{code:04x}'
    return f'\\U{code:08x}'
