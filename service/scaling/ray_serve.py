"""The same FastAPI app on Ray Serve: `coordconv serve --ray`.

Each replica is a Ray actor that builds the app with `create_app` (its lifespan loads and warms
the models and starts the batchers, exactly as in a single process), so routes, batching, limits
and errors are the same. Every response says which replica served it (`X-Replica`).

Metrics: each replica keeps its own Prometheus registry, so `/metrics` through the Ray proxy shows
the replica that answered (see `X-Replica`). For cluster-wide figures scrape Ray's own metrics
endpoint on every node (`ray_serve_deployment_request_counter`, processing latency and replica
counts per deployment), or scrape the replicas individually.
"""

from __future__ import annotations

import logging
from typing import Any

from service.settings import Settings

log = logging.getLogger("coordconv.ray")


def build_app(settings: Settings) -> Any:
    """Runs inside each replica: the app, plus a header naming the replica."""
    from ray import serve

    from service.http.app import create_app

    # Replicas speak HTTP behind Ray's proxy; several of them cannot share one gRPC port.
    app = create_app(settings.model_copy(update={"grpc_port": 0}))
    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (local testing mode)
        replica = "local"

    @app.middleware("http")
    async def replica_header(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["X-Replica"] = replica
        return response

    return app


def deployment(
    settings: Settings,
    replicas: int = 2,
    num_cpus: float = 0.5,
    num_gpus: float | None = None,
    autoscale_max: int | None = None,
) -> Any:
    """A bound Ray Serve application. GPUs per replica: `num_gpus`, or 1 / replicas when CUDA is
    the first provider and Ray sees GPUs, else none. With `autoscale_max`, replicas scale between
    1 and that many on ongoing requests instead of staying at `replicas`."""
    import ray
    from ray import serve

    if num_gpus is None:
        gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
        num_gpus = (1.0 / replicas) if gpus and settings.provider_list[0] == "cuda" else 0.0
    options: dict[str, Any] = {
        "name": "coordconv",
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": settings.max_concurrency,
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": settings.grace_s,
    }
    if autoscale_max:
        options["autoscaling_config"] = {
            "min_replicas": 1,
            "max_replicas": autoscale_max,
            "target_ongoing_requests": settings.max_batch_size,
        }
    else:
        options["num_replicas"] = replicas

    @serve.deployment(**options)
    @serve.ingress(lambda: build_app(settings))
    class CoordConv:
        pass

    return CoordConv.bind()  # type: ignore[attr-defined]  # added by @serve.deployment


def run(settings: Settings, replicas: int, num_cpus: float, autoscale_max: int | None) -> int:
    """Start a local Ray (or join RAY_ADDRESS), serve on settings.host:port, block until ^C."""
    import time

    import ray
    from ray import serve

    ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(
        deployment(settings, replicas, num_cpus, None, autoscale_max),
        route_prefix="/",
        name="coordconv",
    )
    log.info(
        "serving on Ray: http://%s:%d (%s)",
        settings.host,
        settings.port,
        f"autoscaling 1..{autoscale_max}" if autoscale_max else f"{replicas} replicas",
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
