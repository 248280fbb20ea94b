"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, as NVIDIA Triton
defines it), as an adapter over the same data plane as HTTP: requests from both front ends for
one model join the same batches.

The message and service code is the generated code that `tritonclient` ships
(`tritonclient.grpc.service_pb2`, `service_pb2_grpc`, `model_config_pb2`), the very modules
`tritonclient.grpc` itself speaks, so client and server cannot disagree on the wire; no wire code
is written by hand. Beside it: the standard health service (`grpc.health.v1.Health`, for
Kubernetes' gRPC probes) and server reflection.

The HTTP rules hold here too: the API key as `authorization: Bearer` metadata
(UNAUTHENTICATED), messages up to MAX_BODY_BYTES (RESOURCE_EXHAUSTED beyond), overload and
not-ready as UNAVAILABLE with a `retry-after` trailing entry, bad input INVALID_ARGUMENT or
NOT_FOUND with a message that says what was wrong, never INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.dataplane.plane import DataPlane
from service.dataplane.types import InferRequest, InferResponse, InputTensor
from service.errors import BadRequest, ServiceError
from service.http.deps import check_api_key
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("coordconv.grpc")
T = TypeVar("T")
SERVICE = "inference.GRPCInferenceService"

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    406: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Typed contents fields by datatype: a request may send FP32 as fp32_contents; anything else is
# read from its own field so the data plane can say the datatype is wrong.
CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "BOOL": "bool_contents",
    "BYTES": "bytes_contents",
}


def decode_infer(request: Any) -> InferRequest:
    """A ModelInferRequest -> the data plane's request."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs = []
    for i, t in enumerate(request.inputs):
        tensor = InputTensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
        if raw:
            if t.HasField("contents"):
                raise BadRequest(f"input {t.name!r} has both contents and raw_input_contents")
            tensor.raw = raw[i]
        elif t.HasField("contents"):
            field = CONTENTS.get(t.datatype, "fp32_contents")
            tensor.data = list(getattr(t.contents, field))
        inputs.append(tensor)
    for o in request.outputs:
        if "classification" in o.parameters:
            raise BadRequest("the classification extension is not supported")
    return InferRequest(
        model=request.model_name,
        version=request.model_version or None,
        inputs=inputs,
        id=request.id or None,
        outputs=[o.name for o in request.outputs] or None,
    )


def encode_infer(answer: InferResponse) -> Any:
    """The data plane's answer -> a ModelInferResponse with raw (little-endian) outputs."""
    response = pb.ModelInferResponse(
        model_name=answer.model_name, model_version=answer.model_version, id=answer.id or ""
    )
    for t in answer.outputs:
        response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        response.raw_output_contents.append(t.data.astype("<f4", copy=False).tobytes())
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        self.plane = plane
        self.settings = settings
        self.metrics = metrics

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        work: Callable[[], Awaitable[T]],
        auth: bool = True,
    ) -> T:
        """Run one RPC: authentication, typed errors to status codes, metrics, one log line."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        model = version = ""
        try:
            if auth and self.settings.api_key is not None:  # no metadata to read without a key
                check_api_key(self.settings.api_key, _metadata(context).get("authorization", ""))
            result = await work()
            if isinstance(result, pb.ModelInferResponse):
                model, version = result.model_name, result.model_version
            return result
        except ServiceError as exc:
            code = CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)
            if exc.headers and "Retry-After" in exc.headers:
                context.set_trailing_metadata((("retry-after", exc.headers["Retry-After"]),))
            await context.abort(code, exc.message)
            raise  # abort raises; this line is for the type checker
        except (asyncio.CancelledError, grpc.aio.AbortError):
            code = grpc.StatusCode.CANCELLED if code is grpc.StatusCode.OK else code
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in %s", method)
            await context.abort(code, "internal server error (logged)")
            raise
        finally:
            elapsed = time.perf_counter() - start
            route = f"/{SERVICE}/{method}"
            m = self.metrics
            m.requests.labels(
                route=route, model=model, version=version, status=code.name, protocol="grpc"
            ).inc()
            m.request_duration.labels(
                route=route, model=model, version=version, protocol="grpc"
            ).observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "gRPC %s %s %.1fms",
                    method,
                    code.name,
                    elapsed * 1000,
                    extra={
                        "path": route,
                        "status": code.name,
                        "model": model,
                        "version": version,
                        "protocol": "grpc",
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            return pb.ServerLiveResponse(live=self.plane.live())

        return await self._call(context, "ServerLive", work, auth=False)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            return pb.ServerReadyResponse(ready=self.plane.ready())

        return await self._call(context, "ServerReady", work, auth=False)

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            ready = self.plane.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ready)

        return await self._call(context, "ModelReady", work)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            return json_format.ParseDict(self.plane.server_metadata(), pb.ServerMetadataResponse())

        return await self._call(context, "ServerMetadata", work)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            meta = self.plane.model_metadata(request.name, request.version or None)
            return json_format.ParseDict(meta, pb.ModelMetadataResponse())

        return await self._call(context, "ModelMetadata", work)

    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            config = self.plane.model_config(request.name, request.version or None)
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, mc.ModelConfig()))

        return await self._call(context, "ModelConfig", work)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            stats = await self.plane.model_statistics(request.name or None, request.version or None)
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

        return await self._call(context, "ModelStatistics", work)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            entries = await self.plane.repository_index(request.ready)
            return json_format.ParseDict({"models": entries}, pb.RepositoryIndexResponse())

        return await self._call(context, "RepositoryIndex", work)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            params: dict[str, Any] = {}
            for key, p in request.parameters.items():
                which = p.WhichOneof("parameter_choice")
                params[key] = getattr(p, which) if which else None
            await self.plane.load(request.model_name, params)
            return pb.RepositoryModelLoadResponse()

        return await self._call(context, "RepositoryModelLoad", work)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            await self.plane.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._call(context, "RepositoryModelUnload", work)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        async def work() -> Any:
            return encode_infer(await self.plane.infer(decode_infer(request)))

        return await self._call(context, "ModelInfer", work)

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """The bidirectional stream: every request is answered (or its error reported) in the
        stream, as it completes; requests of one stream run concurrently, so they batch."""
        try:
            check_api_key(self.settings.api_key, _metadata(context).get("authorization", ""))
        except ServiceError as exc:
            await context.abort(CODES[exc.status_code], exc.message)
        answers: asyncio.Queue[Any] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            try:
                answer = encode_infer(await self.plane.infer(decode_infer(request)))
                await answers.put(pb.ModelStreamInferResponse(infer_response=answer))
            except ServiceError as exc:
                failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                await answers.put(
                    pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)
                )

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.get_running_loop().create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            await answers.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (item := await answers.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for task in pending:
                task.cancel()


def _metadata(context: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class GrpcFrontEnd:
    """The gRPC server on the HTTP server's event loop."""

    def __init__(self, plane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        limit = settings.max_body_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                # One process: a port in use is an error. Several workers share the port (the
                # supervisor checked that it was free) and the kernel spreads connections.
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            ]
        )
        self.health = health.aio.HealthServicer()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(plane, settings, metrics), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.address = f"{settings.host}:{settings.grpc_port}"
        self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {self.address}")
        self.plane = plane

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(self.plane.ready())
        log.info("gRPC on %s", self.address.rsplit(":", 1)[0] + f":{self.port}")

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let RPCs in flight finish for up to `grace_s`, then cancel them."""
        await self.set_serving(False)
        await self.server.stop(grace_s)
