"""app.tracing without a collector: off it does nothing; on, records and carriers hold the trace.

Decided: with OTEL_EXPORTER_OTLP_ENDPOINT unset a log record has no `trace_id` key at all
(records are as they were); with it set every record has one, null outside a trace.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from app import logs, tracing


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def configured() -> io.StringIO:
    buffer = io.StringIO()
    saved, sys.stderr = sys.stderr, buffer
    try:
        logs.configure("INFO", json=True)
    finally:
        sys.stderr = saved
    return buffer


def records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.fixture
def active(monkeypatch: pytest.MonkeyPatch) -> trace.Tracer:
    """Tracing as set up, but on a provider of the test's own (the global one stays unset)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(tracing, "ACTIVE", True)
    return TracerProvider().get_tracer("test")


def test_off_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing.setup("test") is False
    assert tracing.ACTIVE is False
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert tracing.carrier() is None
    assert tracing.trace_id() is None
    with (
        tracing.span("x") as span,
        tracing.attached({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}),
    ):
        assert span is None
        assert tracing.trace_id() is None
    out = configured()
    structlog.get_logger("t").warning("hello")
    logging.getLogger("t").warning("stdlib")
    assert [r.get("trace_id", "absent") for r in records(out)] == ["absent", "absent"]


def test_on_every_record_carries_the_trace_id(active: trace.Tracer) -> None:
    out = configured()
    log = structlog.get_logger("t")
    log.warning("outside")
    with active.start_as_current_span("job") as span:
        log.warning("inside")
        logging.getLogger("t").warning("stdlib inside")
        expected = format(span.get_span_context().trace_id, "032x")
        assert tracing.trace_id() == expected
    got = records(out)
    assert [r["trace_id"] for r in got] == [None, expected, expected]


def test_a_carrier_continues_the_trace_elsewhere(active: trace.Tracer) -> None:
    with active.start_as_current_span("task") as span:
        headers = tracing.carrier()
        trace_id = span.get_span_context().trace_id
    assert headers is not None and set(headers) == {"traceparent"}
    assert tracing.trace_id() is None
    with tracing.attached(headers):  # as the job child does
        with active.start_as_current_span("job run") as child:
            assert child.get_span_context().trace_id == trace_id
            parent = getattr(child, "parent", None)  # the SDK's span has it; the API's does not
            assert parent is not None and parent.span_id == span.get_span_context().span_id
    assert tracing.trace_id() is None


def test_query_strings_leave_the_server_span(active: trace.Tracer) -> None:
    attributes = {
        "http.url": "http://api/v1/iamport/cvs-confirm?token=s3cret",
        "http.target": "/v1/iamport/cvs-confirm?token=s3cret",
        "url.query": "token=s3cret",
        "http.route": "/v1/iamport/cvs-confirm",
    }
    with active.start_as_current_span("POST", attributes=attributes) as span:
        tracing._scrub_server_span(span, {})
        kept = dict(span.attributes or {})  # type: ignore[attr-defined]
    assert not [v for v in kept.values() if "s3cret" in str(v)]
    assert kept["http.url"] == "http://api/v1/iamport/cvs-confirm"
    assert kept["http.route"] == "/v1/iamport/cvs-confirm"
