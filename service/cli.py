"""`coordconv serve`: every setting is an option (and a COORDCONV_* environment variable); one
process (service/server.py), `--workers N` (service/scaling/workers.py) or Ray Serve replicas.

Start-up problems (a bad model repository, a port in use, no GPU with REQUIRE_GPU) print one clear
line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from service.logs import configure_logging
from service.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coordconv serve",
        description="Serve the model repository over HTTP. Each option is also an environment "
        "variable COORDCONV_<NAME>; options win.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        helptext = f"{field.description or name} (env COORDCONV_{name.upper()}, default {default})"
        if field.annotation is bool:  # --flag, --flag false, --no-flag
            p.add_argument(
                flag,
                dest=name,
                nargs="?",
                const="true",
                default=None,
                metavar="true|false",
                help=helptext,
            )
            p.add_argument(
                "--no-" + flag[2:],
                dest=name,
                action="store_const",
                const="false",
                help=argparse.SUPPRESS,
            )
        elif name == "load_model":
            p.add_argument(
                flag,
                dest=name,
                action="append",
                default=None,
                metavar="NAME",
                help=f"{field.description} (env COORDCONV_LOAD_MODEL, comma-separated)",
            )
        else:
            p.add_argument(flag, dest=name, default=None, help=helptext, metavar=name.upper())
    ray = p.add_argument_group("Ray Serve (pip install 'coordconv[ray]')")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve, several replicas")
    ray.add_argument("--ray-replicas", type=int, default=2, help="replicas (default 2)")
    ray.add_argument("--ray-num-cpus", type=float, default=0.5, help="CPUs per replica")
    ray.add_argument(
        "--ray-autoscale-max",
        type=int,
        default=None,
        help="autoscale between 1 and this many replicas instead",
    )
    return p


def _port_free(host: str, port: int) -> str | None:
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and not k.startswith("ray")}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            print(f"coordconv serve: invalid setting {loc}: {err['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    problem = _port_free(settings.host, settings.port)
    if not problem and settings.grpc_port:
        problem = _port_free(settings.host, settings.grpc_port)
        problem = problem and f"gRPC: {problem} (--grpc-port 0 switches gRPC off)"
    if problem:
        print(f"coordconv serve: {problem}", file=sys.stderr)
        return 1
    if args.ray and settings.workers > 1:
        print(
            "coordconv serve: --ray runs replicas instead of --workers; pick one", file=sys.stderr
        )
        return 2
    if args.ray:
        try:
            from service.scaling import ray_serve
        except ImportError:
            print(
                "coordconv serve --ray: install the ray extra: pip install 'coordconv[ray]'",
                file=sys.stderr,
            )
            return 2
        return ray_serve.run(settings, args.ray_replicas, args.ray_num_cpus, args.ray_autoscale_max)
    if settings.workers > 1:
        from service.scaling import workers

        return workers.run(settings)
    from service.server import serve

    return serve(settings)
