"""The gRPC front end: the Open Inference Protocol servicer behind its interceptor, the standard
health service (`grpc.health.v1.Health`, for Kubernetes' gRPC probes, following the data plane's
readiness) and server reflection, on one port: plain text, or TLS from TLS_CERT_FILE and
TLS_KEY_FILE (the files HTTPS uses), with client certificates required when TLS_CLIENT_CA_FILE is
set.

The HTTP rules hold here too: the API key of each method's scope as `authorization: Bearer`
metadata (UNAUTHENTICATED, or PERMISSION_DENIED for an inference key asking to load), messages
up to MAX_BODY_BYTES (RESOURCE_EXHAUSTED beyond), overload and not-ready as UNAVAILABLE with a
`retry-after` trailing entry, bad input INVALID_ARGUMENT or NOT_FOUND with a message that says
what was wrong, never INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.dataplane.auth import KeyRing
from service.dataplane.plane import DataPlane
from service.grpc.interceptors import SERVICE, FrontDoor
from service.grpc.servicer import InferenceServicer
from service.settings import Settings

log = logging.getLogger("coordconv.grpc")


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from the settings' PEM files (None: plain text); client certificates signed by
    TLS_CLIENT_CA_FILE required when it is set."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=None if ca is None else ca.read_bytes(),
        require_client_auth=ca is not None,
    )


class GrpcListenError(OSError):
    """The gRPC port could not be bound: one line from `coordconv serve`, exit 1."""


class GrpcFrontEnd:
    """The gRPC server, on the event loop that serves HTTP (service/server.py starts and drains
    both)."""

    def __init__(self, plane: DataPlane) -> None:
        settings = plane.settings
        limit = settings.max_body_bytes
        self.server = grpc.aio.server(
            interceptors=[
                FrontDoor(KeyRing.of(settings.api_key, settings.admin_api_key), plane.metrics)
            ],
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
        credentials = server_credentials(settings)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(self.address)
            else:
                self.port = self.server.add_secure_port(self.address, credentials)
        except RuntimeError:  # grpcio's word for a port it cannot bind
            self.port = 0
        self.tls = credentials is not None
        if self.port == 0:
            # `coordconv serve` checks the port before it starts; it can still be taken before
            # the bind (by another process, or as the local port of an outgoing connection).
            raise GrpcListenError(
                f"gRPC: cannot listen on {self.address} (is the port in use?); "
                "--grpc-port 0 switches gRPC off"
            )
        self.plane = plane

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(self.plane.ready())
        where = self.address.rsplit(":", 1)[0] + f":{self.port}"
        log.info("gRPC%s on %s", " (TLS)" if self.tls else "", where)

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
