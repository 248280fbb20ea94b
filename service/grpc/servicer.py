"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, as NVIDIA Triton
defines it), as an adapter over the data plane: each RPC decodes its message, calls the plane and
encodes the answer. Authentication, status codes, metrics, logging and unary RPCs' spans are
the interceptor's (service/grpc/interceptors.py); ModelStreamInfer traces each message as a
request of its own (service/metrics/tracing.py).

The message and service code is the generated code that `tritonclient` ships
(`tritonclient.grpc.service_pb2`, `service_pb2_grpc`, `model_config_pb2`), the very modules
`tritonclient.grpc` itself speaks, so client and server cannot disagree on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.dataplane.plane import DataPlane
from service.dataplane.types import InferRequest, InferResponse, InputTensor
from service.errors import BadRequest, ServiceError
from service.metrics import tracing

Context: TypeAlias = grpc.aio.ServicerContext
STREAM_SPAN = "inference.GRPCInferenceService/ModelStreamInfer"
FP32_CONTENTS_TAG = 0x32  # InferTensorContents.fp32_contents: field 6, length-delimited (packed)


def fp32_contents(contents: pb.InferTensorContents) -> bytes:
    """`fp32_contents` as little-endian bytes, the same form as raw_input_contents: a packed
    repeated float serialises as its tag, its length and the raw floats, so the values are
    never turned into a Python list (262,144 floats for 64 images)."""
    data = contents.SerializeToString()
    if not data:
        return b""
    length, i, shift = 0, 1, 0
    while i < len(data) and data[0] == FP32_CONTENTS_TAG:
        byte = data[i]
        length |= (byte & 0x7F) << shift
        i += 1
        shift += 7
        if not byte & 0x80:
            break
    if data[0] == FP32_CONTENTS_TAG and i + length == len(data):
        return data[i:]
    # Other contents fields set beside it: the floats alone, the slow way.
    return np.asarray(contents.fp32_contents, dtype="<f4").tobytes()


def decode_infer(request: pb.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest -> the data plane's request. Typed contents are read only for FP32:
    any other datatype is refused by the data plane before its data would matter."""
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
        elif t.HasField("contents") and t.datatype == "FP32":
            tensor.raw = fp32_contents(t.contents)
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


def encode_infer(answer: InferResponse) -> pb.ModelInferResponse:
    """The data plane's answer -> a ModelInferResponse with raw (little-endian) outputs."""
    response = pb.ModelInferResponse(
        model_name=answer.model_name, model_version=answer.model_version, id=answer.id or ""
    )
    for t in answer.outputs:
        response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        response.raw_output_contents.append(t.data.astype("<f4", copy=False).tobytes())
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(  # noqa: N802
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        ready = self.plane.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return json_format.ParseDict(self.plane.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        meta = self.plane.model_metadata(request.name, request.version or None)
        return json_format.ParseDict(meta, pb.ModelMetadataResponse())

    async def ModelConfig(  # noqa: N802
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        config = self.plane.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, mc.ModelConfig()))

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        stats = await self.plane.model_statistics(request.name or None, request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        entries = await self.plane.repository_index(request.ready)
        return json_format.ParseDict({"models": entries}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(  # noqa: N802
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        params: dict[str, Any] = {}
        for key, p in request.parameters.items():
            which = p.WhichOneof("parameter_choice")
            params[key] = getattr(p, which) if which else None
        await self.plane.load(request.model_name, params)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(  # noqa: N802
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self.plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        return encode_infer(await self.plane.infer(decode_infer(request)))

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """The bidirectional stream: every request is answered (or its error reported) in the
        stream, as it completes; requests of one stream run concurrently, so they batch."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()
        metadata = context.invocation_metadata() or ()

        async def one(request: pb.ModelInferRequest) -> None:
            span = token = None
            tracer = tracing.tracer
            if tracer is not None:  # a span per message, in its own task
                span, token = tracing.start_request(
                    tracer,
                    STREAM_SPAN,
                    metadata,
                    tracing.METADATA,
                    {
                        "rpc.system": "grpc",
                        "rpc.service": "inference.GRPCInferenceService",
                        "rpc.method": "ModelStreamInfer",
                        "coordconv.model": request.model_name,
                        "coordconv.model_version": request.model_version,
                    },
                )
            error = None
            try:
                answer = encode_infer(await self.plane.infer(decode_infer(request)))
                await answers.put(pb.ModelStreamInferResponse(infer_response=answer))
            except ServiceError as exc:
                error = exc.message if exc.status_code >= 500 else None
                failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                await answers.put(
                    pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)
                )
            finally:
                if span is not None:
                    tracing.end_request(span, token, error)

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
