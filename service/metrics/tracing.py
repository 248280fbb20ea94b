"""OpenTelemetry traces of the request path, off by default and then at no cost: `tracer` is None
and the hot path reads that one module attribute.

On when the standard variables ask for it: `OTEL_TRACES_EXPORTER` (`otlp`, `console`, several
comma-separated) with the exporter's own variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_PROTOCOL` `grpc` (default, port 4317) or `http/protobuf` (4318),
`OTEL_EXPORTER_OTLP_HEADERS`, ...), `OTEL_SERVICE_NAME` (default `coordconv`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `_ARG`, `OTEL_BSP_*` and `OTEL_PROPAGATORS`;
`OTEL_SDK_DISABLED=true` keeps it off. A tracer provider that something else set up already
(`opentelemetry-instrument`, an embedding application) is followed instead. The
SDK and the exporters are the `tracing` extra (`pip install 'coordconv[tracing]'`).

The spans of one inference request (W3C `traceparent` / `tracestate` of the request honoured):

    POST /v2/models/{name}/infer          SERVER (gRPC: inference.GRPCInferenceService/ModelInfer)
    ├── queue              waiting in the model's batcher until a scheduler thread takes it
    ├── execute            its rows' part of a batch until its answer is back; linked to the batch
    └── batch              under the batch's first traced request only; linked to every request
        └── onnxruntime.run    the model (Triton's compute_infer)

The request span's start to its `queue` is reading and decoding the request; the batch's start to
`onnxruntime.run` is gathering its rows (compute_input), and the batch's attributes say how long
handing the answers back took (`coordconv.compute_output_us`), its rows and its requests. Spans
cost the Python SDK tens of microseconds each, so the path has few of them.

A batch serves many requests, each in its own trace: it is recorded once, in the trace of the
first traced request in it (so it is sampled whenever one of its requests is), with a link to
every request (OpenTelemetry's way for batch processing), and each request's `execute` links to
it. A request that is not recorded (OTEL_TRACES_SAMPLER) costs the batcher nothing more. The
batch's spans are made after the fact with their measured times, in the scheduler thread and on
the event loop, so no span crosses a thread and none is open while the batcher's lock is held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, StatusCode, Tracer

from coordconv import __version__

log = logging.getLogger("coordconv.tracing")
SCOPE = "coordconv.service"
ROOT = Context()  # no parent: a new trace

tracer: Tracer | None = None  # None: tracing is off (read on the hot path)
_provider: Any = None
_configured = False


class TracingError(ValueError):
    """The OTEL_* variables ask for something that cannot be done (one line says what)."""


def use(provider: Any) -> Tracer | None:
    """Trace with `provider` (an SDK TracerProvider; None: off). Tests and embedding apps call
    this; the server calls `ensure`."""
    global tracer, _provider, _configured
    _configured = True
    _provider = provider
    tracer = None if provider is None else provider.get_tracer(SCOPE, __version__)
    return tracer


def ensure() -> None:
    """Once per process: configure from the environment (a problem is logged and leaves
    tracing off: traces are never a reason not to serve)."""
    if _configured:
        return
    try:
        configure()
    except TracingError as exc:
        log.error("tracing is off: %s", exc)
        use(None)


def configure(environ: Mapping[str, str] | None = None, set_global: bool = True) -> Tracer | None:
    """Tracing as the OTEL_* variables of `environ` (default: the process's) say; raises
    TracingError. `set_global`: also make the provider OpenTelemetry's global one (unless one is
    set already), so that other instrumentation (FastAPI's, with OPENTELEMETRY) joins it."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return use(None)
    current = trace.get_tracer_provider()
    if hasattr(current, "add_span_processor"):  # an SDK provider set up by someone else
        return use(current)  # (opentelemetry-instrument: it read the same variables)
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    if not names:
        return use(None)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingError(
            "OTEL_TRACES_EXPORTER is set but the OpenTelemetry SDK is not installed "
            "(pip install 'coordconv[tracing]')"
        ) from None
    exporters = [exporter(name, env) for name in names]
    attributes = {"service.version": __version__}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = "coordconv"
    # No exit hook of the SDK's own: its final flush waits up to 30 s on a collector that does
    # not answer; the server flushes within what is left of its drain (`shutdown`).
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    for e in exporters:
        provider.add_span_processor(BatchSpanProcessor(e))
    if set_global:
        trace.set_tracer_provider(provider)
    log.info("tracing: %s", ", ".join(names))
    return use(provider)


def exporter(name: str, env: Mapping[str, str]) -> Any:
    """The span exporter OTEL_TRACES_EXPORTER names; each reads its own OTEL_EXPORTER_* variables
    from the process's environment."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingError(f"OTEL_TRACES_EXPORTER {name!r} is not supported: use otlp or console")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    protocol = protocol.strip()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        else:
            raise TracingError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported: use grpc or "
                "http/protobuf"
            )
    except ImportError:
        raise TracingError(
            f"OTLP over {protocol} needs opentelemetry-exporter-otlp "
            "(pip install 'coordconv[tracing]')"
        ) from None
    return OTLPSpanExporter()


def shutdown(timeout_s: float = 30.0) -> bool:
    """Export what is buffered and stop, within `timeout_s` (a collector that refuses or never
    answers would hold the SDK's exporters for 30 s and more): False, with one line, when what
    was buffered could not be sent in time and is dropped."""
    provider = _provider
    if provider is None or not hasattr(provider, "shutdown"):
        return True
    done = threading.Thread(target=provider.shutdown, name="tracing-shutdown", daemon=True)
    done.start()
    done.join(max(timeout_s, 0.0))
    if done.is_alive():
        log.warning(
            "tracing: the exporter did not finish within %.1f s of the drain; spans not yet "
            "exported are dropped",
            timeout_s,
        )
        return False
    return True


# -- the front doors ----------------------------------------------------------------------------


class _HeaderGetter(Getter[Mapping[bytes, bytes]]):
    """ASGI headers (lower-case bytes) as a propagation carrier."""

    def get(self, carrier: Mapping[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode("latin-1"))
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: Mapping[bytes, bytes]) -> list[str]:
        return [k.decode("latin-1") for k in carrier]


class _MetadataGetter(Getter[Iterable[tuple[str, Any]]]):
    """gRPC invocation metadata as a propagation carrier."""

    def get(self, carrier: Iterable[tuple[str, Any]], key: str) -> list[str] | None:
        found = [v for k, v in carrier if k.lower() == key and isinstance(v, str)]
        return found or None

    def keys(self, carrier: Iterable[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


HEADERS = _HeaderGetter()
METADATA = _MetadataGetter()


def start_request(
    t: Tracer, name: str, carrier: Any, getter: Getter[Any], attributes: dict[str, Any]
) -> tuple[Span | None, object]:
    """A SERVER span for one request, child of the caller's `traceparent` when it sent one, made
    the current span until `end_request`: (the span, the context token), or (None, None) where
    the sampler does not record it (nothing below it records either)."""
    parent = propagate.extract(carrier, getter=getter)
    span = t.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    if not span.is_recording():
        return None, None
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def end_request(span: Span, token: object, error: str | None = None) -> None:
    if error is not None:
        span.set_status(StatusCode.ERROR, error)
    span.end()
    otel_context.detach(token)  # type: ignore[arg-type]


_NOTHING = contextlib.nullcontext()


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one around a block (`with span("decode"):`); nothing at all
    when tracing is off."""
    t = tracer
    if t is None:
        return _NOTHING
    return t.start_as_current_span(name, attributes=attributes or None)


# -- the batcher --------------------------------------------------------------------------------


@dataclass(slots=True)
class Queued:
    """What a queued request carries for its spans: its context (the request's span is the
    parent of `queue` and `execute`) and when it was queued (epoch nanoseconds)."""

    parent: Context
    link: SpanContext
    enqueued_ns: int


def queued(now_ns: int) -> Queued | None:
    """The current request's trace, or None where it is not recorded (sampled out, or no span):
    then nothing of it is recorded in the batcher either, so sampling saves the batcher's spans
    too."""
    ctx = otel_context.get_current()
    current = trace.get_current_span(ctx)
    if not current.is_recording():
        return None
    return Queued(ctx, current.get_span_context(), now_ns)


def batch_span(
    t: Tracer,
    attributes: dict[str, Any],
    requests: list[tuple[Queued, int]],
    start_ns: int,
    gathered_ns: int,
    ran_ns: int,
    error: str | None,
) -> Span:
    """In the scheduler thread, after the call: the batch (left open until its answers are
    handed back: `batch_done`) with its `onnxruntime.run` child; `requests`: each traced part's
    trace and rows (at least one). The batch is a child of the first, so it is recorded whenever
    a request in it is (a root of its own would be sampled on its own), and linked to every
    one."""
    links = [Link(q.link, {"coordconv.rows": rows}) for q, rows in requests]
    parent = requests[0][0].parent
    batch = t.start_span("batch", context=parent, links=links, start_time=start_ns)
    batch.set_attributes(attributes)
    ctx = trace.set_span_in_context(batch, ROOT)
    run = t.start_span("onnxruntime.run", context=ctx, start_time=gathered_ns)
    if error is not None:
        run.set_status(StatusCode.ERROR, error)
        batch.set_status(StatusCode.ERROR, error)
    run.end(ran_ns)
    return batch


def batch_done(batch: Span, output_ns: int, end_ns: int) -> None:
    """On the event loop: the batch's answers handed back (in `output_ns`); the batch ends."""
    batch.set_attribute("coordconv.compute_output_us", output_ns / 1000)
    batch.end(end_ns)


def queue_span(
    t: Tracer, q: Queued, end_ns: int, attributes: dict[str, Any], error: str | None = None
) -> None:
    s = t.start_span("queue", context=q.parent, start_time=q.enqueued_ns, attributes=attributes)
    if error is not None:
        s.set_status(StatusCode.ERROR, error)
    s.end(end_ns)


def execute_span(
    t: Tracer,
    q: Queued,
    batch: Span | None,
    start_ns: int,
    end_ns: int,
    attributes: dict[str, Any],
    error: str | None = None,
) -> None:
    links = None if batch is None else [Link(batch.get_span_context())]
    s = t.start_span(
        "execute", context=q.parent, links=links, start_time=start_ns, attributes=attributes
    )
    if error is not None:
        s.set_status(StatusCode.ERROR, error)
    s.end(end_ns)
