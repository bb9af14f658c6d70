"""The logging pieces: whatever reaches a captured stream becomes one JSON record."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, TextIO

import pytest
import structlog

from app import logs


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """configure() writing into a buffer; the root logger and structlog restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    saved_stderr = sys.stderr
    sys.stderr = buffer  # configure() takes the real stream from here
    try:
        logs.configure("INFO", json=True)
    finally:
        sys.stderr = saved_stderr
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def proxy(quiet: float = 0.05) -> logs.StreamToLog:
    return logs.StreamToLog(
        logging.getLogger("stderr"), logging.WARNING, io.StringIO(), quiet=quiet
    )


def wait_for(buffer: io.StringIO, n: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(buffer.getvalue().splitlines()) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # and no more come after
    return records(buffer)


def test_print_of_several_lines_is_one_record(out: io.StringIO) -> None:
    stream = proxy()
    print("a\nb\nc", file=stream)  # two writes: the text, then its newline
    [record] = wait_for(out, 1)
    assert record["event"] == "a\nb\nc"
    assert record["level"] == "warning"


def test_char_by_char_writes_are_one_record(out: io.StringIO) -> None:
    stream = proxy()
    text = "Traceback (most recent call last):\n  File x\n    ^^^^^\nValueError: boom\n"
    for char in text:
        stream.write(char)
    [record] = wait_for(out, 1)
    assert record["event"] == text.rstrip("\n")


def test_flush_ends_a_record_at_once(out: io.StringIO) -> None:
    stream = proxy(quiet=60)
    stream.write("one")
    stream.write(" two\n")
    stream.flush()
    assert [r["event"] for r in records(out)] == ["one two"]


def test_print_exc_is_one_record(out: io.StringIO) -> None:
    stream = proxy()
    try:
        raise ValueError("boom")
    except ValueError:
        traceback.print_exc(file=stream)
    [record] = wait_for(out, 1)
    assert record["event"].startswith("Traceback (most recent call last):\n")
    assert record["event"].endswith("ValueError: boom")


def test_interpreter_traceback_printer_is_one_record(out: io.StringIO) -> None:
    # The C printer behind sys.excepthook writes the ^^^ markers one character at a time.
    stream = proxy(quiet=60)
    saved: TextIO = sys.stderr
    sys.stderr = stream
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            sys.__excepthook__(*sys.exc_info())
    finally:
        sys.stderr = saved
    [record] = records(out)  # it flushes at the end: no wait needed
    assert "Traceback (most recent call last):" in record["event"]
    assert record["event"].endswith("ValueError: boom")


def test_writes_from_many_threads_each_burst_whole(out: io.StringIO) -> None:
    stream = proxy(quiet=60)
    threads = [threading.Thread(target=stream.write, args=(f"part {i}\n",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stream.flush()
    [record] = records(out)
    assert sorted(record["event"].splitlines()) == sorted(f"part {i}" for i in range(20))


def test_a_long_stream_of_writes_is_cut_at_max_age(out: io.StringIO) -> None:
    stream = logs.StreamToLog(
        logging.getLogger("stderr"), logging.WARNING, io.StringIO(), quiet=1.0, max_age=0.2
    )
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        stream.write("x")
        time.sleep(0.01)
    stream.flush()
    got = records(out)
    assert 2 <= len(got) <= 4
    assert all(set(r["event"]) == {"x"} for r in got)


def test_blank_writes_make_no_record(out: io.StringIO) -> None:
    stream = proxy(quiet=60)
    stream.write("\n")
    stream.write("   ")
    stream.flush()
    assert records(out) == []


def test_stdlib_exception_keeps_its_whole_traceback(out: io.StringIO) -> None:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logging.getLogger("celery.worker").exception("Task failed")
    [record] = records(out)
    assert record["event"] == "Task failed"
    assert record["exception"].startswith("Traceback (most recent call last):\n")
    assert record["exception"].endswith("ZeroDivisionError: division by zero")
    assert "exc_info" not in record


def test_uncaught_exceptions_are_one_record_each(out: io.StringIO) -> None:
    try:
        raise KeyError("main")
    except KeyError:
        logs._log_uncaught(*sys.exc_info())

    def boom() -> None:
        raise RuntimeError("in a thread")

    saved = threading.excepthook
    threading.excepthook = logs._log_thread_exception
    try:
        t = threading.Thread(target=boom, name="boomer")
        t.start()
        t.join()
    finally:
        threading.excepthook = saved
    main, thread = records(out)
    assert main["level"] == "critical"
    assert main["exception"].endswith("KeyError: 'main'")
    assert thread["event"] == "uncaught_exception_in_thread boomer"
    assert thread["exception"].endswith("RuntimeError: in a thread")


def test_configure_writes_beneath_a_captured_stream() -> None:
    # Configured while stderr is captured, the handlers still write to the real stream:
    # a record must never be written back into the log it came from.
    real = io.StringIO()
    captured = logs.StreamToLog(logging.getLogger("stderr"), logging.WARNING, real)
    assert logs.real_stream(captured) is real
    assert logs.real_stream(real) is real


def test_captured_stream_reports_the_real_descriptor() -> None:
    real = sys.__stderr__
    assert real is not None
    stream = logs.StreamToLog(logging.getLogger("stderr"), logging.WARNING, real)
    assert stream.fileno() == real.fileno()
    assert stream.writable() and not stream.isatty()


def test_capture_output_makes_both_streams_and_uncaught_exceptions_records(
    out: io.StringIO,
) -> None:
    saved = (sys.stdout, sys.stderr, sys.excepthook, threading.excepthook)
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    try:
        logs.capture_output()
        logs.capture_output()  # twice is once
        assert isinstance(sys.stderr, logs.StreamToLog)
        assert isinstance(sys.stdout, logs.StreamToLog)
        assert not isinstance(sys.stderr.target, logs.StreamToLog)
        assert sys.excepthook is logs._log_uncaught
        assert threading.excepthook is logs._log_thread_exception
        print("to stdout", flush=True)
        print("to\nstderr", file=sys.stderr, flush=True)
    finally:
        sys.stdout, sys.stderr, sys.excepthook, threading.excepthook = saved
    assert [(r["event"], r["level"]) for r in records(out)] == [
        ("to stdout", "warning"),  # as Celery's redirection had it: not lost under WARNING
        ("to\nstderr", "warning"),
    ]
