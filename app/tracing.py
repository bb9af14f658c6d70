"""OpenTelemetry traces over OTLP/HTTP, when asked for; otherwise nothing at all.

A process traces when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is
set and the `otel` extra is installed: `setup()` then makes its tracer provider, its batch
exporter and the FastAPI, Celery, httpx and psycopg instrumentations. Every other function
here first reads `ACTIVE`, a module global: off, they return at once (no span, no context
capture), which is what keeps the hot paths as fast as without tracing.

Each process sets itself up after it exists: the exporter's thread must be started in the
process that exports (the API in create_app, the worker in worker_init / worker_process_init,
each job child in its initializer). A fork of a traced process (Celery's embedded beat)
keeps tracing: the SDK restarts its export thread in the child.

What goes in a span's attributes never holds a secret: URLs lose their query strings (the
till guard's token travels in one), no header or request body is recorded, SQL statements
carry placeholders, not parameters, and a webhook delivery names only its host.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

import structlog

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

log = structlog.get_logger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
TRACER = "stockout"
# Span attributes that may hold a URL with its query string.
URL_ATTRIBUTES = ("http.url", "url.full", "http.target", "url.query")
# The task names this service sends by name (send_task), from processes that do not define
# them (app.kit.dispatch; not imported: it pulls in Celery).
SENT_BY_NAME = (
    "stockout.cancel_jobs",
    "stockout.sweep",
    "stockout.webhooks.deliver",
    "stockout.webhooks.sweep",
)

ACTIVE = False  # this process exports spans
_pid: int | None = None
_lock = threading.Lock()

Kind = Literal["internal", "client", "producer", "consumer"]


def wanted() -> bool:
    """Whether the environment asks for traces (whether or not the extra is installed)."""
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def setup(service: str) -> bool:
    """Start exporting this process's spans, once; False, having done nothing, when tracing is
    off or the otel extra is missing. `service` is the default service.name
    (OTEL_SERVICE_NAME wins)."""
    global ACTIVE, _pid
    if not wanted():
        return False
    with _lock:
        if _pid is not None:
            return True  # set up here, or inherited by a fork (the SDK restarts its thread)
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            log.warning(
                "tracing_unavailable",
                reason="OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed",
                missing=exc.name,
            )
            return False
        attributes: dict[str, AttributeValue] = {"process.pid": os.getpid()}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = service
        provider = TracerProvider(resource=Resource.create(attributes))
        # Endpoint, headers, timeouts and batching come from the standard OTEL_* variables.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _instrument_libraries()
        _pid = os.getpid()
        ACTIVE = True
    return True


def _instrument_libraries() -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]
    _register_sent_tasks()
    HTTPXClientInstrumentor().instrument(request_hook=_scrub_client_span)
    # Statements only, never their parameters (capture_parameters stays off), no SQL comments.
    PsycopgInstrumentor().instrument(enable_commenter=False, skip_dep_check=True)


def _register_sent_tasks() -> None:
    """Make the task names we send known to the current Celery app.

    The Celery instrumentation starts a publish span before every send, but ends it (and
    restores the context) only for a task it finds in the current app's registry: a send by
    name from the API would leave it open, unexported, as the publisher thread's current span.
    """
    from celery import Task, current_app

    for name in SENT_BY_NAME:
        if name not in current_app.tasks:
            stub = type(f"Sent_{name.replace('.', '_')}", (Task,), {"name": name})
            current_app.tasks.register(stub())


def instrument_app(app: FastAPI) -> None:
    """The FastAPI instrumentation on `app`, when this process traces."""
    if not ACTIVE:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        server_request_hook=_scrub_server_span,
        # Probes and scrapes every few seconds: traces of nothing.
        excluded_urls="/healthz,/readyz,/metrics",
        # The ASGI messages of a request as spans of their own: noise.
        exclude_spans=["receive", "send"],
    )


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _scrub_url_attributes(span: Span) -> None:
    attributes: Mapping[str, Any] = getattr(span, "attributes", None) or {}
    for key in URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and "?" in value:
            span.set_attribute(key, _without_query(value))
        elif key == "url.query" and value:
            span.set_attribute(key, "")


def _scrub_server_span(span: Span, _: Mapping[str, Any]) -> None:
    # The till guard's token comes in the confirm hook's query string.
    if span.is_recording():
        _scrub_url_attributes(span)


def _scrub_client_span(span: Span, _: object) -> None:
    if span.is_recording():
        _scrub_url_attributes(span)


# -- helpers for the service's own code; each is a no-op while ACTIVE is False ---------------


def span(
    name: str, attributes: Mapping[str, AttributeValue] | None = None, kind: Kind = "internal"
) -> AbstractContextManager[Span | None]:
    """A span around a block, current within it; `None` (and no span) when off."""
    if not ACTIVE:
        return nullcontext()
    from opentelemetry import trace

    return trace.get_tracer(TRACER).start_as_current_span(
        name, kind=trace.SpanKind[kind.upper()], attributes=attributes
    )


def annotate(target: Span | None, **attributes: AttributeValue | None) -> None:
    """Set the attributes that are not None on a span from `span()` (no-op on None)."""
    if target is None:
        return
    for key, value in attributes.items():
        if value is not None:
            target.set_attribute(key, value)


def annotate_current(**attributes: AttributeValue | None) -> None:
    """Set the attributes that are not None on the current span (no-op when off)."""
    if not ACTIVE:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        annotate(current, **attributes)


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers, to carry across a queue or a process; None
    when off or outside any trace."""
    if not ACTIVE:
        return None
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


@contextmanager
def attached(headers: Mapping[str, str] | None) -> Iterator[None]:
    """Make the trace context of `carrier()` current within the block (no-op on None)."""
    if headers is None or not ACTIVE:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        context.detach(token)


def trace_id() -> str | None:
    """The current trace's id in hex (32 digits), or None when off or outside a trace."""
    if not ACTIVE:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
