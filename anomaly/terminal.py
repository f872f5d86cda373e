"""Text a command prints: control characters escaped (a name in a file from someone else could
move the cursor or forge a line on a terminal), paths quoted so that a suggested command can be
copied as it is.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import unicodedata


def control_characters(text: str, names: bool = False) -> list[str]:
    """The control characters (Unicode category Cc: C0, DEL and C1, newline and tab too) in
    `text`, each once. No path or name needs one, and printed in an error on a terminal
    "\\x1b[2K\\r" erases the line and writes anything in its place: a config.json from someone
    else could make a refusal read as success. `names`: C1 left out where the file system's
    encoding is one of ISO 8859's (a Latin-1 locale decodes the UTF-8 bytes of "É" to "Ã\\x89";
    printed, each is escaped: `printable`)."""
    c1 = not names or len(_name_bytes("\x85")) > 1  # one byte: ISO 8859 file names
    return list(
        dict.fromkeys(
            c for c in text if unicodedata.category(c) == "Cc" and (c1 or not 128 <= ord(c) < 160)
        )
    )


def shell_word(value) -> str:
    """`value` (a path) as one word of a shell command that a message suggests: quoted where
    it holds a space or another character the shell reads (`shlex.quote`), so that the command
    can be copied as it is; with a control character (an escape sequence in a file name would
    act on the terminal) or bytes that are not UTF-8, in bash's $'...' quoting, each written
    as \\xHH."""
    text = str(value)
    if not any(_unprintable(c) for c in text):
        return shlex.quote(text)
    out = []
    for c in text:
        if 0xDC80 <= ord(c) <= 0xDCFF:  # a byte of a name that is not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif _unprintable(c):  # as the file system names it (a Latin-1 locale: one byte)
            out.extend(f"\\x{b:02x}" for b in _name_bytes(c))
        else:
            out.append("\\" + c if c in "\\'" else c)
    return "$'" + "".join(out) + "'"


def _name_bytes(c: str) -> bytes:
    try:
        return os.fsencode(c)
    except UnicodeEncodeError:  # a lone surrogate, or an ASCII locale's non-ASCII
        return c.encode("utf-8", "surrogatepass")


def printable(text: str, mark: str | None = None) -> str:
    """`text` with its control characters (a tab or a new line in a file name, which would
    break `predict`'s tab-separated rows) and the bytes of a name that is not UTF-8 (which
    `print` cannot write) escaped as Python writes them, or each replaced by `mark`."""
    return "".join(
        (mark if mark is not None else repr(c)[1:-1]) if _unprintable(c) else c for c in text
    )


def spreadsheet_cell(text: str) -> str:
    """`text` as a CSV cell that a spreadsheet shows and does not run: one starting as a formula
    does (=, +, -, @, a tab or a carriage return: CSV injection, a file named `=cmd|...`) gets a
    leading apostrophe, as OWASP advises."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def _unprintable(c: str) -> bool:  # C0, DEL and C1 controls (U+009B starts a sequence too)
    return ord(c) < 32 or 127 <= ord(c) <= 159 or 0xD800 <= ord(c) <= 0xDFFF


def visible(message: str) -> str:
    """`message` with each control character but newline and tab written as its escape: a path
    the user typed (or a file name it names) echoed raw could move the cursor or erase the line
    on a terminal, and make a refusal read as something else."""
    for c in control_characters(message):
        if c not in "\n\t":
            message = message.replace(c, repr(c)[1:-1])
    return message


class LogLines:
    """A stream (stderr in a log file, not a terminal) on which whatever follows a progress bar
    starts a new line: tqdm draws, redraws and clears its bars with carriage returns and no new
    line, so in a log a `warning:`, `note:` or `error:` written after a bar closed ended up on the
    bar's line, where `grep '^warning:'` missed it and `grep -v` of the bars removed it. A write
    that starts with a carriage return is a bar's; one after it that starts with neither that
    nor a new line gets a new line first. Everything else is the stream's own. `shared`: the
    state of another `LogLines` on the same file (stdout and stderr in one log, `> log 2>&1`)."""

    def __init__(self, stream, shared: list | None = None) -> None:
        self._stream, self._after_bar = stream, [False] if shared is None else shared

    def write(self, text: str) -> int:
        if text and self._after_bar[0] and not text.startswith(("\r", "\n")):
            self._stream.write("\n")
        if text:
            self._after_bar[0] = text.startswith("\r") and not text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class KeepsGoing:
    """A stream whose reader may go away (`train ... 2>&1 | head`): a write to the closed pipe
    sends the rest of the output to /dev/null instead of raising BrokenPipeError, which stopped
    a training midway without a word; a training's work does not depend on its log's reader."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def _gone(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())  # its buffer's rest goes there too
            os.close(null)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def log_lines(stream, out=None):
    """(`stream`, `out`): stderr as `LogLines` where it is not a terminal (a log file, a pipe),
    and stdout too where it goes to the same file, sharing its state and written line by line
    (else a block of stdout's lines reached the file after stderr's later ones); else as given."""
    if stream is None or is_terminal(stream):
        return stream, out
    err = LogLines(stream)
    shared = (
        isinstance(out, io.TextIOWrapper) and not is_terminal(out) and _file_of(out) is not None
    )
    if not (shared and _file_of(out) == _file_of(stream)):
        # (a notebook's stream shares the kernel's descriptors, not a file with its stderr)
        return err, out
    with contextlib.suppress(AttributeError, ValueError, OSError):
        out.reconfigure(line_buffering=True)
    return err, LogLines(out, err._after_bar)


def is_terminal(stream) -> bool:
    """Whether `stream` writes to a terminal (not a log file, a pipe, a notebook)."""
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())


def _file_of(stream) -> tuple[int, int] | None:
    """(device, inode) of the file a stream writes, or None (no descriptor: a StringIO)."""
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return None
    return info.st_dev, info.st_ino
