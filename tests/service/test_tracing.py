"""OpenTelemetry traces (service/metrics/tracing.py), with the SDK's in-memory exporter: the span
tree of a /v1, a /v2 and a gRPC request that shared one batch (each caller's `traceparent`
honoured), gRPC streams, a request refused in the queue, configuration from the standard OTEL_*
variables, and OTLP export over HTTP and gRPC to receivers on the loopback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import ProxyTracerProvider, SpanKind, StatusCode

from service.metrics import tracing
from tests.helpers import TLS, free_port, live_server

TRACE_IDS = (0x0AF7651916CD43DD8448EB211C80319C, 0x1AF7651916CD43DD8448EB211C80319C, 0x2AF7)
PARENT = 0x00F067AA0BA902B7


def traceparent(trace_id: int) -> str:
    return f"00-{trace_id:032x}-{PARENT:016x}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)
    provider.shutdown()


@dataclass
class Got:
    """A finished span, its optional fields resolved (the SDK types them all Optional)."""

    name: str
    kind: SpanKind
    trace_id: int
    span_id: int
    parent: int | None  # span id
    remote_parent: bool
    start: int
    end: int
    attributes: dict[str, Any]
    links: list[tuple[int, dict[str, Any]]]  # span id, attributes
    status: StatusCode
    description: str


def finished(exporter: InMemorySpanExporter) -> list[Got]:
    out = []
    for s in exporter.get_finished_spans():
        ctx = s.get_span_context()
        assert ctx is not None and s.start_time is not None and s.end_time is not None
        out.append(
            Got(
                s.name,
                s.kind,
                ctx.trace_id,
                ctx.span_id,
                None if s.parent is None else s.parent.span_id,
                s.parent is not None and s.parent.is_remote,
                s.start_time,
                s.end_time,
                dict(s.attributes or {}),
                [(link.context.span_id, dict(link.attributes or {})) for link in s.links],
                s.status.status_code,
                s.status.description or "",
            )
        )
    return out


def children(all_spans: list[Got], parent: Got) -> dict[str, Got]:
    found = [s for s in all_spans if s.parent == parent.span_id]
    assert len({s.name for s in found}) == len(found), [s.name for s in found]
    return {s.name: s for s in found}


def test_three_protocols_in_one_batch(spans: InMemorySpanExporter) -> None:
    """max_batch_size 3 and a 5 s queue delay: the batch runs when the third request arrives."""
    x = np.array([[10, 20]], np.float32)
    with live_server(("render",), max_batch_size=3, max_queue_delay_us=5_000_000) as live:

        def v1() -> None:
            r = httpx.post(
                live.url + "/v1/render",
                json={"coords": x.tolist(), "format": "array"},
                headers={"traceparent": traceparent(TRACE_IDS[0])},
                timeout=30,
                verify=TLS,
            )
            assert r.status_code == 200, r.text

        def v2() -> None:
            c = thttp.InferenceServerClient(f"127.0.0.1:{live.port}")
            i = thttp.InferInput("coords", [1, 2], "FP32")
            i.set_data_from_numpy(x)
            c.infer("render", [i], headers={"traceparent": traceparent(TRACE_IDS[1])})
            c.close()

        def rpc() -> None:
            c = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
            i = tgrpc.InferInput("coords", [1, 2], "FP32")
            i.set_data_from_numpy(x)
            c.infer("render", [i], headers={"traceparent": traceparent(TRACE_IDS[2])})
            c.close()

        start = time.monotonic()
        with futures.ThreadPoolExecutor(3) as pool:
            for f in [pool.submit(fn) for fn in (v1, v2, rpc)]:
                f.result()
        assert time.monotonic() - start < 4  # batched when full, not after the delay
        got = finished(spans)

    servers = [s for s in got if s.kind is SpanKind.SERVER]
    assert sorted(s.trace_id for s in servers) == sorted(TRACE_IDS)
    for s in servers:  # each the child of its caller's span
        assert s.parent == PARENT and s.remote_parent
        assert s.attributes["coordconv.model"] == "render"
        assert s.attributes["coordconv.model_version"] == "2"
    by_trace = {s.trace_id: s for s in servers}
    assert by_trace[TRACE_IDS[0]].name == "POST /v1/render"
    assert by_trace[TRACE_IDS[0]].attributes["http.response.status_code"] == 200
    assert by_trace[TRACE_IDS[1]].name.startswith("POST /v2/models/")
    assert by_trace[TRACE_IDS[1]].attributes["http.route"].endswith("/infer")
    assert by_trace[TRACE_IDS[2]].name == "inference.GRPCInferenceService/ModelInfer"
    assert by_trace[TRACE_IDS[2]].attributes["rpc.grpc.status_code"] == 0

    batches = [s for s in got if s.name == "batch"]
    assert len(batches) == 1
    batch = batches[0]
    # under the first request of the batch, linked to all three
    (first,) = [s for s in servers if s.span_id == batch.parent]
    assert batch.trace_id == first.trace_id
    assert batch.attributes["coordconv.batch.size"] == 3
    assert batch.attributes["coordconv.batch.requests"] == 3
    assert sorted(span_id for span_id, _ in batch.links) == sorted(s.span_id for s in servers)
    assert all(attributes["coordconv.rows"] == 1 for _, attributes in batch.links)
    (run,) = children(got, batch).values()
    assert run.name == "onnxruntime.run"
    assert batch.start <= run.start <= run.end <= batch.end
    gathered = (run.start - batch.start) / 1000
    assert batch.attributes["coordconv.compute_input_us"] == pytest.approx(gathered, abs=1)
    assert 0 < batch.attributes["coordconv.compute_output_us"] <= (batch.end - run.end) / 1000

    for server in servers:
        own = children(got, server)
        assert set(own) == {"queue", "execute"} | ({"batch"} if server is first else set())
        queue, execute = own["queue"], own["execute"]
        assert queue.trace_id == server.trace_id
        assert queue.attributes["coordconv.items"] == 1
        assert server.start <= queue.start <= queue.end == execute.start
        assert execute.start == batch.start and execute.end <= server.end
        assert [span_id for span_id, _ in execute.links] == [batch.span_id]
        assert execute.attributes["coordconv.batch.size"] == 3


def test_stream_messages_are_requests_of_their_own(spans: InMemorySpanExporter) -> None:
    with live_server(("render",)) as live:
        c = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
        answers: list[Any] = []
        done = threading.Event()

        def callback(result: Any, error: Any) -> None:
            answers.append(error or result)
            if len(answers) == 2:
                done.set()

        c.start_stream(callback, headers={"traceparent": traceparent(TRACE_IDS[0])})
        for i in range(2):
            x = tgrpc.InferInput("coords", [1, 2], "FP32")
            x.set_data_from_numpy(np.array([[10 + i, 20]], np.float32))
            c.async_stream_infer("render", [x], request_id=str(i))
        assert done.wait(30)
        c.stop_stream()
        c.close()
        got = finished(spans)
    messages = [s for s in got if s.name.endswith("/ModelStreamInfer")]
    assert len(messages) == 2
    for m in messages:
        assert m.kind is SpanKind.SERVER and m.trace_id == TRACE_IDS[0]
        assert m.parent == PARENT
        assert {"queue", "execute"} <= set(children(got, m))


def test_a_request_refused_in_the_queue_says_why(spans: InMemorySpanExporter) -> None:
    with live_server(("render",), request_timeout_s=0.3, max_queue_delay_us=3_000_000) as live:
        r = httpx.post(live.url + "/v1/render", json={"coords": [[10, 10]]}, timeout=30, verify=TLS)
        assert r.status_code == 503
        got = finished(spans)
    (server,) = [s for s in got if s.kind is SpanKind.SERVER]
    assert server.status is StatusCode.ERROR
    assert server.attributes["http.response.status_code"] == 503
    queue = children(got, server)["queue"]
    assert queue.status is StatusCode.ERROR
    assert "waited more than 0.3 s" in queue.description
    assert not [s for s in got if s.name == "batch"]


def test_off_by_default_and_probes_are_not_traced(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # configured from an environment without OTEL_TRACES_EXPORTER, in a process where nothing
    # else set up a provider: off
    with monkeypatch.context() as mp:
        mp.setattr(tracing.trace, "get_tracer_provider", ProxyTracerProvider)
        assert tracing.configure({}, set_global=False) is None
    assert tracing.tracer is None
    with tracing.span("nothing") as s:
        assert s is None  # the shared no-op context: no span object at all
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use(provider)
    with live_server(("render",)) as live:
        for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready"):
            assert httpx.get(live.url + path, verify=TLS).status_code == 200
        c = tgrpc.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
        assert c.is_server_live() and c.is_server_ready()
        c.close()
        tracing.use(None)
        assert (
            httpx.post(live.url + "/v1/render", json={"coords": [[1, 1]]}, verify=TLS).status_code
            == 200
        )
    assert finished(spans) == []


def test_configuration_from_otel_variables(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as in a fresh process: no provider set up by anyone else
    monkeypatch.setattr(tracing.trace, "get_tracer_provider", ProxyTracerProvider)
    try:
        assert tracing.configure({"OTEL_TRACES_EXPORTER": "none"}, set_global=False) is None
        disabled = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
        assert tracing.configure(disabled, set_global=False) is None
        assert tracing.configure({"OTEL_TRACES_EXPORTER": "console"}, set_global=False)
        assert tracing._provider.resource.attributes["service.name"] == "coordconv"
        tracing.shutdown()
        named = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "renderer"}
        tracing.configure(named, set_global=False)
        tracing.shutdown()
        with pytest.raises(tracing.TracingError, match="'zipkin' is not supported"):
            tracing.configure({"OTEL_TRACES_EXPORTER": "zipkin"}, set_global=False)
        json_protocol = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        with pytest.raises(tracing.TracingError, match="'http/json' is not supported"):
            tracing.configure(json_protocol, set_global=False)
        # at start-up a bad configuration is one error line, and the server serves untraced
        tracing._configured = False
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OTEL_TRACES_EXPORTER", "zipkin")
            with caplog.at_level(logging.ERROR, "coordconv.tracing"):
                tracing.ensure()
        assert tracing.tracer is None
        assert "tracing is off: OTEL_TRACES_EXPORTER 'zipkin'" in caplog.text
        # a provider set up by someone else (opentelemetry-instrument) is followed
        theirs = TracerProvider()
        monkeypatch.setattr(tracing.trace, "get_tracer_provider", lambda: theirs)
        assert tracing.configure({"OTEL_TRACES_EXPORTER": "otlp"}, set_global=False)
        assert tracing._provider is theirs
    finally:
        tracing.use(None)


class Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/traces":
            Receiver.bodies.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def exported(requests: list[otlp.ExportTraceServiceRequest]) -> tuple[set[str], set[str]]:
    """(span names, service names) of OTLP export requests."""
    names: set[str] = set()
    services: set[str] = set()
    for req in requests:
        for rs in req.resource_spans:
            for a in rs.resource.attributes:
                if a.key == "service.name":
                    services.add(a.value.string_value)
            for ss in rs.scope_spans:
                names.update(s.name for s in ss.spans)
    return names, services


def test_otlp_over_http_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_TRACES_EXPORTER=otlp, OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and
    OTEL_EXPORTER_OTLP_ENDPOINT: a served request's spans reach a receiver on the loopback."""
    Receiver.bodies = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.server_port}")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    try:
        monkeypatch.setattr(tracing.trace, "get_tracer_provider", ProxyTracerProvider)
        assert tracing.configure(set_global=False) is not None
        with live_server(("render",)) as live:
            c = thttp.InferenceServerClient(f"127.0.0.1:{live.port}")
            x = thttp.InferInput("coords", [1, 2], "FP32")
            x.set_data_from_numpy(np.array([[10, 20]], np.float32))
            c.infer("render", [x])
            c.close()
        tracing._provider.force_flush()
    finally:
        tracing.shutdown()
        tracing.use(None)
        receiver.shutdown()
    names, services = exported(
        [otlp.ExportTraceServiceRequest.FromString(b) for b in Receiver.bodies]
    )
    assert {"queue", "execute", "batch", "onnxruntime.run"} <= names
    assert any(n.startswith("POST /v2/models/") for n in names)
    assert services == {"coordconv"}


def test_otlp_over_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[otlp.ExportTraceServiceRequest] = []

    class Collector(otlp_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
            received.append(request)
            return otlp.ExportTraceServiceResponse()

    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    otlp_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)  # grpc is the default
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "renderer")
    try:
        monkeypatch.setattr(tracing.trace, "get_tracer_provider", ProxyTracerProvider)
        assert tracing.configure(set_global=False) is not None
        with tracing.span("export me", **{"coordconv.model": "render"}):
            pass
        tracing._provider.force_flush()
    finally:
        tracing.shutdown()
        tracing.use(None)
        server.stop(0)
    names, services = exported(received)
    assert names == {"export me"} and services == {"renderer"}


def test_a_request_sampled_out_costs_the_batcher_no_spans(spans: InMemorySpanExporter) -> None:
    """OTEL_TRACES_SAMPLER's decision holds for the whole path: a caller's unsampled
    `traceparent` (flags 00) under the parent-based default records nothing, a sampled one
    records its batch as well."""
    x = {"coords": [[10, 20]]}
    with live_server(("render",)) as live:
        unsampled = f"00-{TRACE_IDS[0]:032x}-{PARENT:016x}-00"
        r = httpx.post(
            live.url + "/v1/render", json=x, headers={"traceparent": unsampled}, verify=TLS
        )
        assert r.status_code == 200
        assert finished(spans) == []
        r = httpx.post(
            live.url + "/v1/render",
            json=x,
            headers={"traceparent": traceparent(TRACE_IDS[1])},
            verify=TLS,
        )
        assert r.status_code == 200
        got = finished(spans)
    assert {s.trace_id for s in got} == {TRACE_IDS[1]}
    assert {"queue", "execute", "batch", "onnxruntime.run"} <= {s.name for s in got}
