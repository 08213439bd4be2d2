"""Minimal W3C trace context for the Python example, by hand: Debian has no
OpenTelemetry package for Python and PyPI is not reachable here.

    with span("create task"):            # a span, current for this context
        emit(session, "task_event", {...})  # stores its traceparent

Each span is exported on exit as OTLP/HTTP JSON when
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set,
under OTEL_SERVICE_NAME, so a trace viewer shows the producer's span and,
linked to it, outboxd's "process <topic>" span. With opentelemetry-api
installed, use its propagator instead: outboxd.set_traceparent_func() takes
any function returning the current traceparent.
"""
import contextvars
import json
import os
import secrets
import sys
import time
import urllib.request

_current = contextvars.ContextVar("outboxd_example_span", default=None)


class Span:
    def __init__(self, name):
        parent = _current.get()
        self.name = name
        self.trace_id = parent.trace_id if parent else secrets.token_hex(16)
        self.span_id = secrets.token_hex(8)
        self.parent_id = parent.span_id if parent else ""

    @property
    def traceparent(self):
        return f"00-{self.trace_id}-{self.span_id}-01"

    def __enter__(self):
        self.start = time.time_ns()
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.end = time.time_ns()
        _current.reset(self._token)
        _export(self, exc)
        return False


def span(name):
    return Span(name)


def current_traceparent():
    s = _current.get()
    return s.traceparent if s else None


def _endpoint():
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return base.rstrip("/") + "/v1/traces" if base else None


def _export(s, exc):
    url = _endpoint()
    if not url:
        return
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {
            "stringValue": os.environ.get("OTEL_SERVICE_NAME", "python-producer")}}]},
        "scopeSpans": [{"scope": {"name": "outboxd-python-example"}, "spans": [{
            "traceId": s.trace_id, "spanId": s.span_id, "parentSpanId": s.parent_id, "name": s.name,
            "kind": 4,  # PRODUCER
            "startTimeUnixNano": str(s.start), "endTimeUnixNano": str(s.end),
            "status": {"code": 2, "message": str(exc)} if exc else {},
        }]}],
    }]}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=2).close()
    except OSError as e:  # tracing must never break the app
        print(f"tracing: export to {url} failed: {e}", file=sys.stderr)
