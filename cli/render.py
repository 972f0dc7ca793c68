"""Terminal output: streamed text (one or many choices), JSON lines, usage, errors, progress.

Text goes to stdout, everything about the text (usage, notes, errors, progress) to stderr, so
that ``tokenrelay generate ... > story.txt`` captures only the generation.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TextIO

from schemas.errors import (
    GenerationFailed,
    RelayConnectionError,
    RequestNotFound,
    StreamTimeout,
    TokenRelayError,
    ValidationError,
)
from schemas.records import Record, Usage

EXIT_OK = 0
EXIT_FAILED = 1  # the request failed, or the stream could not be read
EXIT_USAGE = 2  # a bad argument or config value, or no record within --timeout
EXIT_CONNECTION = 3  # Redis or the broker cannot be reached
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


def use_color(stream: TextIO) -> bool:
    """ANSI only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def dim(text: str, stream: TextIO) -> str:
    return f"\x1b[2m{text}\x1b[0m" if use_color(stream) else text


def bold(text: str, stream: TextIO) -> str:
    return f"\x1b[1m{text}\x1b[0m" if use_color(stream) else text


def note(message: str) -> None:
    """A side remark on stderr (never mixed into the generated text on stdout)."""
    print(message, file=sys.stderr, flush=True)


def report_error(exc: BaseException) -> int:
    """Print ``error: ...`` on stderr and return the exit code for that kind of failure."""
    if isinstance(exc, ValidationError):
        note(f"error: {exc.field}: {exc.message}")
        return EXIT_USAGE
    if isinstance(exc, StreamTimeout):
        note(f"error: {exc} (is a worker running on this queue?)")
        return EXIT_USAGE
    if isinstance(exc, RelayConnectionError):
        note(f"error: {exc}")
        return EXIT_CONNECTION
    if isinstance(exc, RequestNotFound):
        note(f"error: request {exc.request_id} not found (unknown id, or its keys expired)")
        return EXIT_FAILED
    if isinstance(exc, GenerationFailed):
        note(f"error: {exc}")
        return EXIT_FAILED
    if isinstance(exc, TokenRelayError):
        note(f"error: {exc}")
        return EXIT_FAILED
    raise exc


# -- usage ---------------------------------------------------------------------------------


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def usage_line(usage: Usage, finish_reasons: Sequence[str | None]) -> str:
    """One line: tokens, time to first token, decode speed, total time, finish reason(s)."""
    rate = "-" if usage.decode_tokens_per_s is None else f"{usage.decode_tokens_per_s:.1f} tok/s"
    finish = ",".join(r or "?" for r in finish_reasons) or "?"
    return (
        f"[{usage.completion_tokens} tokens ({usage.prompt_tokens} prompt) · ttft {_secs(usage.ttft_s)}"
        f" · decode {rate} · total {_secs(usage.e2e_s)} · finish {finish}]"
    )


# -- records -------------------------------------------------------------------------------


# Characters that JSON leaves raw but that line splitters (Python's str.splitlines, JavaScript)
# treat as line breaks: escaped so that one record is always exactly one line.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def record_json(record: Record) -> str:
    """All record fields plus the resume cursor, nested objects kept nested, on one line.

    Text stays readable (no \\uXXXX for every non-ASCII character)."""
    data: dict[str, Any] = record.to_wire()
    data["entry_id"] = record.entry_id
    return json.dumps(data, ensure_ascii=False).translate(_LINE_BREAKS)


class JsonRenderer:
    """``--json``: one JSON object per record per line, flushed at once (pipe-friendly)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.finish_reasons: dict[int, str | None] = {}

    def add(self, record: Record) -> None:
        self.out.write(record_json(record) + "\n")
        self.out.flush()
        if record.finish_reason is not None:
            self.finish_reasons[record.index] = record.finish_reason
        if record.usage is not None:
            reasons = [self.finish_reasons[i] for i in sorted(self.finish_reasons)]
            note(dim(usage_line(record.usage, reasons), sys.stderr))

    def close(self) -> None:
        pass


class TextRenderer:
    """Plain text as it arrives.

    With one choice the text streams as is.  With several, choice 0 streams live under a
    ``[0]`` label and every other choice is held back and printed as a labelled block once it
    and choice 0 have finished: interleaving tokens of several choices on one terminal line
    would be unreadable.
    """

    def __init__(self, out: TextIO | None = None, prefix: str = "", n: int | None = None) -> None:
        self.out = out or sys.stdout
        self.prefix = prefix  # e.g. "assistant: ", written before the first text
        self._started = False
        self._at_line_start = True
        self._held: dict[int, list[str]] = {}
        self._finished: dict[int, str] = {}
        self._printed: set[int] = set()
        # ``tail`` does not know n: there a choice > 0 is discovered when its first record comes.
        self._multi = n is not None and n > 1

    @property
    def finish_reasons(self) -> list[str | None]:
        count = max([*self._finished, *self._held, 0]) + 1
        return [self._finished.get(i) for i in range(count)]

    def add(self, record: Record) -> None:
        self._multi = self._multi or record.index > 0
        if record.index == 0:
            self._write_live(record.text)
        else:
            self._held.setdefault(record.index, []).append(record.text)
        if record.finish_reason is not None:
            self._finished[record.index] = record.finish_reason
            self._flush_finished()
        if record.usage is not None:
            self.close()
            note(dim(usage_line(record.usage, self.finish_reasons), sys.stderr))

    def close(self) -> None:
        """End the live line and print whatever is still held (a failed or cut-off request)."""
        self._end_line()
        for index in sorted(self._held):
            if index not in self._printed:
                self._print_block(index)

    def _write_live(self, text: str) -> None:
        if not self._started:
            self._started = True
            self._write(self.prefix + (self._label(0) if self._multi else ""))
        if text:
            self._write(text)

    def _flush_finished(self) -> None:
        # Blocks wait for choice 0, which owns the live line, then come out in index order.
        if 0 not in self._finished:
            return
        for index in sorted(self._held):
            if index in self._finished and index not in self._printed:
                self._end_line()
                self._print_block(index)

    def _print_block(self, index: int) -> None:
        self._printed.add(index)
        self._write(self._label(index) + "".join(self._held.get(index, [])))
        self._end_line()

    def _label(self, index: int) -> str:
        return bold(f"[{index}] ", self.out)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()  # per delta: the point is to see tokens as they come
        if text:
            self._at_line_start = text.endswith("\n")

    def _end_line(self) -> None:
        if (self._started or self._printed) and not self._at_line_start:
            self._write("\n")


def show_conversation(messages: Sequence[dict[str, str]], out: TextIO | None = None) -> str:
    """Print the chat turns dimmed; returns the prefix for the reply ("assistant: ")."""
    out = out or sys.stdout
    for message in messages:
        out.write(dim(f"{message['role']}: {message['content']}", out) + "\n")
    out.flush()
    return dim("assistant: ", out)


# -- progress ------------------------------------------------------------------------------


class Progress:
    """An elapsed-seconds line on stderr ("loading model… 12s") while something slow runs.

    On a terminal a thread redraws the line in place every tenth of a second, so it keeps
    ticking through calls that block for a long time (a first-run model conversion).
    Elsewhere (a log, a test) each phase prints once when it starts and once when it ends.
    """

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._label = ""
        self._started = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def phase(self, label: str, done: str | None = None) -> Iterator[None]:
        """Show ``label… Ns`` until the block ends; then ``done (N.Ns)`` on its own line."""
        self._label, self._started = label, time.monotonic()
        if self.live:
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._thread.start()
        else:
            self._print(f"{label}…\n")
        try:
            yield
        finally:
            self._halt()
        self._print(f"{done or label} ({time.monotonic() - self._started:.1f}s)\n")

    def message(self, text: str) -> None:
        """A remark from inside a phase (e.g. "converting … (first run only)")."""
        with self._lock:
            self._clear()
            self.stream.write(dim(text, self.stream) + "\n")
            self.stream.flush()

    def _tick(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - self._started
            with self._lock:
                self._clear()
                self.stream.write(f"{self.FRAMES[frame % len(self.FRAMES)]} {self._label}… {elapsed:.0f}s")
                self.stream.flush()
            frame += 1

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            with self._lock:
                self._clear()

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[2K")

    def _print(self, text: str) -> None:
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._halt()
