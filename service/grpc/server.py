"""The gRPC front end: the Open Inference Protocol servicer behind its interceptor, the standard
health service (`grpc.health.v1.Health`, for Kubernetes' gRPC probes, following the data plane's
readiness) and server reflection, on one port.

The HTTP rules hold here too: the API key as `authorization: Bearer` metadata
(UNAUTHENTICATED), messages up to MAX_BODY_BYTES (RESOURCE_EXHAUSTED beyond), overload and
not-ready as UNAVAILABLE with a `retry-after` trailing entry, bad input INVALID_ARGUMENT or
NOT_FOUND with a message that says what was wrong, never INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.dataplane.plane import DataPlane
from service.grpc.interceptors import SERVICE, FrontDoor
from service.grpc.servicer import InferenceServicer

log = logging.getLogger("coordconv.grpc")


class GrpcFrontEnd:
    """The gRPC server, on the event loop that serves HTTP (service/server.py starts and drains
    both)."""

    def __init__(self, plane: DataPlane) -> None:
        settings = plane.settings
        limit = settings.max_body_bytes
        self.server = grpc.aio.server(
            interceptors=[FrontDoor(settings.api_key, plane.metrics)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                # One process: a port in use is an error. Several workers share the port (the
                # supervisor checked that it was free) and the kernel spreads connections.
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), self.server)
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
